"""One loaded model version: a SavedModel in its own TensorFlow Session, run as TF Serving runs it.

TF Serving loads a SavedModel into a Session and runs signatures by feeding and fetching tensors by
name, without checking fed shapes against the signature. A v1 Session on the same MetaGraphDef does
exactly that (TF2 exports included), so predictions, classify and regress behave alike.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgument, NotFound, ServingError

CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
PREDICT_METHOD = "tensorflow/serving/predict"
DEFAULT_SIGNATURE = "serving_default"


def _tf() -> Any:
    import tensorflow as tf  # heavy: imported on first load, never at module import

    return tf


@dataclass(frozen=True)
class Signature:
    name: str
    method_name: str
    inputs: dict[str, tuple[str, int]]  # alias -> (tensor name, DataType enum)
    outputs: dict[str, tuple[str, int]]


class Servable:
    """A loaded, runnable model version. Thread-safe: Session.run may be called concurrently."""

    def __init__(self, name: str, version: int, path: str, *, method_name_check: bool = False) -> None:
        self.name = name
        self.method_name_check = method_name_check  # --enable_signature_method_name_check (off by default)
        self.version = version
        self.path = path
        tf = _tf()
        if not os.path.isdir(path):
            raise NotFound(f"SavedModel directory {path} does not exist")
        if not any(os.path.exists(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
            raise NotFound(
                f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {path}. "
                "Check that the directory exists and that you have the right permissions for accessing it."
            )
        self._graph = tf.Graph()
        with self._graph.as_default():
            self._session = tf.compat.v1.Session(graph=self._graph)
            try:
                self.meta_graph = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], path)
            except Exception as exc:
                self._session.close()
                raise ServingError(f"Failed to load SavedModel at {path}: {exc}", "INVALID_ARGUMENT") from exc
        self.signatures: dict[str, Signature] = {
            key: Signature(
                name=key,
                method_name=sig.method_name,
                inputs={a: (t.name, t.dtype) for a, t in sig.inputs.items()},
                outputs={a: (t.name, t.dtype) for a, t in sig.outputs.items()},
            )
            for key, sig in self.meta_graph.signature_def.items()
        }
        self._closed = False
        self._lock = threading.Lock()
        self._callables: dict[tuple, Any] = {}

    # ------------------------------------------------------------------ metadata

    def signature_def_map(self) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        out = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in self.meta_graph.signature_def.items():
            out.signature_def[key].CopyFrom(sig)
        return out

    def signature(self, name: str) -> Signature:
        sig = self.signatures.get(name or DEFAULT_SIGNATURE)
        if sig is None:
            raise InvalidArgument(f'Serving signature name: "{name or DEFAULT_SIGNATURE}" not found in signature def')
        return sig

    # ------------------------------------------------------------------ running

    def run(
        self,
        sig: Signature,
        feeds: dict[str, np.ndarray],
        output_filter: Sequence[str] | None = None,
        timeout_in_ms: int = 0,
    ) -> dict[str, np.ndarray]:
        """Run a signature: feeds keyed by input alias, returns outputs keyed by alias.

        ``timeout_in_ms`` > 0 goes into the Session's RunOptions, as TF Serving's REST handler puts
        --rest_api_timeout_in_ms there: a run that takes longer fails with DEADLINE_EXCEEDED."""
        missing = [a for a in sig.inputs if a not in feeds]
        if missing:
            raise InvalidArgument(
                f"input size does not match signature: {len(feeds)}!={len(sig.inputs)} len({{"
                + ",".join(sorted(feeds))
                + "}}) != len({"
                + ",".join(sorted(sig.inputs))
                + "}). Missing inputs: "
                + ",".join(sorted(missing))
            )
        extra = [a for a in feeds if a not in sig.inputs]
        if extra:
            expected = ",".join(sorted(sig.inputs))
            raise InvalidArgument(
                f"input tensor alias not found in signature: {extra[0]}. "
                f"Inputs expected to be in the set {{{expected}}}."
            )
        aliases = list(sig.outputs)
        if output_filter:
            for alias in output_filter:
                if alias not in sig.outputs:
                    expected = ",".join(sorted(sig.outputs))
                    raise InvalidArgument(
                        f"output tensor alias not found in signature: {alias} "
                        f"Outputs expected to be in the set {{{expected}}}."
                    )
            aliases = list(dict.fromkeys(output_filter))
        feed_aliases = sorted(feeds)
        runner = self._callable(sig, tuple(feed_aliases), tuple(aliases), timeout_in_ms)
        from . import batching

        scheduler = batching.current()
        try:
            if scheduler is not None and set(aliases) == set(sig.outputs):
                # --enable_batching: a Run with exactly the signature's inputs and outputs joins a batch
                # (TF Serving's BatchingSession); any other Run bypasses the batcher, as there.
                values = scheduler.run(
                    self,
                    (sig.name, tuple(feed_aliases), tuple(aliases)),
                    runner,
                    [sig.inputs[a][0] for a in feed_aliases],
                    [feeds[a] for a in feed_aliases],
                )
            else:
                values = runner(*(feeds[a] for a in feed_aliases))
        except ServingError:
            raise
        except Exception as exc:  # TF kernel errors surface as INVALID_ARGUMENT, as in TF Serving
            if type(exc).__name__ == "DeadlineExceededError":  # the RunOptions timeout
                raise ServingError(tf_error_message(exc), "DEADLINE_EXCEEDED") from exc
            raise InvalidArgument(tf_error_message(exc)) from exc
        return dict(zip(aliases, values, strict=True))

    def _callable(
        self, sig: Signature, feeds: tuple[str, ...], fetches: tuple[str, ...], timeout_in_ms: int = 0
    ) -> Any:
        """A Session callable for this feed/fetch set: runs by tensor name and, like TF Serving's
        Session::Run, does not check fed shapes against the signature (Session.run would)."""
        key = (sig.name, feeds, fetches, timeout_in_ms)
        runner = self._callables.get(key)
        if runner is None:
            from tensorflow.core.protobuf import config_pb2

            options = config_pb2.CallableOptions()
            options.feed.extend(sig.inputs[a][0] for a in feeds)
            options.fetch.extend(sig.outputs[a][0] for a in fetches)
            if timeout_in_ms > 0:
                options.run_options.timeout_in_ms = timeout_in_ms
            with self._lock:
                runner = self._callables.setdefault(key, self._session._make_callable_from_options(options))
        return runner

    def classify(self, sig_name: str, examples: list[bytes], timeout_in_ms: int = 0) -> Any:
        """Run a classify signature over serialized tf.Examples; returns a ClassificationResult proto."""
        from tensorflow_serving.apis import classification_pb2

        sig = self._example_signature(sig_name, CLASSIFY_METHOD, "classification")
        if len(sig.outputs) not in (1, 2):
            raise InvalidArgument(f"Expected one or two output Tensors, found {len(sig.outputs)}")
        if "inputs" not in sig.inputs:
            raise InvalidArgument(f"No classification inputs found in SignatureDef: {sig.name}")
        wanted = [a for a in ("classes", "scores") if a in sig.outputs]
        if not wanted:
            raise InvalidArgument(
                'Expected classification signature outputs to contain at least one of "classes" or "scores". '
                f"Signature was: {sig.name}"
            )
        out = self.run(sig, {"inputs": np.array(examples, dtype=object)}, wanted, timeout_in_ms)
        classes, scores = out.get("classes"), out.get("scores")
        n = len(examples)
        for arr, what, kind in ((classes, "classes", "DT_STRING"), (scores, "scores", "DT_FLOAT")):
            if arr is None:
                continue
            if arr.ndim != 2:
                raise InvalidArgument(f"Expected Tensor shape: [batch_size num_classes] but got {list(arr.shape)}")
            if (kind == "DT_STRING") != (arr.dtype == object) or (kind == "DT_FLOAT" and arr.dtype != np.float32):
                raise InvalidArgument(f"Expected {what} Tensor of {kind}. Got: {arr.dtype}")
            if arr.shape[0] != n:
                raise InvalidArgument(f"Expected {what} output batch size of {n}. Got: {arr.shape[0]}")
        if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
            raise InvalidArgument(
                f"Tensors class and score should match in dim_size(1). Got {classes.shape[1]} vs. {scores.shape[1]}"
            )
        first = classes if classes is not None else scores
        assert first is not None
        width = first.shape[1]
        result = classification_pb2.ClassificationResult()
        for i in range(n):
            row = result.classifications.add()
            for j in range(width):
                cls = row.classes.add()
                if classes is not None:
                    cls.label = classes[i][j].decode("utf-8", "replace")
                if scores is not None:
                    cls.score = float(scores[i][j])
        return result

    def regress(self, sig_name: str, examples: list[bytes], timeout_in_ms: int = 0) -> Any:
        """Run a regress signature over serialized tf.Examples; returns a RegressionResult proto."""
        from tensorflow_serving.apis import regression_pb2

        sig = self._example_signature(sig_name, REGRESS_METHOD, "regression")
        if len(sig.outputs) != 1:
            raise InvalidArgument("Expected one output Tensor.")
        if "inputs" not in sig.inputs:
            raise InvalidArgument(f"No regression inputs found in SignatureDef: {sig.name}")
        if "outputs" not in sig.outputs:
            raise InvalidArgument(f"No regression outputs found in SignatureDef: {sig.name}")
        values = self.run(sig, {"inputs": np.array(examples, dtype=object)}, None, timeout_in_ms)["outputs"]
        if values.ndim == 2 and values.shape[1] == 1:
            values = values[:, 0]
        if values.ndim != 1:
            raise InvalidArgument(
                "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] "
                f"but got {list(values.shape)}"
            )
        if values.dtype != np.float32:
            raise InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {values.dtype}")
        if values.shape[0] != len(examples):
            raise InvalidArgument(
                f"Input batch size did not match output batch size: {len(examples)} vs. {values.shape[0]}"
            )
        result = regression_pb2.RegressionResult()
        for v in values:
            result.regressions.add().value = float(v)
        return result

    def _example_signature(self, sig_name: str, method: str, kind: str) -> Signature:
        name = sig_name or DEFAULT_SIGNATURE
        sig = self.signatures.get(name)
        if sig is None:
            raise InvalidArgument(f"No signature was found with the name: {name}")
        if self.method_name_check and sig.method_name != method:
            raise InvalidArgument(f"Expected {kind} signature method_name to be {method}. Was: {sig.method_name}")
        if len(sig.inputs) != 1:
            raise InvalidArgument("Expected one input Tensor.")
        return sig

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._callables.clear()
                self._session.close()


def tf_error_message(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    return message.split("\n\nErrors may have originated", 1)[0].strip()
