"""Request batching, as TF Serving's BatchingSession does it (--enable_batching, --batching_parameters_file).

TF Serving wraps each model version's Session in a BatchingSession (tensorflow_serving/batching/batching_session.cc)
fed by a SharedBatchScheduler (tensorflow/core/kernels/batching_util/shared_batch_scheduler.h). What a client
can observe, and what is mirrored here:

- only a Run whose feeds and fetches are exactly one SignatureDef's inputs and outputs is batched (Predict
  without output_filter, Classify, Regress); any other Run bypasses the batcher (BatchingSession::InternalRun);
- a task's size is the 0th dimension of its inputs, which must all agree (ComputeTensorBatchSize);
  a task larger than max_batch_size is refused: "Task size N is larger than maximum input batch size M";
- tasks queue into an open batch until it is full (max_batch_size) or batch_timeout_micros have passed since
  it opened; one of num_batch_threads threads then runs the whole batch as ONE session run: inputs are
  concatenated, padded to the lowest allowed_batch_sizes entry with copies of the last task's first row
  (MergeInputTensors), and the outputs are split back per task (SplitOutputTensors);
- more than max_enqueued_batches waiting batches: UNAVAILABLE "The batch scheduling queue to which this
  task was submitted is full";
- every batched session run increments `/tensorflow/serving/batching_session/wrapped_run_count`, exported
  as `:tensorflow:serving:batching_session:wrapped_run_count`.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import FailedPrecondition, InvalidArgument, ServingError, Unavailable

WRAPPED_RUN_COUNT = ":tensorflow:serving:batching_session:wrapped_run_count"
# SharedBatchScheduler<>::QueueOptions defaults (shared_batch_scheduler.h).
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    num_batch_threads: int = 1
    allowed_batch_sizes: tuple[int, ...] = ()

    @classmethod
    def from_proto(cls, params: Any, default_threads: int) -> BatchingOptions:
        """GetQueueOptions + CreateBatchScheduler (bundle_factory_util.h): unset wrappers keep the defaults."""
        return cls(
            max_batch_size=params.max_batch_size.value if params.HasField("max_batch_size") else DEFAULT_MAX_BATCH_SIZE,
            batch_timeout_micros=params.batch_timeout_micros.value if params.HasField("batch_timeout_micros") else 0,
            max_enqueued_batches=(
                params.max_enqueued_batches.value
                if params.HasField("max_enqueued_batches")
                else DEFAULT_MAX_ENQUEUED_BATCHES
            ),
            num_batch_threads=(
                params.num_batch_threads.value if params.HasField("num_batch_threads") else default_threads
            ),
            allowed_batch_sizes=tuple(params.allowed_batch_sizes),
        )

    def validate(self) -> None:
        """The checks TF Serving makes when it wraps a session for batching (errors are INVALID_ARGUMENT)."""
        if self.num_batch_threads < 1:  # SharedBatchScheduler::Create
            raise InvalidArgument(f"num_batch_threads must be positive; was {self.num_batch_threads}")
        if self.allowed_batch_sizes and self.allowed_batch_sizes[-1] != self.max_batch_size:
            # WrapSessionForBatching (bundle_factory_util.cc)
            raise InvalidArgument(
                "Last entry in allowed_batch_sizes must match max_batch_size; last entry was "
                f"{self.allowed_batch_sizes[-1]}; expected {self.max_batch_size}"
            )


def round_to_allowed(allowed: Sequence[int], size: int) -> int:
    """RoundToLowestAllowedBatchSize (tensorflow_serving/batching/batching_util.cc)."""
    for candidate in allowed:
        if candidate >= size:
            return candidate
    return size


@dataclass
class _Task:
    inputs: list[np.ndarray]
    size: int
    done: threading.Event = field(default_factory=threading.Event)
    outputs: list[np.ndarray] | None = None
    error: BaseException | None = None


@dataclass
class _Batch:
    opened: float
    tasks: list[_Task] = field(default_factory=list)
    size: int = 0
    closed: bool = False


class _Queue:
    """One batching queue (per model version and signature), fed by Run calls, drained by the batch threads."""

    def __init__(self, scheduler: Scheduler, runner: Callable[..., Sequence[np.ndarray]], names: Sequence[str]):
        self.scheduler, self.runner, self.names = scheduler, runner, list(names)
        self.batches: deque[_Batch] = deque()

    def schedule(self, task: _Task) -> None:  # under scheduler.cond
        opts = self.scheduler.options
        if task.size > opts.max_batch_size:
            raise InvalidArgument(
                f"Task size {task.size} is larger than maximum input batch size {opts.max_batch_size}"
            )
        tail = self.batches[-1] if self.batches else None
        if tail is None or tail.closed or tail.size + task.size > opts.max_batch_size:
            if tail is not None:
                tail.closed = True
            if len(self.batches) >= opts.max_enqueued_batches:
                raise Unavailable("The batch scheduling queue to which this task was submitted is full")
            tail = _Batch(opened=time.monotonic())
            self.batches.append(tail)
        tail.tasks.append(task)
        tail.size += task.size
        if tail.size >= opts.max_batch_size:
            tail.closed = True

    def ready(self, now: float) -> float | None:
        """0 if the head batch can run now, else seconds until it can; None if empty."""
        if not self.batches:
            return None
        head = self.batches[0]
        if head.closed or len(self.batches) > 1:
            return 0.0
        return max(0.0, head.opened + self.scheduler.options.batch_timeout_micros / 1e6 - now)

    def process(self, batch: _Batch) -> None:
        """BatchingSession::ProcessBatch: merge, pad, run once, split."""
        try:
            outputs = self._run(batch)
            for task, out in zip(batch.tasks, outputs, strict=False):
                task.outputs = out
        except BaseException as exc:  # noqa: BLE001 - every task gets the batch's status
            for task in batch.tasks:
                task.error = exc
        finally:
            for task in batch.tasks:
                task.done.set()

    def _run(self, batch: _Batch) -> list[list[np.ndarray]]:
        opts = self.scheduler.options
        target = round_to_allowed(opts.allowed_batch_sizes, batch.size)
        padding = target - batch.size
        merged = []
        for i, name in enumerate(self.names):
            parts = [task.inputs[i] for task in batch.tasks]
            for part in parts[1:]:
                if part.shape[1:] != parts[0].shape[1:]:
                    raise FailedPrecondition(
                        f"Tensors with name '{name}' from different tasks have different shapes and padding is "
                        "turned off. Set pad_variable_length_inputs to true, or ensure that all tensors with the "
                        "same name have equal dimensions starting with the first dim."
                    )
            if padding > 0:
                parts.append(np.repeat(parts[-1][:1], padding, axis=0))
            merged.append(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0))
        combined = self.runner(*merged)
        self.scheduler.count_run()
        sizes = [task.size for task in batch.tasks]
        per_task: list[list[np.ndarray]] = [[] for _ in batch.tasks]
        for tensor in combined:
            tensor = np.asarray(tensor)
            if tensor.ndim == 0:
                raise FailedPrecondition("Batched output tensor has 0 dimensions")
            if tensor.shape[0] != batch.size + padding:
                raise FailedPrecondition(
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension sizes of "
                    "the input tensors"
                )
            start = 0
            for j, size in enumerate(sizes):
                per_task[j].append(tensor[start : start + size])
                start += size
        return per_task


class Scheduler:
    """A SharedBatchScheduler: batch threads shared by every queue (all models' versions and signatures)."""

    def __init__(self, options: BatchingOptions) -> None:
        options.validate()
        self.options = options
        self.cond = threading.Condition()
        self._queues: weakref.WeakKeyDictionary[Any, dict[Any, _Queue]] = weakref.WeakKeyDictionary()
        self._wrapped_runs = 0
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._loop, name=f"batch_threads_{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    # ------------------------------------------------------------------ run path

    def run(
        self, owner: Any, key: Any, runner: Callable[..., Sequence[np.ndarray]], names: Sequence[str], inputs: list
    ) -> list[np.ndarray]:
        """Run `runner(*inputs)` as part of a batch; `key` names the queue (one per owner and signature)."""
        arrays = [np.asarray(a) for a in inputs]
        task = _Task(arrays, _task_size(arrays))
        with self.cond:
            queues = self._queues.setdefault(owner, {})
            queue = queues.get(key)
            if queue is None:
                queue = queues[key] = _Queue(self, runner, names)
            queue.schedule(task)
            self.cond.notify_all()
        task.done.wait()
        if task.error is not None:
            if isinstance(task.error, ServingError):
                raise task.error
            raise task.error
        assert task.outputs is not None
        return task.outputs

    def count_run(self) -> None:
        with self.cond:
            self._wrapped_runs += 1

    @property
    def wrapped_run_count(self) -> int:
        with self.cond:
            return self._wrapped_runs

    def exposition(self) -> bytes:
        """The counter as TF Serving's Prometheus exporter prints a label-less counter (once it has a cell)."""
        count = self.wrapped_run_count
        if not count:
            return b""
        return f"# TYPE {WRAPPED_RUN_COUNT} counter\n{WRAPPED_RUN_COUNT}{{}} {count}\n".encode()

    # ------------------------------------------------------------------ batch threads

    def _next(self) -> tuple[_Queue, _Batch] | None:
        with self.cond:
            while not self._stopped:
                now = time.monotonic()
                wait: float | None = None
                for queues in list(self._queues.values()):
                    for queue in queues.values():
                        delay = queue.ready(now)
                        if delay == 0.0:
                            batch = queue.batches.popleft()
                            batch.closed = True
                            return queue, batch
                        if delay is not None:
                            wait = delay if wait is None else min(wait, delay)
                self.cond.wait(wait)
            return None

    def _loop(self) -> None:
        while True:
            item = self._next()
            if item is None:
                return
            queue, batch = item
            queue.process(batch)

    def stop(self) -> None:
        with self.cond:
            self._stopped = True
            self.cond.notify_all()


def _task_size(inputs: list[np.ndarray]) -> int:
    """ComputeTensorBatchSize (tensorflow_serving/batching/batching_util.h)."""
    if not inputs:
        raise InvalidArgument("Batching Run() must have at least one input tensor")
    size = None
    for tensor in inputs:
        if tensor.ndim == 0:
            raise InvalidArgument("Batching Run() input tensors must have at least one dimension")
        if size is None:
            size = tensor.shape[0]
        elif tensor.shape[0] != size:
            raise InvalidArgument("Batching Run() input tensors must have equal 0th-dimension size")
    assert size is not None
    return int(size)


_scheduler: Scheduler | None = None


def configure(scheduler: Scheduler | None) -> None:
    """Install the server's scheduler (None: batching off, the default)."""
    global _scheduler
    _scheduler = scheduler


def current() -> Scheduler | None:
    return _scheduler
