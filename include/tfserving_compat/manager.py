"""Version discovery and the load/unload lifecycle, as TF Serving's file-system source and manager do it.

A poll thread lists each model's base path; numeric children are versions and the model's policy
picks which to serve. Loads and unloads run on a worker pool, never on a request's path. Availability
is preserved: an old version unloads only once an aspired version is AVAILABLE (or nothing is aspired),
so a failing new version leaves the old one serving. Every version ever seen keeps its last state.
"""

from __future__ import annotations

import itertools
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

_SEQ = itertools.count()

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
    seq: int = field(default_factory=lambda: next(_SEQ))  # creation order, for waits on fresh states only


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
    # TF Serving's default is 0: loads (and unloads) run one at a time in the manager's loop. N > 0 lets
    # up to N actions run at once.
    num_load_threads: int = 0
    enable_signature_method_name_check: bool = False
    on_loaded: Callable[[str, float, float], None] | None = None  # (path, load s, warmup s)
    metrics: Any = None  # a metrics.Metrics: load attempts/latency and warmup (else on_loaded's owner)


def parse_version(child: str) -> int | None:
    """file_system_storage_path_source.cc ParseVersionNumber: absl::SimpleAtoi into an int64, so "007" is
    version 7 (loaded from the directory "007"), surrounding ASCII whitespace and a sign are accepted."""
    text = child.strip(" \t\n\v\f\r")
    digits = text[1:] if text[:1] in ("+", "-") else text
    if not digits or not (digits.isascii() and digits.isdigit()):
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


