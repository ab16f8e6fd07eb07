"""RegistryHook: the only way tasks reach the model registry, over HTTP through an Airflow connection.

Connection (default ``tfdeploy_registry``): conn_type http (or https), host/port of the Airflow api-server
(or a standalone registry), schema = path prefix (``registry``), password = the registry API token.

Every method is a few lines over one request helper (:meth:`RegistryHook._call`), like MLflow's RestStore:
 - every request has a timeout (``connect_timeout`` to connect, ``timeout`` to answer);
 - connection errors, timeouts and 502/503/504 answers are retried with exponential backoff (``max_attempts``
   attempts, none started after ``max_elapsed`` seconds); when they run out, :class:`RegistryUnavailable`
   says what was tried;
 - a 502/503/504 the registry answers itself with a typed error other than RegistryUnavailable (say
   RollbackNotStarted: Airflow refused to start a run) is that error at once, not retried;
 - any other error answer ``{"error": <class name>, "message": ...}`` is raised as that class of
   :mod:`tfdeploy.core.errors` (unknown names: :class:`RegistryError`), never retried;
 - results are typed (:class:`VersionRecord`, :class:`ModelRecord`, :class:`Lease`, :class:`HealthRecord`,
   :class:`Traffic`, :class:`ModelSettings`, :class:`AlertRecord`), states are :class:`ModelState`.

``context`` is the lineage dict of the run (``tfdeploy.lineage.run_context``: interface, dagId, runId,
taskId); writes record it in the registry's history, with the run's triggering user (which the registry looks
up in Airflow) as who acted.

Retrying a write after a timeout or a 502/504 (not after a refused connection or the registry's own 503,
which changed nothing) can repeat a write that did happen: registering the same version again is a no-op,
a repeated transition answers IllegalTransition (or LostRace with ``expected``), so re-read before acting on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple
from urllib.parse import quote

import requests
from airflow.sdk.bases.hook import BaseHook
from tenacity import RetryError, Retrying, retry_if_exception_type, stop_after_attempt, stop_before_delay
from tenacity.wait import wait_exponential

from tfdeploy.core import errors
from tfdeploy.core.errors import NotFound, RegistryError, RegistryUnavailable
from tfdeploy.core.states import ModelState

# The API names the class of every error it answers with; map the name back (unknown names: RegistryError).
_ERRORS: dict[str, type[RegistryError]] = {
    name: obj for name, obj in vars(errors).items() if isinstance(obj, type) and issubclass(obj, RegistryError)
}
RETRY_STATUS = frozenset({502, 503, 504})

Context = Mapping[str, Any]


# --------------------------------------------------------------------------- typed results


def _time(value: str | None) -> dt.datetime | None:
    """The API's ISO 8601 UTC times (``...Z``) as aware datetimes."""
    if not value:
        return None
    parsed = dt.datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@dataclass(frozen=True)
class VersionRecord:
    """A model version as the registry holds it."""

    model: str
    version: int
    state: ModelState
    hdfs_uri: str = ""
    manifest_sha256: str = ""
    source: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    validation_report: dict[str, Any] = field(default_factory=dict)
    signatures: dict[str, Any] = field(default_factory=dict)
    run_id: str = ""
    dag_id: str = ""
    created_by: str = ""
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> VersionRecord:
        return cls(
            model=d["modelName"],
            version=int(d["version"]),
            state=ModelState(d["state"]),
            hdfs_uri=d.get("hdfsUri") or "",
            manifest_sha256=d.get("manifestSha256") or "",
            source=d.get("source") or "",
            metrics=d.get("metrics") or {},
            validation_report=d.get("validationReport") or {},
            signatures=d.get("signatures") or {},
            run_id=d.get("runId") or "",
            dag_id=d.get("dagId") or "",
            created_by=d.get("createdBy") or "",
            created_at=_time(d.get("createdAt")),
            updated_at=_time(d.get("updatedAt")),
        )


