"""What the benchmarks in bench/ share: their start-up, the example models, a paced load, figures, result files.

A benchmark runs as `.venv/bin/python bench/<name>.py`, so bench/ is on sys.path and `import _common` works.
It calls `bootstrap()` before it imports `stack` or anything of `tfdeploy`: that puts plugins/ and
include/scripts/ on sys.path and picks the stack before the settings are read. The helpers below that read the
settings or talk to Airflow import them when called, so they are for after `bootstrap()`.

Every call a load here sends goes to 127.0.0.1, and every load stops by itself (in time, and in count if asked).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar
from urllib.parse import urlsplit

import numpy as np
import requests

if TYPE_CHECKING:
    from tfdeploy.airflow_client import AirflowClient

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
INSIDE = [0.5, -0.25, 0.1, 0.75]  # an example model's input every variant answers
OUTSIDE = [1.5, -0.25, 0.1, 0.75]  # what `fragile` refuses (HTTP 400); every other variant answers it

R = TypeVar("R")


# ----------------------------------------------------------------------------- start-up


def stack_parser(default: str) -> argparse.ArgumentParser:
    """A parser of `--stack` alone (no -h), for a script's own parser's `parents=[...]`; its default is
    TFDEPLOY_STACK, else `default`."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--stack",
        default=os.environ.get("TFDEPLOY_STACK", default),
        help=f"stack profile (default: TFDEPLOY_STACK, else {default})",
    )
    return parser


def bootstrap(default_stack: str = "test", *, stack_flag: bool = True) -> argparse.ArgumentParser:
    """Readies a benchmark before it imports `stack` or `tfdeploy`, and returns its `--stack` parser.

    Puts plugins/, include/scripts/ and include/ first on sys.path; sets TFDEPLOY_STACK before the settings are read: to
    `--stack` from the command line (with `stack_flag`; the rest of the command line is left to the script),
    else to TFDEPLOY_STACK, else to `default_stack`; then sets Airflow's environment for that stack (what is set
    already wins). The parser returned is for `argparse.ArgumentParser(parents=[...])`, so that `--stack` shows
    in the script's help and its parser accepts it.
    """
    sys.path[:0] = [str(ROOT / "plugins"), str(ROOT / "include" / "scripts"), str(ROOT / "include")]
    parser = stack_parser(default_stack)
    os.environ["TFDEPLOY_STACK"] = parser.parse_known_args()[0].stack if stack_flag else parser.get_default("stack")

    import stack
    from tfdeploy.settings import get_settings

    for key, value in stack.airflow_env(get_settings()).items():
        os.environ.setdefault(key, value)
    return parser


def airflow_client(*dags: str, **options: Any) -> AirflowClient:
    """The stack's Airflow API client (`options`: AirflowClient's, e.g. timeout), once each of `dags` is parsed
    and unpaused."""
    from tfdeploy.airflow_client import AirflowClient
    from tfdeploy.settings import get_settings

    s = get_settings()
    client = AirflowClient(s.airflow_url, s.airflow_user, s.airflow_password, **options)
    for dag in dags:
        client.wait_for_dag(dag)
        client.unpause(dag)
    return client


def local_session(token: str | None = None) -> requests.Session:
    """A requests session for the stack on 127.0.0.1: no proxy from the environment; with `token`, sent as a
    Bearer token."""
    session = requests.Session()
    session.trust_env = False
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    return session


# ----------------------------------------------------------------------------- the example models


def bench_dir() -> Path:
    """Where the example models are built: the stack's example directory (made if missing), one of the
    golden-file roots the pipeline accepts (GOLDEN_ROOTS; /tmp is not one)."""
    from tfdeploy.settings import get_settings

    path = get_settings().example_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


def build_examples(out: Path, variants: Mapping[str, tuple[str, int]]) -> dict[str, Path]:
    """Builds the example model once per `name: (variant, seed)`, all at once, each into out/<name>
    (include/example_model/build.py's build_side_by_side: RuntimeError with the end of a failed build's output)."""
    from example_model.build import build_side_by_side  # include/ is on sys.path after bootstrap()

    return build_side_by_side(out, variants)


def deploy_conf(model: str, example: Path, **extra: object) -> dict[str, object]:
    """model_deploy's conf releasing the example built in `example` (its saved_model/ and golden.json) as
    `model`; `extra` adds to it or overrides (e.g. strategy, or source for other files)."""
    return {
        "model_name": model,
        "source": str(example / "saved_model"),
        "golden_path": str(example / "golden.json"),
        **extra,
    }


# ----------------------------------------------------------------------------- load


