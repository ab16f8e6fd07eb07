"""The registry's HTTP API (FastAPI, OpenAPI docs at /docs) and its web page.

Mounted in Airflow's api-server at /registry by an AirflowPlugin; also runnable on its own:
`uvicorn --factory tfdeploy.registry.api:create_app --host 127.0.0.1 --port 8090`.
Airflow does not authenticate plugin apps, so the registry checks bearer tokens itself (see auth.py).
"""

# No `from __future__ import annotations`: FastAPI must see the dependency aliases defined in create_app.

import datetime as dt
import logging
import math
import re
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as FPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tfdeploy.core.errors import InvalidRequest, RegistryError, RegistryUnavailable, RollbackNotStarted
from tfdeploy.core.redaction import Redactor

from .auth import (
    COOKIE,
    CSRF_HEADER,
    DEPLOY_DAG,
    ROLLBACK_DAG,
    Authorizer,
    Principal,
    csrf_token,
    require_read,
    require_write,
)
from .config import RegistryConfig
from .metrics import exposition
from .service import HEALTH, Actor, RegistryService, RollbackStarter, RollbackStarterTo

WEB = Path(__file__).parent / "web"
RETRY_AFTER_SECONDS = 5  # the Retry-After of a 503 (database unreachable)
# Input limits: longer strings get a 422 naming the field and the limit (never a database error)
MAX_NAME = 128  # a model name, a serving target (the database's columns)
MAX_TEXT = 4000  # a reason, a description
MAX_URI = 2048  # an HDFS URI, a source path
MAX_BODY_BYTES = 16 * 1024 * 1024  # a request body (validation reports carry golden predictions): else 413
LEASE_HEADER = "X-Lease-Token"  # a lease's token travels in this header, never in a URL
log = logging.getLogger(__name__)


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class Context(_Body):
    """Through which interface and, for the pipeline's service token, for which Airflow run and task. Who acted is
    never taken from the request: it is the authenticated user, or the run's triggering user (looked up in Airflow)
    for the service token."""

    interface: str = Field("rest_api", max_length=32, description="ui, rest_api or cli (the pipeline: pipeline)")
    dag_id: str = Field("", max_length=250)
    run_id: str = Field("", max_length=250)
    task_id: str = Field("", max_length=250)


class ModelIn(_Body):
    name: str = Field(max_length=MAX_NAME)
    description: str = Field("", max_length=MAX_TEXT)
    context: Context = Context()


class VersionIn(_Body):
    version: int | None = Field(None, ge=0, description="omit for the next free integer")
    hdfs_uri: str = Field("", max_length=MAX_URI)
    manifest_sha256: str = Field("", max_length=64)
    source: str = Field("", max_length=MAX_URI)
    signatures: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    validation_report: dict[str, Any] = {}
    reason: str = Field("", max_length=MAX_TEXT)
    context: Context = Context()


class ReportIn(_Body):
    metrics: dict[str, Any] | None = None
    validation_report: dict[str, Any] | None = None
    signatures: dict[str, Any] | None = None
    context: Context = Context()


class TransitionIn(_Body):
    to_state: str = Field(max_length=32)
    reason: str = Field("", max_length=MAX_TEXT)
    expected_state: str | None = Field(
        None, max_length=32, description="refuse with 409 unless the version is in this state"
    )
    details: dict[str, Any] = {}
    context: Context = Context()


class DeploymentIn(_Body):
    version: int = Field(ge=0)
    reason: str = Field("", max_length=MAX_TEXT)
    context: Context = Context()


class HealthIn(_Body):
    version: int = Field(ge=0)
    target: str = Field(max_length=128)
    status: str = Field(max_length=32)
    details: dict[str, Any] = {}
    context: Context = Context()


class ServingEventIn(_Body):
    kind: str = Field(
        max_length=32, description="serving (which replicas of which pool serve what) or router (a routing change)"
    )
    version: int | None = Field(None, ge=0)
    reason: str = Field("", max_length=MAX_TEXT)
    details: dict[str, Any] = {}
    context: Context = Context()


class TrafficIn(_Body):
    stable_version: int | None = Field(ge=0, description="the version in the stable pool (null: none)")
    canary_version: int | None = Field(ge=0, description="the release's candidate (null: no release in progress)")
    canary_weight: int = Field(0, ge=0, le=100, description="percent of calls sent to the canary")
    reason: str = Field("", max_length=MAX_TEXT)
    context: Context = Context()


class ReleaseControlIn(_Body):
    action: Literal["pause", "resume", "promote", "abort"] = Field(
        description="pause / resume the weight changes; promote now / abort: asks the pipeline (last one wins)"
    )
    reason: str = Field(min_length=1, max_length=MAX_TEXT, description="why (required)")
    context: Context = Context()