class Deployment(NamedTuple):
    """A label (``stable``, ``canary``) on a serving target pointing at a version."""

    target: str
    label: str
    version: int


@dataclass(frozen=True)
class LockInfo:
    """Who holds a model's deployment lock (the lease's token is only given to its holder)."""

    holder: str
    run_id: str
    expires_at: dt.datetime | None
    expired: bool


@dataclass(frozen=True)
class Traffic:
    """A model's traffic split in a gray release (weights in percent of calls) and the operator's controls:
    ``paused`` (hold the weights), ``pending_action`` (``promote`` or ``abort``: the pipeline acts on it, then
    clears it). No release in progress: ``canary_version`` None, the stable version takes every call."""

    stable_version: int | None
    stable_weight: int
    canary_version: int | None
    canary_weight: int
    paused: bool
    pending_action: str | None
    updated_at: dt.datetime | None
    updated_by: str = ""

    @property
    def in_progress(self) -> bool:
        """A release is in progress (there is a canary)."""
        return self.canary_version is not None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Traffic:
        stable, canary = d.get("stable") or {}, d.get("canary") or {}
        return cls(
            stable_version=stable.get("version"),
            stable_weight=int(stable.get("weight") or 0),
            canary_version=canary.get("version"),
            canary_weight=int(canary.get("weight") or 0),
            paused=bool(d.get("paused")),
            pending_action=d.get("pendingAction"),
            updated_at=_time(d.get("updatedAt")),
            updated_by=d.get("updatedBy") or "",
        )


@dataclass(frozen=True)
class ModelSettings:
    """A model's operations settings: an automatic rollback when its production version fails, a person's
    approval before a release moves traffic, and a freeze (no new release starts; who, when and why)."""

    auto_rollback_on_failing: bool = False
    require_approval: bool = False
    frozen: bool = False
    frozen_reason: str = ""
    frozen_by: str = ""
    frozen_at: dt.datetime | None = None

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelSettings:
        return cls(
            auto_rollback_on_failing=bool(d.get("autoRollbackOnFailing")),
            require_approval=bool(d.get("requireApproval")),
            frozen=bool(d.get("frozen")),
            frozen_reason=d.get("frozenReason") or "",
            frozen_by=d.get("frozenBy") or "",
            frozen_at=_time(d.get("frozenAt")),
        )


@dataclass(frozen=True)
class ModelRecord:
    """A model: the version in production, the canary, the newest, health, deployments and lock."""

    model: str
    production_version: int | None
    canary_version: int | None = None
    latest_version: int | None = None
    health: str | None = None
    deployments: tuple[Deployment, ...] = ()
    lock: LockInfo | None = None
    description: str = ""
    traffic: Traffic | None = None
    rate_limit_rps: float | None = None
    settings: ModelSettings | None = None  # on the model detail (get_model), not in list_models
    open_alerts: int = 0

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ModelRecord:
        lock, traffic, settings = d.get("lock"), d.get("traffic"), d.get("settings")
        return cls(
            model=d["modelName"],
            production_version=d.get("version"),
            canary_version=d.get("canaryVersion"),
            latest_version=d.get("latestVersion"),
            health=d.get("health"),
            deployments=tuple(Deployment(x["target"], x["label"], int(x["version"])) for x in d.get("deployments", [])),
            lock=LockInfo(lock["holder"], lock.get("runId") or "", _time(lock.get("expiresAt")), bool(lock["expired"]))
            if lock
            else None,
            description=d.get("description") or "",
            traffic=Traffic.from_json(traffic) if traffic else None,
            rate_limit_rps=d.get("rateLimitRps"),
            settings=ModelSettings.from_json(settings) if settings else None,
            open_alerts=int(d.get("openAlerts") or 0),
        )


