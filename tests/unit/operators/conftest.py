"""Fakes for the operators' unit tests: a registry that keeps versions in dicts and enforces the real state
machine, a serving target service that keeps a models.config-like dict (one per pool: stable and canary), the
router's candidates map, a model store, and Airflow's context.

Nothing here reaches HDFS, Docker, TF Serving, the router, the registry or Airflow's REST API: every fake is
built by the test that uses it (no shared state, any order), a guard fails any test that opens a network
connection, and another fails any serving step that would build a real pool or router (not injected).
"""

from __future__ import annotations

import datetime as dt
import math
import secrets
import shutil
import socket
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import BaseNotifier
from airflow.sdk.bases.operator import ExecutorSafeguard

from tfdeploy.core.errors import (
    Conflict,
    InvalidRequest,
    LockHeld,
    LostRace,
    NotFound,
    RouterError,
    VersionConflict,
    VersionNotAvailable,
)
from tfdeploy.core.manifest import encode_manifest, manifest_sha256
from tfdeploy.core.models_config import ServedModel, build_model_config
from tfdeploy.core.states import ModelState, check_transition
from tfdeploy.hooks.model_store import PublishResult
from tfdeploy.hooks.registry import (
    HealthRecord,
    Lease,
    LockInfo,
    ModelRecord,
    ModelSettings,
    Traffic,
    VersionRecord,
)
from tfdeploy.notifiers import DeploymentAlertNotifier
from tfdeploy.operators import approval as approval_module
from tfdeploy.operators import base as base_module
from tfdeploy.operators import diagnose as diagnose_module
from tfdeploy.operators import health as health_module
from tfdeploy.operators import lock as lock_module
from tfdeploy.registry.service import HEALTH
from tfdeploy.services.serving_target import ConfigChange, label_phases, with_entry