class PacedLoad(Generic[R]):
    """Calls to `url` (on 127.0.0.1) from `workers` threads, each with its own session: at `rate` calls/s in all
    (open loop: a thread that falls behind catches up) or, with no rate, each calling again as soon as it is
    answered (closed loop); with `stagger`, each thread starts at a random point of its interval, so the threads
    are out of phase. Bounded: a thread stops when the `with` block ends, after `max_seconds`, or once
    `max_records` calls are recorded.

    A subclass makes the calls: `one_call(session, n)` sends call number `n` (thread i numbers its calls
    i + workers, i + 2 x workers, ...) and returns its record, which `records` keeps.
    """

    def __init__(
        self,
        url: str,
        rate: float | None,
        workers: int,
        *,
        max_seconds: float,
        max_records: int | None = None,
        stagger: bool = False,
        join_timeout: float = 30,
    ) -> None:
        if urlsplit(url).hostname != "127.0.0.1":
            raise ValueError(f"a benchmark's load goes to 127.0.0.1 only, not to {url}")
        self.url, self.rate, self.workers = url, rate, workers
        self.max_seconds, self.max_records = max_seconds, max_records
        self.stagger, self.join_timeout = stagger, join_timeout
        self.records: list[R] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(workers)]

    def __enter__(self) -> Self:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=self.join_timeout)

    def one_call(self, session: requests.Session, n: int) -> R:
        """Sends call number `n` over `session` and returns what `records` keeps of it."""
        raise NotImplementedError

    def _going(self, deadline: float) -> bool:
        """Whether a thread makes another call: not stopped, before `deadline`, and room left in `records`."""
        room = self.max_records is None or len(self.records) < self.max_records
        return not self.stop.is_set() and time.monotonic() < deadline and room

    def _run(self, worker: int) -> None:
        interval = self.workers / self.rate if self.rate else 0.0
        deadline = time.monotonic() + self.max_seconds
        with local_session() as session:
            next_at, n = time.monotonic(), worker
            if self.stagger:
                next_at += interval * np.random.default_rng().random()
                self.stop.wait(max(0.0, next_at - time.monotonic()))
            while self._going(deadline):
                n += self.workers
                record = self.one_call(session, n)
                with self.lock:
                    self.records.append(record)
                if interval:
                    next_at += interval
                    self.stop.wait(max(0.0, next_at - time.monotonic()))


Predict = tuple[float, float, int, str, float]  # start, end (epoch seconds), status (0: no answer), side, ms


class PredictLoad(PacedLoad[Predict]):
    """Unversioned predicts of the example model's input at `rate`/s over `workers` threads; a share `outside` of
    them (every round(1 / outside)-th call) with an input outside [-1, 1]. Records (start, end, status,
    X-Served-By, ms), times as epoch seconds; status 0 where no answer came."""

    def __init__(self, url: str, rate: float, outside: float, workers: int, **bounds: Any) -> None:
        super().__init__(url, rate, workers, **bounds)
        self.every = round(1 / outside) if outside else 0

    def one_call(self, session: requests.Session, n: int) -> Predict:
        body = {"instances": [OUTSIDE if self.every and n % self.every == 0 else INSIDE]}
        t0, start = time.monotonic(), time.time()
        try:
            resp = session.post(self.url, json=body, timeout=10)
            status, side = resp.status_code, resp.headers.get("X-Served-By", "")
        except requests.RequestException:
            status, side = 0, ""
        return start, time.time(), status, side, (time.monotonic() - t0) * 1e3


# ----------------------------------------------------------------------------- figures


def percentile(values: Sequence[float], q: float, *, scale: float = 1.0, digits: int = 2) -> float | None:
    """The q-th percentile of `values` (numpy's, interpolated) times `scale`, rounded to `digits`; None if none."""
    return round(float(np.percentile(values, q)) * scale, digits) if len(values) else None


def latency_ms(
    values: Sequence[float], *, prefix: str = "", scale: float = 1.0, digits: int = 2
) -> dict[str, float | None]:
    """`{prefix}p50_ms` and `{prefix}p99_ms` of latencies (in ms once times `scale`), as `percentile` gives them."""
    return {f"{prefix}p{q}_ms": percentile(values, q, scale=scale, digits=digits) for q in (50, 99)}


def status_codes(statuses: Iterable[int]) -> dict[str, int]:
    """How many answers had each HTTP status (0: no answer), keyed by the status as text, in first-seen order."""
    return dict(Counter(str(status) for status in statuses))


# ----------------------------------------------------------------------------- result files


def write_json(name: str, results: dict) -> None:
    """bench/results/<name>.json: the results, indented (a value JSON cannot hold as its text)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")


def write_report(name: str, lines: list[str]) -> None:
    """bench/results/<name>.md: the report's lines; and prints them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