@dataclass(frozen=True)
class Lease:
    """A held deployment lock: ``token`` renews and releases it; it lapses at ``expires_at``."""

    model: str
    token: str  # "" unless this answer created the lease
    holder: str
    run_id: str
    expires_at: dt.datetime
    taken_over_from: Mapping[str, Any] | None = None  # the expired lease this one replaced: holder, runId, expiredAt

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Lease:
        expires = _time(d["expiresAt"])
        assert expires is not None
        return cls(
            d["modelName"], d.get("token") or "", d["holder"], d.get("runId") or "", expires, d.get("takenOverFrom")
        )


@dataclass(frozen=True)
class HealthRecord:
    """One health check result of a version on a serving target."""

    version: int
    target: str
    status: str
    details: dict[str, Any]
    at: dt.datetime | None

    @classmethod
    def from_json(cls, d: Mapping[str, Any], details: dict[str, Any] | None = None) -> HealthRecord:
        return cls(
            int(d["version"]), d["target"], d["status"], d.get("details", details) or {}, _time(d.get("recordedAt"))
        )


@dataclass(frozen=True)
class AlertRecord:
    """An alert Alertmanager delivered to the registry, and what the registry did about it (``auto_rollback``:
    started, deduplicated, declined or failed; None: nothing was due)."""

    id: int
    fingerprint: str
    model: str | None
    alertname: str
    severity: str | None
    status: str  # firing or resolved
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: dt.datetime | None
    ends_at: dt.datetime | None
    received_at: dt.datetime | None
    auto_rollback: str | None = None
    rollback_run_id: str = ""
    rollback_note: str = ""

    @property
    def open(self) -> bool:
        return self.status == "firing"

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> AlertRecord:
        auto = d.get("autoRollback") or {}
        return cls(
            id=int(d["id"]),
            fingerprint=d["fingerprint"],
            model=d.get("modelName"),
            alertname=d.get("alertname") or "",
            severity=d.get("severity"),
            status=d["status"],
            labels=d.get("labels") or {},
            annotations=d.get("annotations") or {},
            starts_at=_time(d.get("startsAt")),
            ends_at=_time(d.get("endsAt")),
            received_at=_time(d.get("receivedAt")),
            auto_rollback=auto.get("status"),
            rollback_run_id=auto.get("runId") or "",
            rollback_note=auto.get("note") or "",
        )


class _Transient(Exception):
    """An attempt that may succeed if repeated (connection error, timeout, 502/503/504)."""


# --------------------------------------------------------------------------- the hook


