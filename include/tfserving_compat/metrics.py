"""Prometheus metrics under TF Serving's names, exported with prometheus_client's text format.

TF Serving's exporter turns `/tensorflow/serving/request_count` into `:tensorflow:serving:request_count`
and prints counters without a `_total` suffix. prometheus_client renders the histograms (a custom
collector); counters are rendered here because prometheus_client always adds `_total` to a counter.
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily

# monitoring::Buckets::Exponential(10, 1.8, 33): microseconds, up to ~20 minutes.
BUCKETS = [10 * 1.8**i for i in range(33)]


class _Histogram:
    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name, self.doc, self.labels = name, doc, labels
        self._cells: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0] * (len(BUCKETS) + 2))

    def add(self, key: tuple[str, ...], value: float) -> None:
        cell = self._cells[key]
        cell[bisect.bisect_left(BUCKETS, value)] += 1  # last slot before the sum is +Inf
        cell[-1] += value

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.doc, labels=list(self.labels))
        for key, cell in sorted(self._cells.items()):
            cumulative, buckets = 0.0, []
            for bound, count in zip([*BUCKETS, float("inf")], cell[:-1], strict=True):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            fam.add_metric(list(key), buckets, sum_value=cell[-1])
        return fam


class Metrics:
    """Thread-safe metric cells; `exposition()` renders the Prometheus text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._request_count: dict[tuple[str, str], float] = defaultdict(float)
        self._load_latency: dict[str, float] = defaultdict(float)
        self._request_latency = _Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
        )
        self._runtime_latency = _Histogram(
            ":tensorflow:serving:runtime_latency",
            "Distribution of wall time (in microseconds) for Tensorflow runtime.",
            ("model_name", "API", "runtime"),
        )
        self._warmup_latency = _Histogram(
            ":tensorflow:serving:model_warmup_latency",
            "Distribution of wall time (in microseconds) for warming up the model.",
            ("model_path", "status"),
        )
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]

    def request(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        with self._lock:
            self._request_count[(model, status)] += 1
            if status == "OK":
                self._request_latency.add((model, api, entrypoint), seconds * 1e6)

    def runtime(self, model: str, api: str, seconds: float) -> None:
        with self._lock:
            self._runtime_latency.add((model, api, "TF1"), seconds * 1e6)

    def loaded(self, path: str, load_seconds: float, warmup_seconds: float) -> None:
        with self._lock:
            self._load_latency[path] += load_seconds * 1e6
            self._warmup_latency.add((path, "OK"), warmup_seconds * 1e6)

    def collect(self):  # prometheus_client collector protocol: the histograms
        with self._lock:
            families = [self._request_latency.family(), self._runtime_latency.family(), self._warmup_latency.family()]
        yield from families

    def _counters(self) -> bytes:
        with self._lock:
            rows = [
                (
                    ":tensorflow:serving:request_count",
                    "The total number of requests.",
                    [({"model_name": m, "status": st}, v) for (m, st), v in sorted(self._request_count.items())],
                ),
                (
                    ":tensorflow:cc:saved_model:load_latency",
                    "Latency in microseconds for SavedModels that were successfully loaded.",
                    [({"model_path": p}, v) for p, v in sorted(self._load_latency.items())],
                ),
            ]
        lines = []
        for name, doc, samples in rows:
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter"]
            for labels, value in samples:
                text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
                lines.append(f"{name}{{{text}}} {value:g}")
        return ("\n".join(lines) + "\n").encode()

    def exposition(self) -> bytes:
        return self._counters() + generate_latest(self.registry)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
