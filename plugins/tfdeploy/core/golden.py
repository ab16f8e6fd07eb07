"""Golden examples: inputs with expected labels, and the metrics computed from a model's predictions."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfdeploy.core.errors import GoldenPathNotAllowed

METRICS = ("mae", "accuracy")


class GoldenError(ValueError):
    """The golden examples file is missing or malformed; the message says which field and how to fix it."""


@dataclass(frozen=True)
class Golden:
    signature_name: str
    inputs: Any  # a list of rows (single-input signatures) or {input name: list of rows}
    labels: list[Any]

    @property
    def count(self) -> int:
        return len(self.labels)

    def rows(self, input_name: str) -> list[Any]:
        return self.inputs[input_name] if isinstance(self.inputs, dict) else self.inputs

    def first(self, n: int) -> Any:
        """The inputs of the first ``n`` examples, in the same shape as ``inputs``."""
        return {k: v[:n] for k, v in self.inputs.items()} if isinstance(self.inputs, dict) else self.inputs[:n]


def allowed_golden_path(path: str | os.PathLike[str], roots: Sequence[str | os.PathLike[str]]) -> Path:
    """``path`` resolved (links and ``..``, as the kernel will open it) if it lies under one of ``roots`` (resolved
    too); else :class:`GoldenPathNotAllowed` naming the allowed roots and how to add one."""
    real = Path(os.path.realpath(path))
    resolved = [Path(os.path.realpath(root)) for root in roots]
    if any(real == root or real.is_relative_to(root) for root in resolved):
        return real
    via = f" (it resolves to {real})" if str(real) != os.fspath(path) else ""
    allowed = ", ".join(str(r) for r in roots) or "none configured"
    raise GoldenPathNotAllowed(
        f"golden examples file {path}{via} is outside the directories golden files may be read from ({allowed}). "
        "Put the file under one of them, or add its directory to GOLDEN_ROOTS (os.pathsep- or comma-separated) "
        "in the environment of Airflow's workers."
    )


def load_golden(path: str | os.PathLike[str], *, roots: Sequence[str | os.PathLike[str]]) -> Golden:
    """The golden examples in ``path``, which must lie under one of ``roots`` (:func:`allowed_golden_path`)."""
    p = allowed_golden_path(path, roots)
    if not p.is_file():
        raise GoldenError(f"golden examples file {path} does not exist: pass golden_path pointing at a JSON file")
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise GoldenError(f"golden examples file {path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or "inputs" not in doc or "labels" not in doc:
        raise GoldenError(
            f"golden examples file {path} needs keys 'inputs' and 'labels' (and optional 'signature_name')"
        )
    inputs, labels = doc["inputs"], doc["labels"]
    if not isinstance(labels, list) or not isinstance(inputs, list | dict):
        raise GoldenError(f"golden examples file {path}: 'labels' must be a list, 'inputs' a list or an object")
    n = len(labels)
    sizes = {k: len(v) for k, v in inputs.items()} if isinstance(inputs, dict) else {"inputs": len(inputs)}
    if n == 0 or any(size != n for size in sizes.values()):
        raise GoldenError(f"golden examples file {path}: {n} labels but inputs of sizes {sizes}; they must match")
    return Golden(str(doc.get("signature_name", "serving_default")), inputs, list(labels))


def metric_value(metric: str, predictions: np.ndarray, labels: list[Any]) -> float:
    """mae: mean absolute error of a regression output ([N] or [N, 1]); accuracy: argmax of [N, C] scores
    (or the value itself for [N] class ids) against integer labels."""
    y = np.asarray(labels)
    pred = np.asarray(predictions)
    if metric == "mae":
        return float(np.mean(np.abs(pred.reshape(len(y), -1)[:, 0].astype(np.float64) - y.astype(np.float64))))
    if metric == "accuracy":
        classes = pred.argmax(axis=-1) if pred.ndim == 2 and pred.shape[1] > 1 else pred.reshape(len(y))
        return float(np.mean(classes.astype(np.int64) == y.astype(np.int64)))
    raise GoldenError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")


def judge(
    metric: str, value: float, *, threshold: float | None, baseline: float | None, max_regression: float | None
) -> list[str]:
    """Problems with a metric value: an absolute threshold, and a change threshold against production."""
    lower_is_better = metric == "mae"
    problems = []
    if threshold is not None:
        bad = value > threshold if lower_is_better else value < threshold
        if bad:
            word = "above the maximum" if lower_is_better else "below the minimum"
            problems.append(f"{metric} {value:.6g} is {word} {threshold:.6g}")
    if baseline is not None and max_regression is not None:
        worse_by = (value - baseline) if lower_is_better else (baseline - value)
        if worse_by > max_regression:
            problems.append(
                f"{metric} {value:.6g} is worse than production's {baseline:.6g} by {worse_by:.6g} "
                f"(allowed: {max_regression:.6g})"
            )
    return problems