class RegistryHook(BaseHook):
    conn_name_attr = "registry_conn_id"
    default_conn_name = "tfdeploy_registry"
    conn_type = "http"
    hook_name = "tfdeploy model registry"

    def __init__(
        self,
        registry_conn_id: str = default_conn_name,
        *,
        timeout: float = 10.0,
        connect_timeout: float = 5.0,
        max_attempts: int = 8,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_elapsed: float = 30.0,
    ) -> None:
        """``timeout``/``connect_timeout``: seconds per request; retries: at most ``max_attempts`` attempts,
        waiting ``backoff`` * 2**n seconds (at most ``max_backoff``) between them, none started after
        ``max_elapsed`` seconds (``max_attempts=1``: no retries). The defaults ride through about 30 s of a
        registry answering 503 (its database away) before the task fails, and Airflow retries the task."""
        super().__init__()
        self.registry_conn_id = registry_conn_id
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_elapsed = max_elapsed

    # ------------------------------------------------------------------ plumbing

    @cached_property
    def _connection(self) -> Any:
        return self.get_connection(self.registry_conn_id)

    @cached_property
    def base_url(self) -> str:
        conn = self._connection
        host = (conn.host or "").rstrip("/")
        if "://" not in host:
            scheme = conn.conn_type if conn.conn_type in ("http", "https") else "http"
            host = f"{scheme}://{host}"
        port = f":{conn.port}" if conn.port else ""
        prefix = f"/{conn.schema.strip('/')}" if conn.schema and conn.schema.strip("/") else ""
        return f"{host}{port}{prefix}"

    @cached_property
    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # no proxies from the environment for an internal service
        session.headers["Accept"] = "application/json"
        if self._connection.password:
            session.headers["Authorization"] = f"Bearer {self._connection.password}"
        return session

    def get_conn(self) -> requests.Session:
        return self.session

    def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """One request with retries; the decoded JSON answer (None if empty) or a typed error."""
        url = f"{self.base_url}{path}"
        started = time.monotonic()
        retrying = Retrying(
            stop=stop_after_attempt(self.max_attempts) | stop_before_delay(self.max_elapsed),
            wait=wait_exponential(multiplier=self.backoff, max=self.max_backoff),
            retry=retry_if_exception_type(_Transient),
            reraise=False,
        )
        try:
            resp = retrying(self._send, method, url, params, body, headers)
        except RetryError as exc:
            attempts = exc.last_attempt.attempt_number
            raise RegistryUnavailable(
                f"registry {method} {url}: no answer after {attempts} attempt(s) over "
                f"{time.monotonic() - started:.1f}s (timeouts {self.connect_timeout}s to connect, {self.timeout}s to "
                f"answer; retried on connection errors, timeouts and 502/503/504); last: {exc.last_attempt.exception()}"
                f". Check that the registry ({self.registry_conn_id} connection) is up, then retry"
            ) from exc.last_attempt.exception()
        if resp.status_code >= 400:
            raise self._error(method, url, resp)
        return resp.json() if resp.content else None

    def _send(
        self, method: str, url: str, params: Mapping[str, Any] | None, body: Any, headers: Mapping[str, str] | None
    ) -> requests.Response:
        try:
            resp = self.session.request(
                method, url, params=params, json=body, headers=headers, timeout=(self.connect_timeout, self.timeout)
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _Transient(f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code in RETRY_STATUS and not _final(resp):
            raise _Transient(f"HTTP {resp.status_code}: {_message(resp)}")
        return resp

    @staticmethod
    def _error(method: str, url: str, resp: requests.Response) -> RegistryError:
        name = ""
        with contextlib.suppress(ValueError, AttributeError):  # not JSON, or not an object
            name = str(resp.json().get("error") or "")
        cls = _ERRORS.get(name, RegistryError)
        error = cls(f"registry {method} {url} -> {resp.status_code}: {_message(resp)}")
        if cls is RegistryError:
            error.status_code = resp.status_code
        return error

    @staticmethod
    def _path(*segments: Any) -> str:
        return "/v1/models/" + "/".join(quote(str(s), safe="") for s in segments)

    # ------------------------------------------------------------------ models and versions

    def get_model(self, model: str) -> ModelRecord:
        return ModelRecord.from_json(self._call("GET", self._path(model)))

    def list_models(self, *, q: str = "", page_size: int = 1000) -> list[ModelRecord]:
        """Every model (name containing ``q``), by name: production, canary, latest version and health (the
        list API's fields: no deployments, lock, traffic or settings)."""
        models: list[ModelRecord] = []
        while True:
            params = {"q": q, "limit": page_size, "offset": len(models)}
            out = self._call("GET", "/v1/models", params={k: v for k, v in params.items() if v != ""})
            models += [ModelRecord.from_json(m) for m in out["models"]]
            if not out["models"] or len(models) >= out["total"]:
                return models

    def list_versions(
        self, model: str, *, state: ModelState | str | None = None, limit: int = 1000
    ) -> list[VersionRecord]:
        """The model's versions, newest first (at most ``limit``), in ``state`` if given."""
        params: dict[str, Any] = {"limit": limit}
        if state is not None:
            params["state"] = ModelState(state).value
        out = self._call("GET", self._path(model, "versions"), params=params)
        return [VersionRecord.from_json(v) for v in out["versions"]]

    def production_version(self, model: str) -> int | None:
        """The version in production, or None when there is none or the model is unknown."""
        try:
            return self.get_model(model).production_version
        except NotFound:
            return None

    def register_version(
        self,
        model: str,
        *,
        version: int | None,
        hdfs_uri: str,
        manifest_sha256: str,
        source: str = "",
        reason: str = "",
        context: Context,
    ) -> VersionRecord:
        """Register a version (``None``: the next free number); the same content again is a no-op."""
        body = {
            "version": version,
            "hdfsUri": hdfs_uri,
            "manifestSha256": manifest_sha256,
            "source": source,
            "reason": reason,
            "context": dict(context),
        }
        return VersionRecord.from_json(self._call("POST", self._path(model, "versions"), body=body))

    def get_version(self, model: str, version: int) -> VersionRecord:
        return VersionRecord.from_json(self._call("GET", self._path(model, "versions", version)))

    def update_report(
        self,
        model: str,
        version: int,
        *,
        metrics: dict[str, Any] | None = None,
        validation_report: dict[str, Any] | None = None,
        signatures: dict[str, Any] | None = None,
        context: Context,
    ) -> VersionRecord:
        """Attach validation results (only while the version is registered); None leaves a field unchanged."""
        fields = {"metrics": metrics, "validationReport": validation_report, "signatures": signatures}
        body = {k: v for k, v in fields.items() if v is not None} | {"context": dict(context)}
        return VersionRecord.from_json(self._call("PATCH", self._path(model, "versions", version, "report"), body=body))

    def transition(
        self,
        model: str,
        version: int,
        to: ModelState | str,
        *,
        reason: str = "",
        expected: ModelState | str | None = None,
        details: dict[str, Any] | None = None,
        context: Context,
    ) -> VersionRecord:
        """Move a version to ``to``; with ``expected`` only if it is still in that state (else LostRace)."""
        body = {
            "toState": ModelState(to).value,
            "reason": reason,
            "expectedState": None if expected is None else ModelState(expected).value,
            "details": details or {},
            "context": dict(context),
        }
        return VersionRecord.from_json(
            self._call("POST", self._path(model, "versions", version, "transitions"), body=body)
        )

    # ------------------------------------------------------------------ deployments and health

    def set_deployment(
        self, model: str, target: str, label: str, version: int, *, reason: str = "", context: Context
    ) -> int | None:
        """Point ``label`` on ``target`` at ``version``; returns the version it pointed at before (or None)."""
        body = {"version": version, "reason": reason, "context": dict(context)}
        return self._call("PUT", self._path(model, "deployments", target, label), body=body).get("previousVersion")

    def clear_deployment(self, model: str, target: str, label: str, *, reason: str = "", context: Context) -> None:
        """Remove ``label`` from ``target`` (no-op if absent). DELETE has no body: the lineage goes as query."""
        self._call("DELETE", self._path(model, "deployments", target, label), params=_query(context, reason=reason))

    def record_health(
        self,
        model: str,
        *,
        version: int,
        target: str,
        status: str,
        details: dict[str, Any] | None = None,
        context: Context,
    ) -> HealthRecord:
        body = {"version": version, "target": target, "status": status, "details": details or {}}
        out = self._call("POST", self._path(model, "health"), body=body | {"context": dict(context)})
        return HealthRecord.from_json(out, details=details)

    def record_serving_event(
        self,
        model: str,
        kind: str,
        *,
        version: int | None = None,
        reason: str = "",
        details: dict[str, Any] | None = None,
        context: Context,
    ) -> None:
        """Append a ``serving`` event (which replicas of which pool serve what) or a ``router`` event (a routing
        change) to the model's history."""
        body = {"kind": kind, "version": version, "reason": reason, "details": details or {}}
        self._call("POST", self._path(model, "events"), body=body | {"context": dict(context)})

    def latest_health(self, model: str, *, limit: int = 1, version: int | None = None) -> list[HealthRecord]:
        """The newest health records first (of ``version`` only, if given)."""
        params = {"limit": limit} | ({"version": version} if version is not None else {})
        out = self._call("GET", self._path(model, "health"), params=params)
        return [HealthRecord.from_json(r) for r in out["records"]]

    def model_health(self, model: str) -> str | None:
        """The model's health: its production version's latest status (None: nothing in production, or no check
        of it yet). A candidate's checks never count."""
        return self._call("GET", self._path(model, "health"), params={"limit": 1})["status"]

    # ------------------------------------------------------------------ operations: settings, freeze, rollbacks

    def get_settings(self, model: str) -> ModelSettings:
        """The model's operations settings (NotFound for a model never registered)."""
        return ModelSettings.from_json(self._call("GET", self._path(model, "settings")))

    def set_settings(
        self,
        model: str,
        *,
        auto_rollback_on_failing: bool | None = None,
        require_approval: bool | None = None,
        reason: str,
        context: Context | None = None,
    ) -> ModelSettings:
        """Change the settings given (None: unchanged); the registry records the change with the authenticated
        principal (this hook: the API token) as who did it."""
        body: dict[str, Any] = {"reason": reason, "context": dict(context or {})}
        if auto_rollback_on_failing is not None:
            body["autoRollbackOnFailing"] = auto_rollback_on_failing
        if require_approval is not None:
            body["requireApproval"] = require_approval
        return ModelSettings.from_json(self._call("PATCH", self._path(model, "settings"), body=body))

    def freeze(self, model: str, reason: str, context: Context | None = None) -> ModelSettings:
        """Freeze the model: no new release starts until it is unfrozen (already frozen: unchanged)."""
        body = {"reason": reason, "context": dict(context or {})}
        return ModelSettings.from_json(self._call("POST", self._path(model, "freeze"), body=body))

    def unfreeze(self, model: str, reason: str, context: Context | None = None) -> ModelSettings:
        """Lift the freeze (not frozen: unchanged)."""
        params = _query(context or {}, reason=reason)
        return ModelSettings.from_json(self._call("DELETE", self._path(model, "freeze"), params=params))

    def start_rollback(self, model: str, version: int, *, reason: str, context: Context | None = None) -> str:
        """Ask the registry to start model_rollback to ``version`` (a superseded one); the started run's id.
        RollbackNotStarted if Airflow did not start it, Conflict if ``version`` cannot be rolled back to."""
        body = {"version": version, "reason": reason, "context": dict(context or {})}
        return str(self._call("POST", self._path(model, "rollback"), body=body)["runId"])

    def list_alerts(
        self, model: str | None = None, *, status: str | None = None, limit: int = 100
    ) -> list[AlertRecord]:
        """Alerts Alertmanager delivered (of ``model``, in ``status`` firing/resolved), open ones first."""
        params: dict[str, Any] = {"limit": limit} | ({"status": status} if status else {})
        path = self._path(model, "alerts") if model is not None else "/v1/alerts"
        return [AlertRecord.from_json(a) for a in self._call("GET", path, params=params)["alerts"]]

    def history(self, model: str, *, limit: int = 100, kind: str | None = None) -> list[dict[str, Any]]:
        """The model's history events, newest first, as the API gives them (``GET .../history``; ``kind``
        filters, e.g. ``diagnosis``)."""
        params: dict[str, Any] = {"limit": limit} | ({"kind": kind} if kind else {})
        return list(self._call("GET", self._path(model, "history"), params=params)["events"])

    # ------------------------------------------------------------------ gray releases: traffic split and controls

    def set_traffic(
        self,
        model: str,
        *,
        stable_version: int | None,
        canary_version: int | None,
        canary_weight: int,
        reason: str,
        context: Context,
    ) -> Traffic:
        """Set the split: ``canary_weight`` percent of calls to ``canary_version``, the rest to ``stable_version``.
        A different canary (or None: the release is over) starts afresh: not paused, no pending action."""
        body = {
            "stableVersion": stable_version,
            "canaryVersion": canary_version,
            "canaryWeight": canary_weight,
            "reason": reason,
            "context": dict(context),
        }
        return Traffic.from_json(self._call("PUT", self._path(model, "traffic"), body=body))

    def get_traffic(self, model: str) -> Traffic:
        return Traffic.from_json(self._call("GET", self._path(model, "traffic")))

    def release_control(self, model: str, action: str, *, reason: str, context: Context | None = None) -> Traffic:
        """``pause``, ``resume``, ``promote`` or ``abort`` the release in progress (Conflict if there is none).
        The registry records the authenticated principal (this hook: the API token) as who did it."""
        body = {"action": action, "reason": reason, "context": dict(context or {})}
        return Traffic.from_json(self._call("POST", self._path(model, "release"), body=body))

    def clear_pending_action(self, model: str, *, context: Context, expected: str | None = None) -> None:
        """The pending promote/abort has been carried out: clear it (no-op if none). With ``expected``, only if it
        is still the pending action (else Conflict: an operator asked for another one meanwhile)."""
        params = _query(context, expected=expected or "")
        self._call("DELETE", self._path(model, "release", "pending"), params=params)

    def set_rate_limit(self, model: str, rps: float | None, *, reason: str, context: Context) -> None:
        """Limit the model's calls to ``rps`` requests per second at the router (None: no limit). If the registry
        cannot apply it to the router it answers 503 and stores nothing (retried, then RegistryUnavailable)."""
        body = {"rps": rps, "reason": reason, "context": dict(context)}
        self._call("PUT", self._path(model, "rate-limit"), body=body)

    # ------------------------------------------------------------------ deployment lock (a lease)

    def acquire_lock(self, model: str, *, holder: str, run_id: str, ttl_seconds: float, context: Context) -> Lease:
        """Take the model's deployment lock (LockHeld while another run holds it). A new lease comes with its token
        (``Lease.token``, given only here); the same run and principal asking again extends its lease (no token)."""
        body = {"holder": holder, "runId": run_id, "ttlSeconds": ttl_seconds, "context": dict(context)}
        return Lease.from_json(self._call("POST", self._path(model, "lock"), body=body))

    def renew_lock(self, model: str, *, ttl_seconds: float, context: Context, token: str = "") -> Lease:
        """Extend the lease as its holder: ``token``, or (none) this principal acting for the run that took it.
        Conflict if it expired or another run holds it: the caller must stop changing serving."""
        body = {"ttlSeconds": ttl_seconds, "context": dict(context)}
        return Lease.from_json(self._call("POST", self._path(model, "lock", "renew"), body=body, headers=_lease(token)))

    def release_lock(self, model: str, *, context: Context, token: str = "") -> None:
        """Release the lock as its holder (as ``renew_lock``); no-op if nobody holds it, Conflict if another does."""
        self._call("DELETE", self._path(model, "lock"), params=_query(context), headers=_lease(token))


def _lease(token: str) -> dict[str, str] | None:
    """A lease token goes in a header, never in a URL."""
    return {"X-Lease-Token": token} if token else None


def _query(context: Context, **extra: str) -> dict[str, str]:
    """The lineage as query parameters, for DELETE requests (no body)."""
    keys = ("interface", "dagId", "runId", "taskId")
    return {k: str(context[k]) for k in keys if context.get(k)} | {k: v for k, v in extra.items() if v}


def _final(resp: requests.Response) -> bool:
    """A 5xx the registry answered itself with a typed error that a retry would not change (e.g.
    RollbackNotStarted); RegistryUnavailable, other names and non-JSON answers (proxies) are retried."""
    with contextlib.suppress(ValueError, AttributeError):
        cls = _ERRORS.get(str(resp.json().get("error") or ""))
        return cls is not None and not issubclass(cls, RegistryUnavailable)
    return False


def _message(resp: requests.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500] or resp.reason or ""
    if isinstance(body, dict):
        return str(body.get("message") or body.get("detail") or body)
    return str(body)[:500]