class RateLimitIn(_Body):
    rps: float | None = Field(gt=0, allow_inf_nan=False, description="requests per second (null: no limit)")
    reason: str = Field("", max_length=MAX_TEXT)
    context: Context = Context()


class SettingsIn(_Body):
    auto_rollback_on_failing: bool | None = Field(
        None, description="start model_rollback when the production version fails (a critical alert, a check)"
    )
    require_approval: bool | None = Field(None, description="a release waits for a person's approval before traffic")
    reason: str = Field(min_length=1, max_length=MAX_TEXT, description="why (required)")
    context: Context = Context()


class FreezeIn(_Body):
    reason: str = Field(min_length=1, max_length=MAX_TEXT, description="why no new release may start (required)")
    context: Context = Context()


class RollbackIn(_Body):
    version: int = Field(ge=0, description="the earlier (superseded) version to serve again")
    reason: str = Field(min_length=3, max_length=MAX_TEXT, description="why (required; recorded by model_rollback too)")
    context: Context = Context()


class AlertmanagerAlert(BaseModel):
    """One alert of Alertmanager's webhook payload (unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore")
    status: Literal["firing", "resolved"]
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    startsAt: str = Field(min_length=1)  # noqa: N815 - Alertmanager's field names
    endsAt: str | None = None  # noqa: N815
    generatorURL: str = ""  # noqa: N815
    fingerprint: str = Field(min_length=1, max_length=128)


class AlertmanagerPayload(BaseModel):
    """Alertmanager's webhook notification (version 4); unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")
    version: str = "4"
    receiver: str = ""
    status: str = ""
    alerts: list[AlertmanagerAlert] = Field(default_factory=list)
    externalURL: str = ""  # noqa: N815


class LockIn(_Body):
    holder: str = Field(max_length=256)
    run_id: str = Field("", max_length=250)
    ttl_seconds: float = 900
    context: Context = Context()


class RenewIn(_Body):
    ttl_seconds: float = 900
    context: Context = Context()


class ContextQuery:
    """The same lineage as `Context`, as query parameters: for DELETE requests, which carry no body."""

    def __init__(
        self,
        interface: Annotated[str, Query(max_length=32)] = "rest_api",
        dag_id: Annotated[str, Query(alias="dagId", max_length=250)] = "",
        run_id: Annotated[str, Query(alias="runId", max_length=250)] = "",
        task_id: Annotated[str, Query(alias="taskId", max_length=250)] = "",
    ) -> None:
        self.context = Context(interface=interface, dag_id=dag_id, run_id=run_id, task_id=task_id)


Name = Annotated[str, FPath(max_length=MAX_NAME, description="the model (TF Serving model name)")]
Target = Annotated[str, FPath(max_length=128, description="a serving target")]
Label = Annotated[str, FPath(max_length=64, description="a version label")]