MODEL = "demo_regressor"
TARGET = "local"
SHA = "ab" * 32


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# --------------------------------------------------------------------------- guards and lineage


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    """execute() called directly (Airflow's own test mode), and no network at all."""
    monkeypatch.setattr(ExecutorSafeguard, "test_mode", True)

    def no_network(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"unit test tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)

    def not_injected(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a serving step built a real pool or router: inject(op, service=, canary=, router=)")

    # the real ones write the target's models.config under the state directory before any connection
    monkeypatch.setattr(base_module, "ServingTargetService", not_injected)
    monkeypatch.setattr(base_module, "RouterHook", not_injected)


@dataclass
class Lineage:
    """The fake ``run_context``: a fixed dict per task; ``calls`` counts the look-ups."""

    calls: list[Any] = field(default_factory=list)

    def __call__(self, context: Any) -> dict[str, str]:
        self.calls.append(context)
        return {
            "interface": "pipeline",
            "dagId": context["dag_run"].dag_id,
            "runId": context["dag_run"].run_id,
            "taskId": context["ti"].task_id,
        }


@pytest.fixture(autouse=True)
def lineage(monkeypatch: pytest.MonkeyPatch) -> Lineage:
    """``run_context`` of every operator module that records lineage replaced (counts the look-ups)."""
    fake = Lineage()
    for module in (base_module, lock_module, approval_module, health_module, diagnose_module):
        monkeypatch.setattr(module, "run_context", fake)
    return fake


# --------------------------------------------------------------------------- Airflow's context


class FakeTI:
    """``ti``: ``xcom_pull`` answers from ``xcoms`` ({task_id: value} or {(task_id, key): value}); ``xcom_push``
    adds to them."""

    def __init__(self, task_id: str, xcoms: dict[Any, Any] | None = None) -> None:
        self.task_id = task_id
        self.xcoms = dict(xcoms or {})
        self.pulls: list[tuple[Any, str]] = []

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", **_: Any) -> Any:
        self.pulls.append((task_ids, key))
        if key == "return_value":
            return self.xcoms.get(task_ids)
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key: str, value: Any, **_: Any) -> None:
        self.xcoms[(self.task_id, key)] = value


def make_context(
    task_id: str,
    xcoms: dict[Any, Any] | None = None,
    *,
    dag_id: str = "model_deploy",
    run_id: str = "manual__2026-01-01T00:00:00",
) -> dict[str, Any]:
    return {
        "ti": FakeTI(task_id, xcoms),
        "dag_run": SimpleNamespace(dag_id=dag_id, run_id=run_id, run_type="manual", triggering_user_name="alice"),
        "outlet_events": defaultdict(lambda: SimpleNamespace(extra={})),
    }


def exported(version: int, *, action: str = "release", model: str = MODEL, sha: str = SHA) -> dict[str, Any]:
    """The export step's XCom for ``version``."""
    return {
        "model": model,
        "version": version,
        "uri": f"webhdfs://namenode/models/{model}/{version}",
        "manifest_sha256": sha,
        "source": "/data/saved_model",
        "created": True,
        "action": action,
        "reason": "test",
    }


def inject(op: Any, *, registry: Any = None, service: Any = None, canary: Any = None, router: Any = None) -> Any:
    """Put fakes where the operator's cached properties look first (the instance dict): ``service`` is the
    stable pool, ``canary`` the canary pool, ``router`` the router."""
    for name, fake in (("registry", registry), ("service", service), ("canary", canary), ("router", router)):
        if fake is not None:
            op.__dict__[name] = fake
    return op


# --------------------------------------------------------------------------- the registry


def acting_user(context: Any) -> str:
    """Who the registry records as acting: the run's triggering user (every fake run is alice's), looked up by
    the registry itself; without a run, the service identity."""
    return "alice" if context.get("runId") else str(context.get("actor") or "tfdeploy-service")


@dataclass
class Write:
    method: str
    model: str
    args: dict[str, Any]


class FakeRegistry:
    """The registry's behaviour as the operators see it through ``RegistryHook``: the state machine
    (``check_transition``), production superseding on promotion, ``expected`` (LostRace), locks (LockHeld),
    NotFound for unknown models/versions, the health statuses it knows (InvalidRequest otherwise), a gray
    release's traffic split and its controls (``traffic``: model -> ``Traffic``; a new canary starts afresh),
    the per-model operations settings (``settings``: model -> ``ModelSettings``).
    Every write is appended to ``writes``; ``fail[method] = exc`` makes that method raise."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, int | None, str, dict]] = []
        self.versions: dict[tuple[str, int], VersionRecord] = {}
        self.models: set[str] = set()
        self.locks: dict[str, dict[str, Any]] = {}
        self.deployments: dict[tuple[str, str, str], int] = {}
        self.health: list[tuple[str, HealthRecord]] = []
        self.traffic: dict[str, Traffic] = {}
        self.rate_limits: dict[str, float | None] = {}
        self.settings: dict[str, ModelSettings] = {}
        self.writes: list[Write] = []
        self.reads: list[tuple[str, str]] = []
        self.fail: dict[str, BaseException] = {}

    # ---------------------------------------------------------------- test helpers

    def seed(self, version: int, state: ModelState | str, *, model: str = MODEL, **fields: Any) -> VersionRecord:
        fields.setdefault("hdfs_uri", f"webhdfs://namenode/models/{model}/{version}")
        fields.setdefault("manifest_sha256", SHA)
        record = VersionRecord(model=model, version=version, state=ModelState(state), **fields)
        self.versions[(model, version)] = record
        self.models.add(model)
        return record

    def state(self, version: int, model: str = MODEL) -> ModelState:
        return self.versions[(model, version)].state

    def writes_of(self, method: str) -> list[Write]:
        return [w for w in self.writes if w.method == method]

    def transitions(self) -> list[tuple[int, str, str]]:
        """(version, from, to) of every transition written, superseding included."""
        return [(w.args["version"], w.args["from"], w.args["to"]) for w in self.writes_of("transition")]

    def _check(self, method: str) -> None:
        if method in self.fail:
            raise self.fail[method]

    def _write(self, method: str, model: str, **args: Any) -> None:
        self.writes.append(Write(method, model, args))

    def _record(self, model: str, version: int) -> VersionRecord:
        try:
            return self.versions[(model, version)]
        except KeyError:
            raise NotFound(f"version {version} of model {model!r} not found") from None

    # ---------------------------------------------------------------- models and versions

    def get_model(self, model: str) -> ModelRecord:
        self._check("get_model")
        self.reads.append(("get_model", model))
        if model not in self.models and model not in self.locks:
            raise NotFound(f"model {model!r} not found")
        lock = self.locks.get(model)
        info = (
            LockInfo(lock["holder"], lock["run_id"], lock["expires_at"], lock["expires_at"] <= utcnow())
            if lock
            else None
        )
        states = {v: r.state for (m, v), r in self.versions.items() if m == model}
        production = next((v for v, s in states.items() if s == ModelState.PRODUCTION), None)
        canary = next((v for v, s in states.items() if s == ModelState.CANARY), None)
        return ModelRecord(
            model=model,
            production_version=production,
            canary_version=canary,
            latest_version=max(states, default=None),
            lock=info,
        )

    def production_version(self, model: str) -> int | None:
        try:
            return self.get_model(model).production_version
        except NotFound:
            return None

    def get_version(self, model: str, version: int) -> VersionRecord:
        self._check("get_version")
        self.reads.append(("get_version", model))
        return self._record(model, version)

    def register_version(
        self,
        model: str,
        *,
        version: int | None,
        hdfs_uri: str,
        manifest_sha256: str,
        source: str = "",
        reason: str = "",
        context: Any,
    ) -> VersionRecord:
        self._check("register_version")
        if version is None:
            version = max((v for m, v in self.versions if m == model), default=0) + 1
        existing = self.versions.get((model, version))
        if existing is not None:
            if (existing.manifest_sha256, existing.hdfs_uri) == (manifest_sha256, hdfs_uri):
                return existing  # the same content again: a no-op, nothing written
            raise Conflict(f"version {version} of model {model!r} already exists with different content")
        record = VersionRecord(
            model=model,
            version=version,
            state=ModelState.REGISTERED,
            hdfs_uri=hdfs_uri,
            manifest_sha256=manifest_sha256,
            source=source,
            run_id=context["runId"],
            dag_id=context["dagId"],
            created_by=acting_user(context),
        )
        self.versions[(model, version)] = record
        self.models.add(model)
        self._write("register_version", model, version=version, reason=reason, context=dict(context))
        return record

    def update_report(
        self,
        model: str,
        version: int,
        *,
        metrics: dict | None = None,
        validation_report: dict | None = None,
        signatures: dict | None = None,
        context: Any,
    ) -> VersionRecord:
        self._check("update_report")
        record = self._record(model, version)
        if record.state != ModelState.REGISTERED:
            raise Conflict(f"version {version} of {model!r} is {record.state}; reports only change while registered")
        changes = {
            k: v
            for k, v in {"metrics": metrics, "validation_report": validation_report, "signatures": signatures}.items()
            if v is not None
        }
        record = replace(record, **changes)
        self.versions[(model, version)] = record
        self._write("update_report", model, version=version, context=dict(context), **changes)
        return record

    def transition(
        self,
        model: str,
        version: int,
        to: ModelState | str,
        *,
        reason: str = "",
        expected: ModelState | str | None = None,
        details: dict | None = None,
        context: Any,
    ) -> VersionRecord:
        self._check("transition")
        record = self._record(model, version)
        if expected is not None and record.state != ModelState(expected):
            raise LostRace(f"version {version} of {model!r} is {record.state}, not {expected}")
        src, dst = check_transition(record.state, to)  # IllegalTransition, as the registry answers
        if dst == ModelState.PRODUCTION:
            current = self.production_version(model)
            if current not in (None, version):
                self.versions[(model, current)] = replace(self.versions[(model, current)], state=ModelState.SUPERSEDED)
                self._write(
                    "transition",
                    model,
                    version=current,
                    to=ModelState.SUPERSEDED.value,
                    reason=f"superseded by version {version}",
                    expected=None,
                    details={},
                    context=dict(context),
                    **{"from": ModelState.PRODUCTION.value},
                )
        record = replace(record, state=dst)
        self.versions[(model, version)] = record
        self._write(
            "transition",
            model,
            version=version,
            to=dst.value,
            reason=reason,
            expected=None if expected is None else ModelState(expected).value,
            details=details or {},
            context=dict(context),
            **{"from": src.value},
        )
        return record

    # ---------------------------------------------------------------- deployments and health

    def set_deployment(
        self, model: str, target: str, label: str, version: int, *, reason: str = "", context: Any
    ) -> int | None:
        self._check("set_deployment")
        self._record(model, version)
        previous = self.deployments.get((model, target, label))
        self.deployments[(model, target, label)] = version
        self._write(
            "set_deployment", model, target=target, label=label, version=version, reason=reason, context=dict(context)
        )
        return previous

    def clear_deployment(self, model: str, target: str, label: str, *, reason: str = "", context: Any) -> None:
        self._check("clear_deployment")
        self.deployments.pop((model, target, label), None)
        self._write("clear_deployment", model, target=target, label=label, reason=reason, context=dict(context))

    def record_health(
        self, model: str, *, version: int, target: str, status: str, details: dict | None = None, context: Any
    ) -> HealthRecord:
        self._check("record_health")
        if status not in HEALTH:  # as the registry answers (422)
            raise InvalidRequest(f"unknown health status {status!r}; use one of {', '.join(sorted(HEALTH))}")
        record = HealthRecord(version, target, status, dict(details or {}), utcnow())
        self.health.append((model, record))
        self._write("record_health", model, version=version, target=target, status=status, context=dict(context))
        return record

    def record_serving_event(
        self,
        model: str,
        kind: str,
        *,
        version: int | None = None,
        reason: str = "",
        details: dict | None = None,
        context: Any,
    ) -> None:
        """History-only appends (serving and router changes), kept apart from ``writes`` in ``events``."""
        self._check("record_serving_event")
        self.events.append((kind, model, version, reason, dict(details or {})))

    def latest_health(self, model: str, *, limit: int = 1, version: int | None = None) -> list[HealthRecord]:
        self._check("latest_health")
        records = [r for m, r in reversed(self.health) if m == model and version in (None, r.version)]
        return records[:limit]

    # ---------------------------------------------------------------- operations: settings, listings

    def get_settings(self, model: str) -> ModelSettings:
        """``settings[model]`` (default: all off); NotFound for a model never registered, as the registry."""
        self._check("get_settings")
        self.reads.append(("get_settings", model))
        if model not in self.models:
            raise NotFound(f"model {model!r} not found")
        return self.settings.get(model, ModelSettings())

    def list_models(self, *, q: str = "", page_size: int = 1000) -> list[ModelRecord]:
        """Every model (name containing ``q``), by name (without the lock: the list API has none)."""
        self._check("list_models")
        return [replace(self.get_model(m), lock=None) for m in sorted(self.models) if q in m]

    def list_versions(
        self, model: str, *, state: ModelState | str | None = None, limit: int = 1000
    ) -> list[VersionRecord]:
        """The model's versions, newest first, in ``state`` if given."""
        self._check("list_versions")
        self.reads.append(("list_versions", model))
        wanted = None if state is None else ModelState(state)
        records = sorted(
            (r for (m, _), r in self.versions.items() if m == model and wanted in (None, r.state)),
            key=lambda r: r.version,
            reverse=True,
        )
        return records[:limit]

    # ---------------------------------------------------------------- gray releases: traffic split and controls

    def set_traffic(
        self,
        model: str,
        *,
        stable_version: int | None,
        canary_version: int | None,
        canary_weight: int,
        reason: str,
        context: Any,
    ) -> Traffic:
        self._check("set_traffic")
        if isinstance(canary_weight, bool) or not isinstance(canary_weight, int) or not 0 <= canary_weight <= 100:
            raise InvalidRequest(f"canaryWeight must be an integer percentage in 0..100, got {canary_weight!r}")
        if canary_weight > 0 and canary_version is None:
            raise InvalidRequest(f"canaryWeight {canary_weight} needs a canaryVersion")
        if canary_version is not None and canary_version == stable_version:
            raise InvalidRequest(f"canaryVersion and stableVersion are both {canary_version}")
        before = self.traffic.get(model)
        fresh = before is None or canary_version is None or canary_version != before.canary_version
        weight = canary_weight if canary_version is not None else 0
        traffic = Traffic(
            stable_version=stable_version,
            stable_weight=100 - weight if stable_version is not None else 0,
            canary_version=canary_version,
            canary_weight=weight,
            paused=False if fresh or before is None else before.paused,
            pending_action=None if fresh or before is None else before.pending_action,
            updated_at=utcnow(),
            updated_by=acting_user(context),
        )
        self.traffic[model] = traffic
        self._write(
            "set_traffic",
            model,
            stable_version=stable_version,
            canary_version=canary_version,
            canary_weight=canary_weight,
            reason=reason,
            context=dict(context),
        )
        return traffic

    def get_traffic(self, model: str) -> Traffic:
        self._check("get_traffic")
        self.reads.append(("get_traffic", model))
        return self.traffic.get(model) or Traffic(
            stable_version=self.production_version(model),
            stable_weight=100,
            canary_version=None,
            canary_weight=0,
            paused=False,
            pending_action=None,
            updated_at=None,
        )

    def release_control(self, model: str, action: str, *, reason: str, context: Any = None) -> Traffic:
        """An operator's pause / resume / promote / abort (Conflict when no release is in progress)."""
        self._check("release_control")
        if action not in ("pause", "resume", "promote", "abort"):
            raise InvalidRequest(f"unknown action {action!r}")
        traffic = self.traffic.get(model)
        if traffic is None or traffic.canary_version is None:
            raise Conflict(f"no release of {model} is in progress (its traffic has no canary): nothing to {action}")
        if action in ("promote", "abort"):
            traffic = replace(traffic, pending_action=action)
        else:
            traffic = replace(traffic, paused=action == "pause")
        self.traffic[model] = traffic
        self._write("release_control", model, action=action, reason=reason, context=dict(context or {}))
        return traffic

    def clear_pending_action(self, model: str, *, context: Any, expected: str | None = None) -> None:
        self._check("clear_pending_action")
        traffic = self.traffic.get(model)
        if traffic is None or traffic.pending_action is None:
            return
        if expected is not None and traffic.pending_action != expected:
            raise Conflict(f"the pending action of {model}'s release is now {traffic.pending_action}, not {expected}")
        self.traffic[model] = replace(traffic, pending_action=None)
        self._write("clear_pending_action", model, cleared=traffic.pending_action, context=dict(context))

    def set_rate_limit(self, model: str, rps: float | None, *, reason: str, context: Any) -> None:
        self._check("set_rate_limit")
        self.rate_limits[model] = rps
        self._write("set_rate_limit", model, rps=rps, reason=reason, context=dict(context))

    # ---------------------------------------------------------------- the deployment lock

    def hold_lock(self, *, holder: str, run_id: str, expires_in: float, model: str = MODEL) -> str:
        """Test helper: another run holds the lock (negative ``expires_in``: it expired)."""
        token = secrets.token_hex(8)
        self.locks[model] = {
            "holder": holder,
            "run_id": run_id,
            "token": token,
            "expires_at": utcnow() + dt.timedelta(seconds=expires_in),
        }
        return token

    def acquire_lock(self, model: str, *, holder: str, run_id: str, ttl_seconds: float, context: Any) -> Lease:
        """As the registry: the token only to the request that creates the lease; the same run again extends it."""
        self._check("acquire_lock")
        now = utcnow()
        lock = self.locks.get(model)
        if lock is not None and lock["expires_at"] > now:
            if lock["run_id"] == run_id and run_id:
                lock["expires_at"] = now + dt.timedelta(seconds=ttl_seconds)  # the same run again: extended
                self._write("acquire_lock", model, holder=holder, extended=True, context=dict(context))
                return Lease(model, "", holder, run_id, lock["expires_at"])
            raise LockHeld(f"model {model!r} is being deployed by {lock['holder']} until {lock['expires_at']}")
        previous = (
            {"holder": lock["holder"], "runId": lock["run_id"], "expiredAt": lock["expires_at"].isoformat()}
            if lock
            else None
        )
        token = secrets.token_hex(8)
        expires = now + dt.timedelta(seconds=ttl_seconds)
        self.locks[model] = {"holder": holder, "run_id": run_id, "token": token, "expires_at": expires}
        self.models.add(model)
        self._write("acquire_lock", model, holder=holder, extended=False, context=dict(context))
        return Lease(model, token, holder, run_id, expires, previous)

    def _holds(self, lock: dict[str, Any], token: str, context: Any) -> bool:
        return lock["token"] == token if token else bool(context) and lock["run_id"] == context.get("runId")

    def renew_lock(self, model: str, *, ttl_seconds: float, context: Any, token: str = "") -> Lease:
        self._check("renew_lock")
        lock = self.locks.get(model)
        now = utcnow()
        if lock is None or not self._holds(lock, token, context) or lock["expires_at"] <= now:
            raise Conflict(f"the lease of model {model!r} is not held by this caller")
        lock["expires_at"] = now + dt.timedelta(seconds=ttl_seconds)
        self._write("renew_lock", model, ttl_seconds=ttl_seconds, context=dict(context))
        return Lease(model, "", lock["holder"], lock["run_id"], lock["expires_at"])

    def release_lock(self, model: str, *, context: Any, token: str = "") -> None:
        self._check("release_lock")
        lock = self.locks.get(model)
        if lock is None:
            return
        if not self._holds(lock, token, context):
            raise Conflict(f"lock of model {model!r} is held by {lock['holder']}, not by this caller")
        del self.locks[model]
        self._write("release_lock", model, holder=lock["holder"], context=context)


@pytest.fixture
def registry() -> FakeRegistry:
    return FakeRegistry()


# --------------------------------------------------------------------------- serving


class FakeServing:
    """TF Serving's REST side for smoke tests: ``answer(model, instances, version=, label=)`` gives the
    predictions; ``signatures`` are listed in the metadata; ``fail_every`` makes every n-th predict raise."""

    def __init__(self, answer: Callable[..., list[Any]] | None = None) -> None:
        self.answer = answer or (lambda model, instances, **where: [0.0 for _ in instances])
        self.signatures = ["serving_default"]
        self.fail_every: int | None = None
        self.predicts: list[dict[str, Any]] = []
        self.metadatas: list[dict[str, Any]] = []

    def predict(
        self,
        model: str,
        instances: list[Any],
        *,
        version: int | None = None,
        label: str | None = None,
        signature_name: str | None = None,
    ) -> dict[str, Any]:
        self.predicts.append({"version": version, "label": label, "signature_name": signature_name})
        if self.fail_every and len(self.predicts) % self.fail_every == 0:
            raise RuntimeError("HTTP 500 from the fake server")
        return {"predictions": self.answer(model, instances, version=version, label=label)}

    def metadata(self, model: str, *, version: int | None = None, label: str | None = None) -> dict[str, Any]:
        self.metadatas.append({"version": version, "label": label})
        return {
            "model_spec": {"name": model, "version": str(version or 0)},
            "metadata": {"signature_def": {"signature_def": {s: {} for s in self.signatures}}},
        }


class FakeService:
    """``ServingTargetService`` over a dict: ``config`` holds the models.config entries (``ServedModel``),
    ``staged`` the versions on the host's disk. ``change`` applies an edit as the real one does (no-op when
    equal, validated with ``build_model_config``, label phases counted, dropped versions unstaged) and returns
    a real ``ConfigChange``. ``fail_change`` / ``fail_stage`` make those raise (the config stays unchanged);
    ``label_answers[label]`` overrides what ``label_version`` reports. A version that is not staged never
    becomes AVAILABLE (``VersionNotAvailable``), as on a real host."""

    def __init__(
        self,
        name: str = TARGET,
        *,
        serving: FakeServing | None = None,
        container_name: str = "tfserving-local",
        model_root: str = "/srv",
    ) -> None:
        self.target = SimpleNamespace(
            name=name, container_name=container_name, image="local/tfserving-compat:latest", model_root=model_root
        )
        self.host = SimpleNamespace(
            config_path=f"{model_root}/models.config", container_base_path=lambda model: f"/models/{model}"
        )
        self.serving = serving or FakeServing()
        self.config: dict[str, ServedModel] = {}
        self.staged: set[tuple[str, int]] = set()
        self.calls: dict[str, int] = defaultdict(int)
        self.stage_calls: list[dict[str, Any]] = []
        self.changes: list[ConfigChange] = []
        self.discarded: list[tuple[str, int]] = []
        self.fail_change: BaseException | None = None
        self.fail_stage: BaseException | None = None
        self.label_answers: dict[str, int] = {}

    @property
    def name(self) -> str:
        return self.target.name

    def serve(self, *versions: int, model: str = MODEL, **labels: int) -> ServedModel:
        """Test helper: the config serves ``versions`` with ``labels`` (and they are staged)."""
        entry = ServedModel(name=model, base_path=f"/models/{model}", versions=versions, labels=labels)
        self.config[model] = entry
        self.staged |= {(model, v) for v in versions}
        return entry

    def stage(self, store: Any, model: str, version: int, *, manifest_sha256: str) -> str:
        self.calls["stage"] += 1
        self.stage_calls.append({"store": store, "model": model, "version": version, "sha": manifest_sha256})
        if self.fail_stage is not None:
            raise self.fail_stage
        self.staged.add((model, version))
        return f"/models/{model}"

    def discard(self, model: str, version: int) -> None:
        self.calls["discard"] += 1
        self.discarded.append((model, version))
        entry = self.config.get(model)
        if entry is None or version not in entry.versions:
            self.staged.discard((model, version))

    def entry(self, model: str) -> ServedModel | None:
        self.calls["entry"] += 1
        return self.config.get(model)

    def change(self, model: str, edit: Callable[[ServedModel | None], ServedModel | None]) -> ConfigChange:
        self.calls["change"] += 1
        before = self.config.get(model)
        after = edit(before)
        if after is not None and after.name != model:
            raise ValueError(f"an edit of {model!r} returned an entry for {after.name!r}")
        if after == before:
            change = ConfigChange(model, before, after, phases=0, container_created=False)
            self.changes.append(change)
            return change
        steps = label_phases(before, after)
        for step in steps:
            build_model_config(with_entry(list(self.config.values()), step, model))  # the real validation
        if self.fail_change is not None:
            raise self.fail_change  # the real service restores the previous config: nothing changed
        missing = sorted(v for v in (after.versions if after else ()) if (model, v) not in self.staged)
        if missing:  # TF Serving cannot load what is not on the host's disk; the config is restored
            raise VersionNotAvailable(
                f"{model} v{missing[0]} did not become AVAILABLE: not staged",
                model=model,
                version=missing[0],
                state=None,
                error_message="not found on disk",
            )
        if after is None:
            self.config.pop(model, None)
        else:
            self.config[model] = after
        change = ConfigChange(model, before, after, phases=len(steps), container_created=before is None)
        for version in change.dropped:
            self.staged.discard((model, version))
        self.changes.append(change)
        return change

    def describe(self, change: ConfigChange) -> dict[str, Any]:
        after = change.after
        return {
            "target": self.name,
            "replicas": [self.target.container_name],
            "versions": list(after.versions) if after else [],
            "labels": dict(after.labels) if after else {},
        }

    def label_version(self, model: str, label: str) -> int:
        self.calls["label_version"] += 1
        if label in self.label_answers:
            return self.label_answers[label]
        return self.config[model].labels[label]


@pytest.fixture
def service() -> FakeService:
    """The target's stable pool."""
    return FakeService()


@pytest.fixture
def canary() -> FakeService:
    """The target's canary pool: the same target name, its own container, model directory and server."""
    return FakeService(container_name="tfserving-local-canary", model_root="/srv-canary")


class FakeRouter:
    """``RouterHook``'s maps as dicts: ``routes`` (candidates: ``{"<model>/<version>": "canary"}``),
    ``weight_map`` (a gray release's ``{model: percent}``, 0 absent) and ``limit_map`` (``{model: rps}``). Every
    call is appended to ``calls`` (``(method, *args)``); ``fail`` (a ``RouterError``) makes every method raise
    before it changes anything, as the real hook does when the router cannot be reached."""

    socket_path = "/run/tfdeploy/haproxy.sock"

    def __init__(self) -> None:
        self.routes: dict[str, str] = {}
        self.weight_map: dict[str, int] = {}
        self.limit_map: dict[str, int] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.fail: RouterError | None = None

    def map_path(self, name: str) -> Path:
        return Path(f"/state/haproxy/{name}.map")

    def _call(self, *call: Any) -> None:
        self.calls.append(call)
        if self.fail is not None:
            raise self.fail

    def candidates(self) -> dict[str, str]:
        self._call("candidates")
        return dict(self.routes)

    def route_candidate(self, model: str, version: int) -> None:
        self._call("route_candidate", model, version)
        self.routes[f"{model}/{version}"] = "canary"

    def unroute_candidates(self, model: str) -> list[str]:
        self._call("unroute_candidates", model)
        self.weight_map.pop(model, None)  # as the real hook: the gray-release weight goes to 0 first
        keys = [key for key in self.routes if key.startswith(f"{model}/")]
        for key in keys:
            del self.routes[key]
        return keys

    def weights(self) -> dict[str, int]:
        self._call("weights")
        return dict(self.weight_map)

    def set_weight(self, model: str, percent: int) -> None:
        self._call("set_weight", model, percent)
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValueError(f"a weight is a whole percent 0-100, got {percent!r}")
        if percent:
            self.weight_map[model] = percent
        else:
            self.weight_map.pop(model, None)

    def limits(self) -> dict[str, int]:
        self._call("limits")
        return dict(self.limit_map)

    def set_limit(self, model: str, rps: float | None) -> None:
        self._call("set_limit", model, rps)
        if rps is None:
            self.limit_map.pop(model, None)
        else:
            self.limit_map[model] = max(1, math.ceil(rps))


@pytest.fixture
def router() -> FakeRouter:
    return FakeRouter()


# --------------------------------------------------------------------------- the model store (HDFS)


class FakeModelStore:
    """``ModelStoreHook`` over dicts: ``published[(model, version)]`` = manifest sha256. ``remote`` maps HDFS
    paths to local directories (for ``download_tree``). ``constructed`` records the hook's arguments."""

    def __init__(self) -> None:
        self.max_workers = 2
        self.published: dict[tuple[str, int], str] = {}
        self.remote: dict[str, Path] = {}
        self.constructed: list[tuple[tuple, dict]] = []
        self.publish_calls: list[dict[str, Any]] = []
        self.fetches: list[dict[str, Any]] = []

    def __call__(self, *args: Any, **kwargs: Any) -> FakeModelStore:  # stands in for the class
        self.constructed.append((args, kwargs))
        return self

    def find_version(self, model: str, digest: str) -> int | None:
        return next((v for (m, v), d in sorted(self.published.items()) if m == model and d == digest), None)

    def next_version(self, model: str) -> int:
        return max((v for m, v in self.published if m == model), default=0) + 1

    def publish(self, local: str, model: str, version: int, *, manifest: Any) -> PublishResult:
        files = sorted(p.relative_to(local).as_posix() for p in Path(local).rglob("*") if p.is_file())
        digest = manifest_sha256(encode_manifest(manifest))
        self.publish_calls.append({"local": local, "model": model, "version": version, "files": files})
        existing = self.published.get((model, version))
        if existing is not None and existing != digest:
            raise VersionConflict(
                model=model,
                version=version,
                path=f"/models/{model}/{version}",
                existing_sha256=existing,
                new_sha256=digest,
            )
        self.published[(model, version)] = digest
        return PublishResult(
            model=model,
            version=version,
            uri=f"webhdfs://namenode/models/{model}/{version}",
            manifest_sha256=digest,
            files=len(files),
            bytes=sum((Path(local) / f).stat().st_size for f in files),
            created=existing is None,
        )

    def download_tree(self, hdfs_path: str, local_dir: Any) -> Path:
        src = self.remote[hdfs_path]
        shutil.copytree(src, Path(local_dir) / Path(hdfs_path).name)
        return Path(local_dir)

    def fetch(self, model: str, version: int, local_dir: Any, **kwargs: Any) -> Path:
        self.fetches.append({"model": model, "version": version, **kwargs})
        return Path(local_dir)


@pytest.fixture
def store() -> FakeModelStore:
    return FakeModelStore()


# --------------------------------------------------------------------------- notifiers


class RecordingNotifier(BaseNotifier):
    def __init__(self) -> None:
        super().__init__()
        self.notified: list[Any] = []

    def notify(self, context: Any) -> None:
        self.notified.append(context)


class RecordingAlertNotifier(DeploymentAlertNotifier):
    """The default notifier's message handling, without writing the stack's alerts.log."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[str] = []

    def notify(self, context: Any) -> None:
        self.sent.append(self.message)