class ModelManager:
    def __init__(self, options: ManagerOptions) -> None:
        self.options = options
        self._cond = threading.Condition(threading.RLock())
        self._models: dict[str, ModelSlot] = {}
        self._labels: dict[str, dict[str, int]] = {}
        self._config: Any = None
        self._capacity = max(1, options.num_load_threads)
        self._busy = 0  # load/unload actions in flight
        self._workers = ThreadPoolExecutor(max_workers=self._capacity, thread_name_prefix="load")
        owner = getattr(options.on_loaded, "__self__", None)
        self._metrics = options.metrics or (owner if hasattr(owner, "load_attempt") else None)
        self._stop = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._reload_lock = threading.Lock()

    # ------------------------------------------------------------------ config

    def reload_config(self, new: Any, should_wait: Callable[[], bool] = lambda: True) -> None:
        """Full replacement, as ServerCore::ReloadConfig: validate, check labels, apply, then block until
        every newly added model has an AVAILABLE version or has failed. Raises ServingError."""
        with self._reload_lock:
            cfg.validate(new, self._config)
            since = next(_SEQ)  # a fresh ServableStateMonitor: only states created from now on
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
                self._kick()
                started = self._poll_thread is not None
            if started:
                self._wait_for_models(new_names, should_wait, since)

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

    def _wait_for_models(self, names: set[str], should_wait: Callable[[], bool], since: int = -1) -> None:
        if not names:
            return
        with self._cond:
            while True:
                pending = {n for n in names if self._outcome(n, since) is None}
                if not pending or not should_wait() or self._stop.is_set():
                    break
                self._cond.wait(timeout=0.5)
            failed = {n: self._outcome(n, since) for n in names if self._outcome(n, since) not in (None, "ok")}
        if failed:
            details = "".join(f"{{{msg}}}, " for msg in failed.values())
            raise ServingError(f"{len(failed)} model(s) did not become available: {{{details}}}", "UNKNOWN")

    def _outcome(self, name: str, since: int = -1) -> str | None:
        """ServerCore::WaitUntilModelsAvailable waits on ServableRequest::Latest(name), which
        servable_state_monitor.cc (HasAnyServableInStreamReachedState) settles with the LOWEST version
        that reached AVAILABLE or END: "ok" if it is AVAILABLE, its error if END, None while none has."""
        slot = self._models.get(name)
        if slot is None:
            return None
        for v in sorted(slot.versions):
            st = slot.versions[v]
            if st.seq <= since or st.state not in (AVAILABLE, END):
                continue
            if st.state == AVAILABLE:
                return "ok"
            err = st.error
            return f"name: {name} version: {v}" + (f" due to error: {err.code}: {err.message}" if err else "")
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
                version = parse_version(child)
                if version is not None:
                    versions[version] = os.path.join(base_path, child)  # a later duplicate wins, as in TF
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
                        slot.versions[v] = VersionState(v, found[v])
                for st in slot.versions.values():
                    if st.state == START and st.version not in slot.aspired:
                        st.state, st.error = END, None  # FlushServables: a new version no longer aspired
            self._kick()
            self._cond.notify_all()

    @staticmethod
    def _policy_action(slot: ModelSlot) -> tuple[str, VersionState] | None:
        """AvailabilityPreservingPolicy::GetNextAction (availability_preserving_policy.cc).

        Unload the lowest non-aspired AVAILABLE version if nothing is aspired, an aspired version is
        AVAILABLE, or more than one non-aspired version is AVAILABLE; else load the highest new aspired one."""
        aspired = [st for st in slot.versions.values() if st.version in slot.aspired]
        has_aspired = bool(aspired)
        has_aspired_serving = any(st.state == AVAILABLE for st in aspired)
        unaspired_serving = [
            st for st in slot.versions.values() if st.version not in slot.aspired and st.state == AVAILABLE
        ]
        if unaspired_serving and (not has_aspired or has_aspired_serving or len(unaspired_serving) > 1):
            return "unload", min(unaspired_serving, key=lambda st: st.version)
        new = [st for st in aspired if st.state == START]
        if new:
            return "load", max(new, key=lambda st: st.version)
        return None

    def _kick(self) -> None:
        """AspiredVersionsManager::InvokePolicyAndExecuteAction: one action at a time across all models,
        unloads before loads (CompareActions), up to num_load_threads in flight (one when it is 0, as in TF
        Serving, where loads and unloads then run serially in the manager's loop). Caller holds the lock."""
        while self._busy < self._capacity and not self._stop.is_set():
            actions = [
                (a, slot, st)
                for slot in self._models.values()
                for a, st in [self._policy_action(slot) or ("", None)]
                if st
            ]
            if not actions:
                return
            actions.sort(key=lambda a: 0 if a[0] == "unload" else 1)
            kind, slot, st = actions[0]
            self._busy += 1
            if kind == "unload":
                st.state = UNLOADING
                self._workers.submit(self._unload, slot, st)
            else:
                st.state = LOADING
                self._workers.submit(self._load, slot, st)
            self._cond.notify_all()

    def _done(self) -> None:
        """An action finished (caller holds the lock): free its slot and take the next."""
        self._busy -= 1
        self._kick()
        self._cond.notify_all()

    # ------------------------------------------------------------------ load / unload (worker threads)

    def _load(self, slot: ModelSlot, st: VersionState) -> None:
        attempts = self.options.max_num_load_retries + 1
        for attempt in range(attempts):
            with self._cond:
                if st.version not in slot.aspired:
                    st.state, st.error = END, None  # no longer wanted: cancel
                    self._done()
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
                    metrics=self._metrics,
                )
            except ServingError as exc:
                error = exc
            except Exception as exc:  # noqa: BLE001 - any load failure ends as END with its error
                error = ServingError(str(exc), "UNKNOWN")
            else:
                if self.options.on_loaded and self._metrics is None:
                    self.options.on_loaded(st.path, load_s, warm_s)
                with self._cond:
                    st.servable, st.state, st.error = servable, AVAILABLE, None
                    log.info("Successfully loaded servable version {name: %s version: %d}", slot.name, st.version)
                    self._done()
                return
            log.error("Loading servable {name: %s version: %d} failed: %s", slot.name, st.version, error.message)
            if attempt + 1 < attempts and self._stop.wait(self.options.load_retry_interval_seconds):
                break
        with self._cond:
            st.state, st.error = END, error
            self._done()

    def _unload(self, slot: ModelSlot, st: VersionState) -> None:
        with self._cond:
            while st.inflight:
                self._cond.wait(timeout=0.5)
            servable, st.servable = st.servable, None
        if servable is not None:
            servable.close()
        with self._cond:
            st.state, st.error = END, None
            self._done()

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
