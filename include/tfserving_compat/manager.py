"""Version discovery and the load/unload lifecycle, as TF Serving's file-system source and manager do it.

A poll thread lists each model's base path; numeric children are versions and the model's policy
picks which to serve. Loads and unloads run on a worker pool, never on a request's path. Availability
is preserved: an old version unloads only once an aspired version is AVAILABLE (or nothing is aspired),
so a failing new version leaves the old one serving. Every version ever seen keeps its last state.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import config as cfg
from .errors import FailedPrecondition, InvalidArgument, NotFound, ServingError
from .loading import load_timed
from .servable import Servable

log = logging.getLogger("tfserving_compat.manager")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclass
class VersionState:
    version: int
    path: str
    state: str = START
    error: ServingError | None = None
    servable: Servable | None = None
    inflight: int = 0
    retryable: bool = False  # a failed version whose directory went away loads afresh if it comes back


@dataclass
class ModelSlot:
    name: str
    base_path: str
    policy: cfg.VersionPolicy
    configured: bool = True
    aspired: set[int] = field(default_factory=set)
    versions: dict[int, VersionState] = field(default_factory=dict)


@dataclass
class ManagerOptions:
    file_system_poll_wait_seconds: float = 1.0
    enable_model_warmup: bool = True
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    allow_version_labels_for_unavailable_models: bool = False
    num_load_threads: int = 4
    enable_signature_method_name_check: bool = False
    on_loaded: Callable[[str, float, float], None] | None = None  # (path, load s, warmup s)


class ModelManager:
    def __init__(self, options: ManagerOptions) -> None:
        self.options = options
        self._cond = threading.Condition(threading.RLock())
        self._models: dict[str, ModelSlot] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._config: Any = None
        self._workers = ThreadPoolExecutor(max_workers=options.num_load_threads, thread_name_prefix="load")
        self._stop = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._reload_lock = threading.Lock()

    # ------------------------------------------------------------------ config

    def reload_config(self, new: Any, should_wait: Callable[[], bool] = lambda: True) -> None:
        """Full replacement, as ServerCore::ReloadConfig: validate, check labels, apply, then block until
        every newly added model has an AVAILABLE version or has failed. Raises ServingError."""
        with self._reload_lock:
            cfg.validate(new, self._config)
            with self._cond:
                labels = self._check_labels(new)
                self._config = new
                self._labels = labels
                new_names = set()
                wanted = {m.name: m for m in new.model_config_list.config}
                for name, slot in self._models.items():
                    if name not in wanted and slot.configured:
                        slot.configured = False
                        slot.aspired = set()
                for name, model in wanted.items():
                    existing = self._models.get(name)
                    if existing is None or not existing.configured:
                        new_names.add(name)
                    slot = existing or self._models.setdefault(
                        name, ModelSlot(name, model.base_path, cfg.VersionPolicy.from_proto(model))
                    )
                    slot.configured = True
                    slot.base_path = model.base_path
                    slot.policy = cfg.VersionPolicy.from_proto(model)
                for slot in self._models.values():
                    if not slot.configured:
                        self._reconcile(slot)
                started = self._poll_thread is not None
            if started:
                self._wait_for_models(new_names, should_wait)

    def _check_labels(self, new: Any) -> dict[str, dict[str, int]]:
        result: dict[str, dict[str, int]] = {}
        for model in new.model_config_list.config:
            slot = self._models.get(model.name)
            for label, version in model.version_labels.items():
                allow = False
                if self.options.allow_version_labels_for_unavailable_models:
                    existing = self._labels.get(model.name, {}).get(label)
                    allow = existing is None or existing == version
                st = slot.versions.get(version) if slot else None
                if not allow and (st is None or st.state != AVAILABLE):
                    raise FailedPrecondition(
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference"
                    )
                result.setdefault(model.name, {})[label] = version
        return result

    def _wait_for_models(self, names: set[str], should_wait: Callable[[], bool]) -> None:
        if not names:
            return
        with self._cond:
            while True:
                pending = {n for n in names if self._outcome(n) is None}
                if not pending or not should_wait() or self._stop.is_set():
                    break
                self._cond.wait(timeout=0.5)
            failed = {n: self._outcome(n) for n in names if self._outcome(n) not in (None, "ok")}
        if failed:
            details = "".join(f"{{{msg}}}, " for msg in failed.values())
            raise ServingError(f"{len(failed)} model(s) did not become available: {{{details}}}", "UNKNOWN")

    def _outcome(self, name: str) -> str | None:
        """None while the model's latest aspired version is pending, "ok" once one is AVAILABLE, else the error."""
        slot = self._models.get(name)
        if slot is None:
            return None
        if any(st.state == AVAILABLE for st in slot.versions.values()):
            return "ok"
        if slot.aspired and all(
            slot.versions.get(v) is not None and slot.versions[v].state == END for v in slot.aspired
        ):
            top = max(slot.aspired)
            err = slot.versions[top].error
            return f"name: {name} version: {top}" + (f" due to error: {err.code}: {err.message}" if err else "")
        return None

    def wait_until_available(self, should_wait: Callable[[], bool] = lambda: True) -> None:
        """Startup: every configured model has an AVAILABLE version (raises if one failed)."""
        with self._cond:
            names = {n for n, s in self._models.items() if s.configured}
        self._wait_for_models(names, should_wait)

    # ------------------------------------------------------------------ polling

    def start(self) -> None:
        self.poll_once()
        self._poll_thread = threading.Thread(target=self._poll_loop, name="fs-poll", daemon=True)
        self._poll_thread.start()

    def _poll_loop(self) -> None:
        wait = self.options.file_system_poll_wait_seconds
        if wait <= 0:
            return  # TF Serving polls once when the wait is 0
        while not self._stop.wait(wait):
            try:
                self.poll_once()
            except Exception:  # noqa: BLE001 - a poll error is logged; the previous state stays
                log.exception("file-system poll failed")

    def poll_once(self) -> None:
        with self._cond:
            targets = [(s.name, s.base_path, s.policy) for s in self._models.values() if s.configured]
        listings: dict[str, dict[int, str]] = {}
        for name, base_path, _ in targets:
            if not os.path.exists(base_path):
                log.error(
                    "FileSystemStoragePathSource encountered a filesystem access error: Could not find base path "
                    "%s for servable %s",
                    base_path,
                    name,
                )
                return  # a missing base path stops the whole poll: nothing changes
            try:
                children = sorted(os.listdir(base_path))
            except OSError as exc:
                log.error("cannot list %s for servable %s: %s", base_path, name, exc)
                return
            versions: dict[int, str] = {}
            for child in children:
                if child.isdigit() and child.isascii():
                    versions.setdefault(int(child), os.path.join(base_path, child))
            listings[name] = versions
        with self._cond:
            for name, _base, policy in targets:
                slot = self._models.get(name)
                if slot is None or not slot.configured or slot.base_path != _base:
                    continue
                found = listings[name]
                slot.aspired = policy.select(list(found))
                if not found:
                    log.warning("No versions of servable %s found under base path %s", name, _base)
                for v, st in slot.versions.items():
                    if v not in found and st.state == END and st.error is not None:
                        st.retryable = True
                for v in slot.aspired:
                    old = slot.versions.get(v)
                    if old is None or (old.state == END and (old.error is None or old.retryable)):
                        fresh = slot.versions[v] = VersionState(v, found[v])
                        self._workers.submit(self._load, slot, fresh)
                self._reconcile(slot)

    def _reconcile(self, slot: ModelSlot) -> None:
        """Unload versions no longer aspired, once that keeps the model available (caller holds the lock)."""
        aspired_ready = any(slot.versions[v].state == AVAILABLE for v in slot.aspired if v in slot.versions)
        if slot.aspired and not aspired_ready:
            return
        for st in slot.versions.values():
            if st.version not in slot.aspired and st.state == AVAILABLE:
                st.state = UNLOADING
                self._cond.notify_all()
                self._workers.submit(self._unload, st)

    # ------------------------------------------------------------------ load / unload (worker threads)

    def _load(self, slot: ModelSlot, st: VersionState) -> None:
        attempts = self.options.max_num_load_retries + 1
        for attempt in range(attempts):
            with self._cond:
                if st.version not in slot.aspired:
                    st.state, st.error = END, None  # no longer wanted: cancel
                    self._cond.notify_all()
                    return
                st.state = LOADING
                self._cond.notify_all()
            try:
                servable, load_s, warm_s = load_timed(
                    slot.name,
                    st.version,
                    st.path,
                    warmup=self.options.enable_model_warmup,
                    method_name_check=self.options.enable_signature_method_name_check,
                )
            except ServingError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - any load failure ends as END with its error
                error = ServingError(str(exc), "UNKNOWN")
            else:
                if self.options.on_loaded:
                    self.options.on_loaded(st.path, load_s, warm_s)
                with self._cond:
                    st.servable, st.state, st.error = servable, AVAILABLE, None
                    log.info("Successfully loaded servable version {name: %s version: %d}", slot.name, st.version)
                    self._reconcile(slot)
                    self._cond.notify_all()
                return
            log.error("Loading servable {name: %s version: %d} failed: %s", slot.name, st.version, error.message)
            if attempt + 1 < attempts and self._stop.wait(self.options.load_retry_interval_seconds):
                break
        with self._cond:
            st.state, st.error = END, error
            self._reconcile(slot)
            self._cond.notify_all()

    def _unload(self, st: VersionState) -> None:
        with self._cond:
            while st.inflight:
                self._cond.wait(timeout=0.5)
            servable, st.servable = st.servable, None
        if servable is not None:
            servable.close()
        with self._cond:
            st.state, st.error = END, None
            self._cond.notify_all()

    # ------------------------------------------------------------------ requests

    @contextmanager
    def handle(self, name: str, version: int | None = None, label: str | None = None) -> Iterator[Servable]:
        """Hold an AVAILABLE version for the length of a request (it cannot unload meanwhile)."""
        with self._cond:
            if label is not None:
                version = self._labels.get(name, {}).get(label)
                if version is None:
                    raise InvalidArgument(f"Unrecognized servable version label: {label}")
            slot = self._models.get(name)
            st: VersionState | None = None
            if version is not None:
                cand = slot.versions.get(version) if slot else None
                if cand is not None and cand.state == AVAILABLE:
                    st = cand
                if st is None:
                    raise NotFound(f"Servable not found for request: Specific({name}, {version})")
            else:
                ready = [s for s in slot.versions.values() if s.state == AVAILABLE] if slot else []
                if not ready:
                    raise NotFound(f"Servable not found for request: Latest({name})")
                st = max(ready, key=lambda s: s.version)
            assert st.servable is not None
            st.inflight += 1
            servable = st.servable
        try:
            yield servable
        finally:
            with self._cond:
                st.inflight -= 1
                if not st.inflight:
                    self._cond.notify_all()

    def status(self, name: str, version: int | None = None) -> list[tuple[int, str, ServingError | None]]:
        """(version, state, error) newest first, as GetModelStatus reports it."""
        with self._cond:
            slot = self._models.get(name)
            if version is not None:
                st = slot.versions.get(version) if slot else None
                if st is None:
                    raise NotFound(f"Could not find version {version} of model {name}")
                return [(st.version, st.state, st.error)]
            if slot is None or not slot.versions:
                raise NotFound(f"Could not find any versions of model {name}")
            return [(s.version, s.state, s.error) for s in sorted(slot.versions.values(), key=lambda s: -s.version)]

    def model_names(self) -> list[str]:
        with self._cond:
            return [n for n, s in self._models.items() if s.configured]

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
            servables = [st for s in self._models.values() for st in s.versions.values() if st.servable]
        self._workers.shutdown(wait=False, cancel_futures=True)
        for st in servables:
            if st.servable is not None:
                st.servable.close()
