"""Prometheus metrics under TF Serving's names, rendered as TF Serving's exporter renders them.

TF Serving's exporter (util/prometheus_exporter.cc, PrometheusExporter::GeneratePage) turns
`/tensorflow/serving/request_count` into `:tensorflow:serving:request_count`, walks the metrics in the
order of their `/...` names, prints one `# TYPE` line per family (no `# HELP`, and the `# TYPE` line even
before a family has any cell), counters as integers (`StrFormat("} %d", int64_value)`), histogram bucket
limits and sums as `absl::StrCat(double)` (six significant digits) and counts as integers, with the last
bucket `+Inf`.

Families exported, from TF Serving's and TensorFlow's definitions, as far as they apply to this server:
- `/tensorflow/cc/saved_model/load_attempt_count` (model_path, status "success"/"fail") and
  `/tensorflow/cc/saved_model/load_latency` (model_path; microseconds): TensorFlow's SavedModel loader.
- `/tensorflow/serving/model_warmup_latency` (model_path, status) and
  `/tensorflow/serving/model_warmup_records_read` (model_path, status): saved_model_warmup_util.cc,
  recorded only when the version has a warmup file, status being `Status::ToString()` ("OK" on success).
- `/tensorflow/serving/request_count` (model_name, status), `/tensorflow/serving/request_latency`
  (model_name, API, entrypoint; OK requests only) and `/tensorflow/serving/runtime_latency`
  (model_name, API, runtime): servables/tensorflow/util.cc. GetModelMetadata and GetModelStatus are not
  counted (prediction_service_impl.cc records Predict, Classify and Regress only).
Not exported: request_example_counts / request_example_count_total (MultiInference only), batching and
request-logging families (neither is supported here).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict
from collections.abc import Callable

# monitoring::Buckets::Exponential(10, 1.8, 33): microseconds, up to ~20 minutes; a last DBL_MAX bucket.
BUCKETS = [10 * 1.8**i for i in range(33)]


def _num(value: float) -> str:
    """absl::StrCat(double): six significant digits, like %g."""
    return f"{value:.6g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values: tuple[str, ...]) -> list[str]:
    return [f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True)]


class _Counter:
    def __init__(self, name: str, labels: tuple[str, ...]) -> None:
        self.name, self.labels = name, labels
        self.cells: dict[tuple[str, ...], int] = defaultdict(int)

    def lines(self) -> list[str]:
        out = [f"# TYPE {self.name} counter"]
        for key, value in sorted(self.cells.items()):
            out.append(f"{self.name}{{{','.join(_labels(self.labels, key))}}} {int(value)}")
        return out


class _Histogram:
    def __init__(self, name: str, labels: tuple[str, ...]) -> None:
        self.name, self.labels = name, labels
        self.cells: dict[tuple[str, ...], list[float]] = defaultdict(lambda: [0.0] * (len(BUCKETS) + 2))

    def add(self, key: tuple[str, ...], value: float) -> None:
        cell = self.cells[key]
        cell[bisect.bisect_right(BUCKETS, value)] += 1  # tensorflow::histogram::Histogram::Add (upper_bound)
        cell[-1] += value

    def lines(self) -> list[str]:
        out = [f"# TYPE {self.name} histogram"]
        for key, cell in sorted(self.cells.items()):
            labels = _labels(self.labels, key)
            prefix = f"{self.name}_bucket{{{','.join(labels)}{',' if labels else ''}"
            cumulative = 0
            for i, count in enumerate(cell[:-1]):
                cumulative += int(count)
                limit = _num(BUCKETS[i]) if i < len(BUCKETS) else "+Inf"
                out.append(f'{prefix}le="{limit}"}} {cumulative}')
            out.append(f"{self.name}_sum{{{','.join(labels)}}} {_num(cell[-1])}")
            out.append(f"{self.name}_count{{{','.join(labels)}}} {cumulative}")
        return out


class Metrics:
    """Thread-safe metric cells; `exposition()` renders TF Serving's Prometheus page."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._load_attempts = _Counter(":tensorflow:cc:saved_model:load_attempt_count", ("model_path", "status"))
        self._load_latency = _Counter(":tensorflow:cc:saved_model:load_latency", ("model_path",))
        self._warmup_latency = _Histogram(":tensorflow:serving:model_warmup_latency", ("model_path", "status"))
        self._warmup_records = _Counter(":tensorflow:serving:model_warmup_records_read", ("model_path", "status"))
        self._request_count = _Counter(":tensorflow:serving:request_count", ("model_name", "status"))
        self._request_latency = _Histogram(":tensorflow:serving:request_latency", ("model_name", "API", "entrypoint"))
        self._runtime_latency = _Histogram(":tensorflow:serving:runtime_latency", ("model_name", "API", "runtime"))
        self._sources: list[Callable[[], bytes]] = []
        # GeneratePage's order: the families sorted by their "/tensorflow/..." names.
        self._families: list[_Counter | _Histogram] = [
            self._load_attempts,
            self._load_latency,
            self._warmup_latency,
            self._warmup_records,
            self._request_count,
            self._request_latency,
            self._runtime_latency,
        ]

    def request(self, model: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        with self._lock:
            self._request_count.cells[(model, status)] += 1
            if status == "OK":
                self._request_latency.add((model, api, entrypoint), int(seconds * 1e6))

    def runtime(self, model: str, api: str, seconds: float) -> None:
        with self._lock:
            self._runtime_latency.add((model, api, "TF1"), int(seconds * 1e6))

    def load_attempt(self, path: str, ok: bool, seconds: float = 0.0) -> None:
        """TensorFlow's LoadSavedModel: an attempt ("success"/"fail"), and the latency of a successful one."""
        with self._lock:
            self._load_attempts.cells[(path, "success" if ok else "fail")] += 1
            if ok:
                self._load_latency.cells[(path,)] += int(seconds * 1e6)

    def warmup(self, path: str, status: str, seconds: float, records: int) -> None:
        """saved_model_warmup_util.cc: recorded once per warmup of a version that has a warmup file."""
        with self._lock:
            self._warmup_latency.add((path, status), int(seconds * 1e6))
            self._warmup_records.cells[(path, status)] += records

    def loaded(self, path: str, load_seconds: float, warmup_seconds: float | None = None) -> None:
        """Compatibility hook (ManagerOptions.on_loaded): a successful load without warmup details."""
        self.load_attempt(path, True, load_seconds)

    def add_source(self, source: Callable[[], bytes]) -> None:
        """Another part's metrics (the batching scheduler's counter), appended to the page as it renders them."""
        self._sources.append(source)

    def exposition(self) -> bytes:
        with self._lock:
            lines = [line for family in self._families for line in family.lines()]
        return ("\n".join(lines) + "\n").encode() + b"".join(source() for source in self._sources)