class HistoryQuery:
    """History filters shared by the per-model and the global history endpoints."""

    def __init__(
        self,
        since: str | None = None,
        until: str | None = None,
        actor: str | None = None,
        kind: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> None:
        self.since, self.until, self.actor, self.kind, self.limit, self.offset = (
            since,
            until,
            actor,
            kind,
            limit,
            offset,
        )

    def filters(self) -> dict[str, Any]:
        return {
            "since": self.since,
            "until": self.until,
            "actor": self.actor,
            "kind": self.kind,
            "limit": self.limit,
            "offset": self.offset,
        }


class _State:
    """The service, created and migrated on first use (mounted apps get no lifespan events)."""

    def __init__(self, config: RegistryConfig) -> None:
        self.config = config
        self._service: RegistryService | None = None
        self._lock = threading.Lock()

    def service(self) -> RegistryService:
        if self._service is None:
            with self._lock:
                if self._service is None:
                    try:
                        service = RegistryService(self.config.db_url)
                        service.migrate()
                    except Exception as exc:  # noqa: BLE001 - any failure here means: no database to answer from
                        log.exception("registry: cannot open or migrate the database")
                        raise RegistryUnavailable(
                            _unreachable(f"cannot open or migrate it: {_describe(exc)}", self.config.db_url)
                        ) from exc
                    self._service = service
        return self._service


def _describe(exc: BaseException) -> str:
    """The error's class and first line, without the SQL, parameters or SQLAlchemy's background link."""
    orig = getattr(exc, "orig", None) or exc
    first = (str(orig).strip().splitlines() or [""])[0]
    package = type(orig).__module__.split(".")[0]
    kind = type(orig).__name__ if package == "builtins" else f"{package}.{type(orig).__name__}"
    return f"{kind}: {first}"[:300]


def _unreachable(cause: str, db_url: str) -> str:
    """The 503 message; never shows credentials (the configured password, or any user:password@ in a URL)."""
    try:
        password = make_url(db_url).password
    except Exception:  # noqa: BLE001 - an unparsable URL: scrub URLs below anyway
        password = None
    if password:
        cause = cause.replace(str(password), "***")
    cause = re.sub(r"(://[^/@\s:]*):[^/@\s]*@", r"\1:***@", cause)
    return f"the registry's database is unreachable ({cause}): nothing was changed; retry later"


def _is_unreachable(exc: DBAPIError) -> bool:
    return isinstance(exc, (OperationalError, InterfaceError)) or bool(exc.connection_invalidated)


# (DAG id, run id) -> {"user": the run's triggering user, "interface": how it was started} or None if there is no
# such run. Given by the Airflow plugin; without it the service token's writes are recorded as the service's.
RunLookup = Callable[[str, str], "dict[str, str] | None"]
USER_INTERFACES = ("ui", "rest_api", "cli")  # what a person's write may say it came through


def _actor_for(ctx: Context, who: Principal, run_lookup: RunLookup | None) -> Actor:
    """Who acted, from the authenticated identity and the Airflow run, never from a name in the request.

    The service token acts for a run: the run must exist in Airflow, and its triggering user (or the scheduler)
    is the actor. A person is the actor; the run fields they send are not recorded (they could name any run)."""
    if who.kind == "service":
        actor, interface = who.name, ctx.interface
        if ctx.run_id and run_lookup is not None:
            run = run_lookup(ctx.dag_id, ctx.run_id)
            if run is None:
                raise InvalidRequest(
                    f"run {ctx.run_id!r} of DAG {ctx.dag_id!r} does not exist in Airflow: the service token records "
                    "changes only for the pipeline's own runs"
                )
            actor, interface = run["user"], run["interface"]
        return Actor(
            actor=actor,
            principal=who.name,
            interface=interface,
            dag_id=ctx.dag_id,
            run_id=ctx.run_id,
            task_id=ctx.task_id,
        )
    interface = ctx.interface if ctx.interface in USER_INTERFACES else "rest_api"
    return Actor(actor=who.name, principal=who.name, interface=interface)


class _BodyTooLarge(HTTPException):
    """A request body over MAX_BODY_BYTES. An HTTPException: FastAPI passes it through when reading the body."""

    def __init__(self, size: str) -> None:
        super().__init__(413, f"request body {size} is over the limit of {MAX_BODY_BYTES} bytes: send less")

    def response(self) -> JSONResponse:
        return JSONResponse({"error": "InvalidRequest", "message": self.detail}, status_code=413)


class _BodyLimit:
    """ASGI middleware: a body over MAX_BODY_BYTES gets a 413, by its Content-Length before it is read, or, a
    chunked body declaring none, as soon as the bytes received pass the limit (never buffered whole)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            await _BodyTooLarge(f"of {int(length)} bytes").response()(scope, receive, send)
            return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _BodyTooLarge("sent without a Content-Length")
            return message

        await self.app(scope, limited, send)


class _SinkFailed(Exception):
    """The rate-limit sink raised: the change was rolled back (answered 503)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


RateLimitSink = Callable[[str, float | None], None]
# model -> {"window": "5m", "pools": {pool: {"requestRate", "errorRate", "p50Ms", "p99Ms"}}} (raises: unavailable)
PerformanceSource = Callable[[str], dict[str, Any]]
# (model, lines) -> {container: [line, ...]}, every replica of both pools
LogsSource = Callable[[str, int], dict[str, list[str]]]
POOLS = ("stable", "canary")  # always in a performance answer, in this order (a pool without data: nulls)
PERFORMANCE_FIELDS = ("requestRate", "errorRate", "p50Ms", "p99Ms")
PERFORMANCE_WINDOW = "5m"
MAX_LOG_LINES = 500
MAX_LOG_LINE_CHARS = 4000
MAX_REASON_CHARS = 500


def _finite(value: Any) -> float | None:
    """A number JSON can carry (NaN and the infinities Prometheus answers become null)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _now() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat() + "Z"


def _unavailable(reason: str, redact: Callable[[str], str], **extra: Any) -> dict[str, Any]:
    return {"available": False, "reason": redact(reason)[:MAX_REASON_CHARS], **extra}


def _performance(name: str, source: PerformanceSource | None, redact: Callable[[str], str]) -> dict[str, Any]:
    """The source's answer for ``name``, normalized: both pools, each field a finite number or null; a source that
    is missing, raises or says it is unavailable gives ``available: false`` with the reason (never an error)."""
    base = {"modelName": name, "window": PERFORMANCE_WINDOW, "at": _now()}
    if source is None:
        return base | _unavailable(
            "no performance source is configured here (the Airflow plugin gives Prometheus)", redact
        )
    try:
        raw = source(name)
    except Exception as exc:  # noqa: BLE001 - whatever the source raised: the answer says why, the page shows it
        log.warning("registry: no live performance of %s: %s: %s", name, type(exc).__name__, exc)
        return base | _unavailable(f"{type(exc).__name__}: {exc}", redact)
    if not isinstance(raw, dict):
        return base | _unavailable(f"the performance source answered {type(raw).__name__}, not an object", redact)
    if raw.get("available") is False:
        return base | _unavailable(str(raw.get("reason") or "the performance source has no data"), redact)
    given_pools = raw.get("pools")
    given: dict[Any, Any] = given_pools if isinstance(given_pools, dict) else {}
    pools: dict[str, dict[str, float | None]] = {}
    for pool in (*POOLS, *sorted(str(p) for p in given if p not in POOLS)):
        given_row = given.get(pool)
        row: dict[Any, Any] = given_row if isinstance(given_row, dict) else {}
        pools[pool] = {field: _finite(row.get(field)) for field in PERFORMANCE_FIELDS}
    return base | {"available": True, "window": str(raw.get("window") or PERFORMANCE_WINDOW), "pools": pools}


def _logs(name: str, lines: int, source: LogsSource | None, redact: Callable[[str], str]) -> dict[str, Any]:
    """The source's log lines for ``name`` (at most ``lines`` per container), each through ``redact`` once more."""
    base = {"modelName": name, "lines": lines, "at": _now()}
    if source is None:
        reason = "no log source is configured here (the Airflow plugin reads the serving containers' logs)"
        return base | _unavailable(reason, redact, containers={})
    try:
        raw = source(name, lines)
    except Exception as exc:  # noqa: BLE001 - whatever the source raised: the answer says why
        log.warning("registry: no replica logs of %s: %s: %s", name, type(exc).__name__, exc)
        return base | _unavailable(f"{type(exc).__name__}: {exc}", redact, containers={})
    if not isinstance(raw, dict):
        return base | _unavailable(
            f"the log source answered {type(raw).__name__}, not an object", redact, containers={}
        )
    containers: dict[str, list[str]] = {}
    for container, got in raw.items():
        rows = got.splitlines() if isinstance(got, str) else [str(line) for line in (got or [])]
        containers[str(container)] = [redact(line)[:MAX_LOG_LINE_CHARS] for line in rows[-lines:]]
    return base | {"available": True, "containers": containers}


def _webhdfs_open(base: str | None, path: str | None) -> str | None:
    """WebHDFS' download URL of an HDFS file (``<base>/webhdfs/v1<path>?op=OPEN``), or None."""
    if not base or not path or not path.startswith("/"):
        return None
    return f"{base.rstrip('/')}/webhdfs/v1{quote(path, safe='/')}?op=OPEN"


def _known_secrets(config: RegistryConfig) -> list[str]:
    """What the registry itself knows to be secret: its API token and its database password."""
    try:
        password = make_url(config.db_url).password
    except Exception:  # noqa: BLE001 - an unparsable URL: no password to know
        password = None
    return [s for s in (config.api_token, str(password) if password else "") if s]


def create_app(
    config: RegistryConfig | None = None,
    *,
    rate_limit_sink: RateLimitSink | None = None,
    rollback_starter: RollbackStarter | None = None,
    rollback_starter_to: RollbackStarterTo | None = None,
    alert_notifier: Callable[[list[dict[str, Any]]], None] | None = None,
    performance_source: PerformanceSource | None = None,
    logs_source: LogsSource | None = None,
    webhdfs_url: str | None = None,
    run_lookup: RunLookup | None = None,
    authorize: Authorizer | None = None,
) -> FastAPI:
    """The registry app. ``rate_limit_sink(model, rps)`` (optional) applies a model's new rate limit (None: no
    limit) to the router; it is called inside the request, before the commit: if it raises, nothing is stored
    and the API answers 503.

    ``rollback_starter(model, reason) -> run id | None`` starts an automatic model_rollback (to the version in
    production before the current one) for a firing critical alert of a model with auto-rollback on;
    ``rollback_starter_to(model, version, reason) -> run id`` starts one to a chosen version (the page's "Roll
    back to version"). Both are given by the composition root (the Airflow plugin); without them the registry
    records the request and answers 502 RollbackNotStarted.

    ``alert_notifier(alerts)`` (optional) is told, after they are recorded, about the alerts of a notification
    that are new or changed status (Alertmanager repeats the others): the plugin mails them. Its failure is
    logged; the alerts stay recorded.

    ``performance_source(model)`` (optional) gives the model's live performance per pool over the last 5 minutes
    (``{"window": "5m", "pools": {"stable": {"requestRate", "errorRate", "p50Ms", "p99Ms"}, "canary": ...}}``; the
    plugin asks Prometheus); it raises when it cannot: ``GET .../performance`` then answers 200 with
    ``available: false`` and the reason. ``logs_source(model, lines)`` (optional) gives the recent log lines of
    every serving replica, ``{container: [line, ...]}``, already redacted (the API redacts them once more).
    ``webhdfs_url`` (optional): WebHDFS' base URL, for the diagnosis bundles' download links.

    ``run_lookup(dag_id, run_id)`` (optional) says who triggered an Airflow run and how (None: no such run): what
    the service token records names that user. ``authorize(user, dag_id)`` (optional; default: Airflow's auth
    manager) decides whether an Airflow user may make writes that belong to that DAG (auth.py)."""
    config = config or RegistryConfig.from_env()
    redact = Redactor(_known_secrets(config)).redact_text
    state = _State(config)
    render_metrics = exposition(lambda: state.service().metrics_snapshot(), HEALTH)
    app = FastAPI(
        title="tfdeploy model registry",
        version="1",
        description="Versions, states, lineage, deployments, health, locks and history of TensorFlow models.",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served below, behind the reads' policy
    )
    app.state.registry = state

    def _actor(ctx: Context, who: Principal) -> Actor:
        return _actor_for(ctx, who, run_lookup)

    app.add_middleware(_BodyLimit)

    @app.exception_handler(_BodyTooLarge)
    async def _body_too_large(_request: Request, exc: _BodyTooLarge) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RegistryError)
    async def _registry_error(_request: Request, exc: RegistryError) -> JSONResponse:
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if isinstance(exc, RegistryUnavailable) else None
        return JSONResponse(
            {"error": type(exc).__name__, "message": exc.message}, status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(DBAPIError)
    async def _database_error(request: Request, exc: DBAPIError) -> JSONResponse:
        """The database cannot be reached (down, refused, connection dropped, locked past the busy timeout):
        503, which clients retry. Other database errors stay 500s (a bug, not an outage)."""
        if not _is_unreachable(exc):
            raise exc
        log.warning("registry: database unreachable on %s %s: %s", request.method, request.url.path, _describe(exc))
        return await _registry_error(request, RegistryUnavailable(_unreachable(_describe(exc), config.db_url)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(
            {"error": "InvalidRequest", "message": f"invalid request: {problems}", "detail": exc.errors()},
            status_code=422,
        )

    def svc() -> RegistryService:
        return state.service()

    Svc = Annotated[RegistryService, Depends(svc)]
    Reader = Annotated[Principal, Depends(require_read(config))]
    Writer = Annotated[Principal, Depends(require_write(config, DEPLOY_DAG, authorize))]
    RollbackWriter = Annotated[Principal, Depends(require_write(config, ROLLBACK_DAG, authorize))]
    v1 = APIRouter(prefix="/v1")

    @v1.get("/models", summary="Models with the version in production, the canary and health")
    def list_models(
        service: Svc,
        _: Reader,
        q: str = "",
        limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> JSONResponse:
        # plain JSON types already: skip FastAPI's re-encoding pass (this list can hold thousands of models)
        return JSONResponse(service.list_models(limit=limit, offset=offset, q=q))

    @v1.post("/models", status_code=201, summary="Create a model (idempotent)")
    def create_model(body: ModelIn, service: Svc, who: Writer) -> dict:
        return service.create_model(body.name, _actor(body.context, who), body.description)

    @v1.get("/models/{name}", summary="Model detail: production, canary, deployments, lock")
    def get_model(name: Name, service: Svc, _: Reader) -> dict:
        return service.get_model(name)

    @v1.get("/models/{name}/versions", summary="Versions, newest first, filtered by state")
    def list_versions(
        name: Name,
        service: Svc,
        _: Reader,
        state: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        return service.list_versions(name, state=state, limit=limit, offset=offset)

    @v1.post("/models/{name}/versions", summary="Register a version (same content again: no-op)")
    def register_version(name: Name, body: VersionIn, service: Svc, who: Writer) -> JSONResponse:
        out, created = service.register_version(
            name,
            _actor(body.context, who),
            version=body.version,
            hdfs_uri=body.hdfs_uri,
            manifest_sha256=body.manifest_sha256,
            source=body.source,
            signatures=body.signatures,
            metrics=body.metrics,
            validation_report=body.validation_report,
            reason=body.reason,
        )
        return JSONResponse(out, status_code=201 if created else 200)

    @v1.get("/models/{name}/versions/{version}", summary="Version detail with its validation report")
    def get_version(name: Name, version: int, service: Svc, _: Reader) -> dict:
        return service.get_version(name, version)

    @v1.patch("/models/{name}/versions/{version}/report", summary="Attach metrics and validation report")
    def update_report(name: Name, version: int, body: ReportIn, service: Svc, who: Writer) -> dict:
        return service.update_report(
            name,
            version,
            _actor(body.context, who),
            metrics=body.metrics,
            validation_report=body.validation_report,
            signatures=body.signatures,
        )

    @v1.post("/models/{name}/versions/{version}/transitions", summary="Change a version's state")
    def transition(name: Name, version: int, body: TransitionIn, service: Svc, who: Writer) -> dict:
        return service.transition(
            name,
            version,
            body.to_state,
            _actor(body.context, who),
            reason=body.reason,
            expected_state=body.expected_state,
            details=body.details,
        )

    @v1.get("/models/{name}/history", summary="A model's history, newest first")
    def model_history(name: Name, service: Svc, _: Reader, q: Annotated[HistoryQuery, Depends()]) -> dict:
        return service.history(model=name, **q.filters())

    @v1.get("/history", summary="History across models, filtered by model, time range and actor")
    def history(service: Svc, _: Reader, q: Annotated[HistoryQuery, Depends()], model: str | None = None) -> dict:
        return service.history(model=model, **q.filters())

    @v1.get("/models/{name}/production", summary="Which version was in production at a time, and who put it there")
    def production_at(name: Name, at: str, service: Svc, _: Reader) -> dict:
        return service.production_at(name, at)

    @v1.get("/models/{name}/health", summary="Latest health records; status: the production version's health")
    def get_health(
        name: Name,
        service: Svc,
        _: Reader,
        version: Annotated[int | None, Query(ge=0, description="only this version's records")] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    ) -> dict:
        return service.health(name, version=version, limit=limit)

    @v1.post("/models/{name}/health", status_code=201, summary="Record a health check result")
    def record_health(name: Name, body: HealthIn, service: Svc, who: Writer) -> dict:
        return service.record_health(
            name, body.version, body.target, body.status, _actor(body.context, who), body.details
        )

    @v1.post("/models/{name}/events", status_code=201, summary="Record a serving or router change in the history")
    def record_serving_event(name: Name, body: ServingEventIn, service: Svc, who: Writer) -> dict:
        return service.record_serving_event(
            name, body.kind, _actor(body.context, who), version=body.version, reason=body.reason, details=body.details
        )

    @v1.put("/models/{name}/deployments/{target}/{label}", summary="Point a label on a serving target at a version")
    def set_deployment(name: Name, target: Target, label: Label, body: DeploymentIn, service: Svc, who: Writer) -> dict:
        return service.set_deployment(name, target, label, body.version, _actor(body.context, who), body.reason)

    @v1.delete("/models/{name}/deployments/{target}/{label}", status_code=204, summary="Remove a label")
    def clear_deployment(
        name: Name,
        target: Target,
        label: Label,
        service: Svc,
        who: Writer,
        q: Annotated[ContextQuery, Depends()],
        reason: str = "",
    ) -> None:
        service.clear_deployment(name, target, label, _actor(q.context, who), reason)

    @v1.get("/models/{name}/traffic", summary="The traffic split: stable and canary versions and weights, controls")
    def get_traffic(name: Name, service: Svc, _: Reader) -> dict:
        return service.traffic(name)

    @v1.put("/models/{name}/traffic", summary="Set the traffic split of a gray release")
    def set_traffic(name: Name, body: TrafficIn, service: Svc, who: Writer) -> dict:
        return service.set_traffic(
            name,
            _actor(body.context, who),
            stable_version=body.stable_version,
            canary_version=body.canary_version,
            canary_weight=body.canary_weight,
            reason=body.reason,
        )

    @v1.post("/models/{name}/release", summary="Pause, resume, promote now or abort the release in progress")
    def release_control(name: Name, body: ReleaseControlIn, service: Svc, who: Writer) -> dict:
        return service.release_control(name, body.action, _actor(body.context, who), reason=body.reason)

    @v1.delete("/models/{name}/release/pending", status_code=204, summary="Clear the pending promote/abort")
    def clear_pending_action(
        name: Name,
        service: Svc,
        who: Writer,
        q: Annotated[ContextQuery, Depends()],
        expected: Annotated[
            Literal["promote", "abort"] | None,
            Query(description="clear it only if this is still the pending action (else 409)"),
        ] = None,
    ) -> None:
        service.clear_pending_action(name, _actor(q.context, who), expected=expected)

    @v1.put("/models/{name}/rate-limit", summary="Set the model's rate limit (requests per second; null: none)")
    def set_rate_limit(name: Name, body: RateLimitIn, service: Svc, who: Writer) -> JSONResponse:
        def apply(model: str, rps: float | None) -> None:
            assert rate_limit_sink is not None
            try:
                rate_limit_sink(model, rps)
            except Exception as exc:  # noqa: BLE001 - whatever the sink raised: roll back, answer 503
                raise _SinkFailed(exc) from exc

        try:
            out = service.set_rate_limit(
                name,
                body.rps,
                _actor(body.context, who),
                reason=body.reason,
                apply=apply if rate_limit_sink is not None else None,
            )
        except _SinkFailed as failed:
            cause = f"{type(failed.cause).__name__}: {failed.cause}"[:300]
            log.warning("registry: the rate limit of %s was not applied to the router: %s", name, cause)
            return JSONResponse(
                {
                    "error": type(failed.cause).__name__,
                    "message": f"the rate limit of {name} could not be applied to the router ({cause}): nothing "
                    "was changed; retry later",
                },
                status_code=503,
                headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        return JSONResponse(out)

    @v1.get("/models/{name}/settings", summary="Operations settings: auto-rollback, approval, freeze")
    def get_settings(name: Name, service: Svc, _: Reader) -> dict:
        return service.settings(name)

    @v1.patch("/models/{name}/settings", summary="Change auto-rollback on failing and/or require approval")
    def set_settings(name: Name, body: SettingsIn, service: Svc, who: Writer) -> dict:
        return service.set_settings(
            name,
            _actor(body.context, who),
            auto_rollback_on_failing=body.auto_rollback_on_failing,
            require_approval=body.require_approval,
            reason=body.reason,
        )

    @v1.post("/models/{name}/freeze", summary="Freeze the model: no new release starts until it is unfrozen")
    def freeze(name: Name, body: FreezeIn, service: Svc, who: Writer) -> dict:
        return service.freeze(name, _actor(body.context, who), reason=body.reason)

    @v1.delete("/models/{name}/freeze", summary="Lift the freeze")
    def unfreeze(
        name: Name,
        service: Svc,
        who: Writer,
        q: Annotated[ContextQuery, Depends()],
        reason: Annotated[str, Query(min_length=1, description="why (required)")],
    ) -> dict:
        return service.unfreeze(name, _actor(q.context, who), reason=reason)

    @v1.post(
        "/models/{name}/rollback", status_code=202, summary="Start model_rollback to an earlier (superseded) version"
    )
    def rollback(name: Name, body: RollbackIn, service: Svc, who: RollbackWriter) -> dict:
        return service.start_rollback(
            name, body.version, _actor(body.context, who), reason=body.reason, starter=rollback_starter_to
        )

    @v1.post("/alerts", summary="Alertmanager's webhook: record alerts; a critical one may start an auto-rollback")
    def receive_alerts(body: AlertmanagerPayload, service: Svc, who: Writer) -> JSONResponse:
        alerts = [
            {
                "fingerprint": a.fingerprint,
                "status": a.status,
                "labels": a.labels,
                "annotations": a.annotations,
                "starts_at": a.startsAt,
                "ends_at": a.endsAt,
                "generator_url": a.generatorURL,
            }
            for a in body.alerts
        ]
        ctx = Actor(actor=who.name, principal=who.name, interface="rest_api")
        results, failures = service.receive_alerts(alerts, ctx, receiver=body.receiver, starter=rollback_starter)
        out = {"received": len(results), "alerts": results}
        news = [r for r in results if r.get("recorded") in ("new", "changed")]
        if alert_notifier is not None and news:
            try:
                alert_notifier(news)
            except Exception as exc:  # noqa: BLE001 - a mail that cannot be sent must not lose the alert
                log.error("registry: alerts recorded, but not notified: %s", exc)
        if failures:
            log.warning("registry: alerts recorded, but an automatic rollback was not started: %s", failures)
            message = "; ".join(failures)
            error = {"error": RollbackNotStarted.__name__, "message": message}
            return JSONResponse(error | out, status_code=RollbackNotStarted.status_code)
        return JSONResponse(out)

    @v1.get("/alerts", summary="Alerts, open (firing) ones first; filter by model and status")
    def list_alerts(
        service: Svc,
        _: Reader,
        model: str | None = None,
        status: Literal["firing", "resolved"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        return service.list_alerts(model=model, status=status, limit=limit, offset=offset)

    @v1.get("/models/{name}/alerts", summary="A model's alerts, open (firing) ones first")
    def model_alerts(
        name: Name,
        service: Svc,
        _: Reader,
        status: Literal["firing", "resolved"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        return service.model_alerts(name, status=status, limit=limit, offset=offset)

    @v1.get(
        "/models/{name}/performance",
        summary="Live performance per pool (last 5 minutes): request rate, error rate, p50 and p99 latency",
    )
    def performance(name: Name, service: Svc, _: Reader) -> JSONResponse:
        service.require_model(name)
        return JSONResponse(_performance(name, performance_source, redact))

    @v1.get(
        "/models/{name}/logs",
        summary="The serving replicas' recent log lines, redacted (needs write access: logs may hold data)",
    )
    def replica_logs(
        name: Name,
        service: Svc,
        _: Writer,
        lines: Annotated[int, Query(ge=1, le=MAX_LOG_LINES, description="at most this many per container")] = 50,
    ) -> JSONResponse:
        service.require_model(name)
        return JSONResponse(_logs(name, lines, logs_source, redact))

    @v1.get("/models/{name}/diagnostics", summary="The model's diagnosis bundles, newest first, with download links")
    def diagnostics(
        name: Name,
        service: Svc,
        _: Reader,
        limit: Annotated[int, Query(ge=1, le=200)] = 20,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> dict:
        out = service.diagnoses(name, limit=limit, offset=offset)
        for bundle in out["bundles"]:
            bundle["downloadUrl"] = _webhdfs_open(webhdfs_url, bundle["path"])
        return out

    @v1.post("/models/{name}/lock", summary="Acquire the model's deployment lock (a lease; its token only here)")
    def acquire_lock(name: Name, body: LockIn, service: Svc, who: Writer) -> dict:
        return service.acquire_lock(
            name, body.holder, _actor(body.context, who), ttl_seconds=body.ttl_seconds, run_id=body.run_id
        )

    @v1.post("/models/{name}/lock/renew", summary="Extend the lease (its holder: the token, or the same run)")
    def renew_lock(
        name: Name,
        body: RenewIn,
        service: Svc,
        who: Writer,
        token: Annotated[str, Header(alias=LEASE_HEADER, max_length=128)] = "",
    ) -> dict:
        return service.renew_lock(name, token, _actor(body.context, who), ttl_seconds=body.ttl_seconds)

    @v1.delete("/models/{name}/lock", status_code=204, summary="Release the lock (its holder: the token, or the run)")
    def release_lock(
        name: Name,
        request: Request,
        service: Svc,
        who: Writer,
        q: Annotated[ContextQuery, Depends()],
        token: Annotated[str, Header(alias=LEASE_HEADER, max_length=128)] = "",
    ) -> None:
        if "token" in request.query_params:
            raise InvalidRequest(
                f"a lease token never goes in a URL (logs keep URLs): send it as the {LEASE_HEADER} header"
            )
        service.release_lock(name, token, _actor(q.context, who))

    app.include_router(v1)

    @app.get("/health", include_in_schema=False)
    def health() -> dict:
        return {"status": "ok"}

    metrics_dependencies = [] if config.public_metrics else [Depends(require_read(config))]

    @app.get(
        "/metrics",
        summary="Prometheus metrics: versions per state, deployments, rollbacks, lock waits, state ages, health",
        dependencies=metrics_dependencies,
        response_class=Response,
    )
    def metrics() -> Response:
        return Response(render_metrics(), media_type=CONTENT_TYPE_PLAIN_0_0_4)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(WEB / "index.html", media_type="text/html")

    @app.get("/config.json", include_in_schema=False)
    def page_config(request: Request) -> dict:
        """The page's settings; with the UI's cookie, the CSRF token its writes send (same-origin pages only can
        read this answer: the registry sends no CORS headers)."""
        cookie = request.cookies.get(COOKIE, "")
        return {
            "airflowUrl": config.airflow_url,
            "csrfHeader": CSRF_HEADER,
            "csrfToken": csrf_token(config, cookie) if cookie else "",
        }

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(require_read(config))])
    def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False, dependencies=[Depends(require_read(config))])
    def docs(request: Request) -> Response:
        from fastapi.openapi.docs import get_swagger_ui_html

        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="tfdeploy model registry")

    return app
