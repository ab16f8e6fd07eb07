"""Diagnosis bundles: one archive of everything that tells why a model misbehaves on a serving target.

A bundle (``<root>/<model>/<UTC timestamp>-<run_id>.tar.gz`` on HDFS, root ``/diagnostics``; inside, one
directory named like the file) holds:

    README.txt, manifest.json                     what was collected, and each part that could not be and why
    pools/<pool>/models.config                    the pool's models.config as on disk
    pools/<pool>/<container>/logs.txt             each replica's container log tail (last 200 lines)
    pools/<pool>/<container>/inspect.json         ``docker inspect`` (Config.Env values redacted)
    pools/<pool>/<container>/model_status.json    the model as that replica serves it: every version's state
    router/weights.json, candidates.json, limits.json   the router's maps (as the running router has them)
    router/servers.json                           every server of both pools' backends: state, weight, checks
    registry/model.json, registry/history.json    the registry's model record and its history (newest first)
    airflow/task_log.json                         links to the failing task's log (UI and REST API)
    prometheus/<series>.json                      the model's series over the last 30 minutes at 15 s steps:
                                                  request rate by status, latency histogram rate, ``up`` of
                                                  its replicas (Prometheus unreachable: prometheus/NOTE.txt)

Collection is best effort and bounded: each part runs with its own timeout (and the hooks' own ones) under an
overall deadline; a part that fails or times out is listed in the manifest with the reason, never raised.
Only storing the archive can fail the collection (there is nothing to hand back without it).

Nothing secret leaves: every text goes through a :class:`~tfdeploy.core.redaction.Redactor` before it is
written into the archive. It knows the values of the configured secrets (:func:`configured_secrets`: every
secret-named environment variable such as the Fernet key, the JWT secret and the registry API token, the
Airflow password, every ``AIRFLOW_CONN_*`` Connection's URI, password and secret extras, the Connections this
collection uses, and the files of the state's ``secrets/`` directory) and the patterns of secrets it cannot
know (``Authorization``/``Bearer`` credentials, JWTs, ``password=...``, a URI's password).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import os
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, is_dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from tfdeploy.core.errors import PrometheusError
from tfdeploy.core.names import validate_model_name
from tfdeploy.core.redaction import REDACTED, SECRET_KEY, Redactor
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.hooks.prometheus import PrometheusHook
from tfdeploy.hooks.registry import RegistryHook
from tfdeploy.hooks.router import RouterHook
from tfdeploy.hooks.serving_host import ServingHostHook
from tfdeploy.hooks.tfserving import TFServingHook
from tfdeploy.services.serving_target import ServingTargetService
from tfdeploy.services.targets import POOLS, get_target
from tfdeploy.settings import get_settings

log = logging.getLogger(__name__)

ROOT = "/diagnostics"
LOG_TAIL = 200
WINDOW_S = 30 * 60
STEP_S = 15
# A part's answer must come within this; the collection as a whole within TOTAL_TIMEOUT_S (the parts left
# when it passes are listed as not collected).
PART_TIMEOUT_S = 30.0
TOTAL_TIMEOUT_S = 180.0
# Connections whose passwords and secret extras are redacted besides the AIRFLOW_CONN_* ones.
CONNECTIONS = (
    "tfdeploy_registry",
    "webhdfs_default",
    "prometheus_default",
    "smtp_default",
    "serving_host_local",
    "router_local",
    "tfserving_local",
    "tfserving_local_canary",
)
# Environment variables whose name says they hold a secret.
_SECRET_ENV = re.compile(r"PASSWORD|PASSWD|TOKEN|SECRET|FERNET|JWT|CREDENTIAL|PRIVATE_KEY|API_KEY", re.IGNORECASE)
# ... except settings about a secret that are not one (a JWT's lifetime, a command that prints the key, a path).
_NOT_SECRET_ENV = re.compile(
    r"EXPIR|TIME|LEEWAY|ALGORITHM|AUDIENCE|ISSUER|_CMD$|_FILE$|_PATH$|_DIR$|LENGTH|TTL|URL$|_ROTATION", re.IGNORECASE
)
_NOT_SECRET_VALUE = re.compile(r"(?i)\d+(\.\d+)?|true|false|none|null")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def prometheus_queries(model: str, containers: Iterable[str]) -> dict[str, str]:
    """The model's series (PromQL) by part name: request rate by pool and status, latency histogram rate by pool
    and bucket (TF Serving's families, as the stack's Prometheus labels them: include/monitoring/rules.yml), and
    ``up`` of the target's replica containers."""
    name = model.replace("\\", "").replace('"', "")
    names = "|".join(re.escape(c).replace("\\", "\\\\") for c in containers) or "none"
    return {
        "request_rate_by_status": (
            f'sum by (pool, status) (rate(:tensorflow:serving:request_count{{model_name="{name}"}}[1m]))'
        ),
        "latency_histogram_rate": (
            f'sum by (pool, le) (rate(:tensorflow:serving:request_latency_bucket{{model_name="{name}"}}[1m]))'
        ),
        "replicas_up": f'up{{container=~"{names}"}}',
    }


# --------------------------------------------------------------------------- secrets


def _connection_secrets(value: str) -> list[str]:
    """An ``AIRFLOW_CONN_*`` value (URI or JSON): the value itself, its password and its secret extras."""
    out = [value]
    try:
        data = json.loads(value)
    except ValueError:
        data = None
    if isinstance(data, dict):
        out.append(str(data.get("password") or ""))
        extra = data.get("extra")
        if isinstance(extra, str):
            try:
                extra = json.loads(extra)
            except ValueError:
                extra = {}
        if isinstance(extra, dict):
            out += [str(v) for k, v in extra.items() if SECRET_KEY.search(str(k)) and isinstance(v, str | int)]
        return out
    try:
        password = urlsplit(value).password
    except ValueError:
        password = None
    if password:
        out += [password, unquote(password)]
    return out


def configured_secrets(
    environ: Mapping[str, str] | None = None,
    *,
    secrets_dir: Path | None = None,
    connection_ids: Iterable[str] = CONNECTIONS,
    extra: Iterable[str] = (),
) -> list[str]:
    """Every secret value configured here (see the module docstring); ``environ`` defaults to ``os.environ``,
    ``secrets_dir`` to the state's ``secrets/``; ``connection_ids`` are looked up through Airflow (their
    passwords and secret extras), skipped when Airflow cannot give them."""
    env = os.environ if environ is None else environ
    settings = get_settings()
    found: list[str] = [settings.airflow_password, *extra]
    for name, value in env.items():
        if name.startswith("AIRFLOW_CONN_"):
            found += _connection_secrets(value)
        elif (
            _SECRET_ENV.search(name)
            and not _NOT_SECRET_ENV.search(name)
            and not _NOT_SECRET_VALUE.fullmatch(value.strip())
        ):
            found.append(value)
    directory = settings.state_dir / "secrets" if secrets_dir is None else secrets_dir
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            try:
                if path.is_file() and path.stat().st_size <= 65536:
                    found.append(path.read_text(errors="replace").strip())
            except OSError as exc:
                log.warning("cannot read %s for redaction: %s", path, exc)
    for conn_id in connection_ids:
        found += _airflow_connection_secrets(conn_id)
    return [s for s in dict.fromkeys(v.strip() for v in found if v) if s and s != REDACTED]


def _airflow_connection_secrets(conn_id: str) -> list[str]:
    from airflow.sdk.bases.hook import BaseHook

    try:
        conn = BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - not defined here (or no Airflow to ask): nothing of it to redact
        return []
    extra = conn.extra_dejson if isinstance(conn.extra_dejson, dict) else {}
    secret_extras = [str(v) for k, v in extra.items() if SECRET_KEY.search(str(k)) and isinstance(v, str | int)]
    return [str(conn.password or ""), *secret_extras]


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TaskRef:
    """The task whose log the bundle links to (the failing one, as the caller knows it)."""

    dag_id: str
    run_id: str
    task_id: str
    try_number: int | None = None
    map_index: int = -1

    def links(self, base_url: str) -> dict[str, Any]:
        """The task's log in the Airflow UI (the task instance page opens on its log) and over the REST API."""
        base = base_url.rstrip("/")
        dag, run, task = (quote(x, safe="") for x in (self.dag_id, self.run_id, self.task_id))
        ui = f"{base}/dags/{dag}/runs/{run}/tasks/{task}" + (f"/mapped/{self.map_index}" if self.map_index >= 0 else "")
        if self.try_number:
            ui += f"?try_number={self.try_number}"
        api = f"{base}/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}/logs/{self.try_number or 1}"
        if self.map_index >= 0:
            api += f"?map_index={self.map_index}"
        return {**asdict(self), "ui": ui, "api": api}


@dataclass(frozen=True)
class DiagnosisBundle:
    """A stored bundle: its HDFS path and URI, the parts in it and those missing (part -> why)."""

    model: str
    path: str
    uri: str
    parts: list[str]
    missing: dict[str, str]
    size: int
    top: str = ""

    def summary(self) -> dict[str, Any]:
        """What a task hands on (XCom) and the registry records: small."""
        return {"path": self.path, "parts": list(self.parts), "missing": dict(self.missing)}


# --------------------------------------------------------------------------- collection


def _bounded(fn: Callable[[], Any], timeout_s: float) -> Any:
    """``fn()`` in a daemon thread, waited for at most ``timeout_s`` (TimeoutError then: the thread is left to
    end on its own hook timeout, never waited for again)."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="diagnosis-part", daemon=True)
    thread.start()
    thread.join(max(0.0, timeout_s))
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _jsonable(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(getattr(value, "value", value))


def redact_inspect(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``docker inspect`` output with every ``Config.Env`` value replaced (names kept)."""
    out = json.loads(json.dumps(attrs, default=str))
    config = out.get("Config") or {}
    if isinstance(config.get("Env"), list):
        config["Env"] = [f"{str(e).split('=', 1)[0]}={REDACTED}" for e in config["Env"]]
    return out


class _Bundle:
    """The archive being built: every part redacted on the way in; what could not be collected, and why."""

    def __init__(self, redactor: Redactor, deadline: float, part_timeout_s: float) -> None:
        self.redactor = redactor
        self.deadline = deadline
        self.part_timeout_s = part_timeout_s
        self.files: dict[str, bytes] = {}
        self.missing: dict[str, str] = {}

    def add(self, name: str, content: Any) -> None:
        if isinstance(content, str):
            text = self.redactor.redact_text(content)
        else:  # JSON-like: redacted as data (stays valid JSON), then the known values once more on the text
            text = self.redactor.redact_known(
                json.dumps(self.redactor.redact_data(_jsonable(content)), indent=2, sort_keys=True)
            )
            text += "\n"
        self.files[name] = text.encode("utf-8")

    def miss(self, name: str, why: str) -> None:
        self.missing[name] = self.redactor.redact_text(why)[:1000]
        log.warning("diagnosis part %s not collected: %s", name, self.missing[name])

    def collect(self, name: str, fn: Callable[[], Any]) -> bool:
        """Run ``fn`` bounded and add its result as part ``name``; on failure record why. True if added."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            self.miss(name, "not collected: the collection's overall deadline passed")
            return False
        try:
            content = _bounded(fn, min(self.part_timeout_s, left))
        except TimeoutError as exc:
            self.miss(name, f"timed out: {exc}")
            return False
        except Exception as exc:  # noqa: BLE001 - best effort per part: recorded, never raised
            self.miss(name, f"{type(exc).__name__}: {exc}")
            return False
        self.add(name, content)
        return True

    def tar_gz(self, top: str, mtime: float) -> bytes:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            for name, data in self.files.items():
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
                tar.addfile(info, io.BytesIO(data))
        return buffer.getvalue()


class DiagnosisService:
    """Collects a model's diagnosis bundle on one serving target and stores it on HDFS (module docstring).

    :param target: the serving target's name (``services.targets``): both its pools are collected.
    :param pools: the pools' services by pool name (default: built from the target, with short timeouts).
    :param registry: the registry's hook (default: Connection ``tfdeploy_registry``, few retries).
    :param prometheus: Prometheus' hook (default: Connection ``prometheus_default``).
    :param store: the HDFS hook the archive is written through (default: Connection ``webhdfs_default``).
    :param redactor: what every text goes through (default: one knowing :func:`configured_secrets`).
    :param airflow_base_url: where the Airflow UI and REST API are (default: the settings' ``airflow_url``).
    :param root: the HDFS directory of all bundles.
    :param part_timeout_s: the longest one part may take.
    :param total_timeout_s: the longest the collection (before storing) may take.
    """

    def __init__(
        self,
        target: str = "local",
        *,
        pools: Mapping[str, ServingTargetService] | None = None,
        registry: RegistryHook | None = None,
        prometheus: PrometheusHook | None = None,
        store: ModelStoreHook | None = None,
        redactor: Redactor | None = None,
        airflow_base_url: str | None = None,
        root: str = ROOT,
        log_tail: int = LOG_TAIL,
        window_s: float = WINDOW_S,
        step_s: float = STEP_S,
        part_timeout_s: float = PART_TIMEOUT_S,
        total_timeout_s: float = TOTAL_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if part_timeout_s <= 0 or total_timeout_s <= 0:
            raise ValueError("part_timeout_s and total_timeout_s must be positive")
        self.target = target
        self._pools = dict(pools) if pools is not None else None
        self._registry = registry
        self._prometheus = prometheus
        self._store = store
        self._redactor = redactor
        self.airflow_base_url = airflow_base_url or get_settings().airflow_url
        self.root = root.rstrip("/") or "/"
        self.log_tail = log_tail
        self.window_s = window_s
        self.step_s = step_s
        self.part_timeout_s = part_timeout_s
        self.total_timeout_s = total_timeout_s
        self.clock = clock

    @cached_property
    def pools(self) -> dict[str, ServingTargetService]:
        if self._pools is not None:
            return self._pools
        out = {}
        timeout = max(1, int(self.part_timeout_s / 2))
        for pool in POOLS:
            target = get_target(self.target, pool=pool)
            out[pool] = ServingTargetService(
                target,
                hosts=[target.serving_host(conn, docker_timeout=timeout) for conn in target.hosts],
                serving=TFServingHook(target.tfserving_conn_id, timeout=timeout),
                router=RouterHook(target.router_conn_id, timeout=min(5.0, timeout)),
            )
        return out

    @cached_property
    def registry(self) -> RegistryHook:
        return self._registry or RegistryHook(max_attempts=2, max_elapsed=self.part_timeout_s / 2)

    @cached_property
    def prometheus(self) -> PrometheusHook:
        return self._prometheus or PrometheusHook(timeout=min(10.0, self.part_timeout_s / 2))

    @cached_property
    def store(self) -> ModelStoreHook:
        return self._store or ModelStoreHook(base_path=self.root)

    @cached_property
    def redactor(self) -> Redactor:
        return self._redactor or Redactor(configured_secrets())

    def path_for(self, model: str, run_id: str, at: dt.datetime) -> str:
        """``<root>/<model>/<UTC timestamp>-<run_id>.tar.gz`` (run_id's characters HDFS refuses, such as ``:``,
        replaced by ``_``)."""
        stamp = at.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        safe_run = _SAFE_NAME.sub("_", run_id).strip("._") or "run"
        return f"{self.root}/{validate_model_name(model)}/{stamp}-{safe_run}.tar.gz"

    def collect(self, model: str, *, run_id: str, reason: str = "", task: TaskRef | None = None) -> DiagnosisBundle:
        """Collect ``model``'s bundle, store it on HDFS atomically and return where (module docstring). Raises
        only when the archive cannot be stored; a part that cannot be collected is listed as missing."""
        model = validate_model_name(model)
        now = dt.datetime.fromtimestamp(self.clock(), dt.UTC)
        path = self.path_for(model, run_id, now)
        top = path.rsplit("/", 1)[-1].removesuffix(".tar.gz")
        bundle = _Bundle(self.redactor, time.monotonic() + self.total_timeout_s, self.part_timeout_s)
        containers = self._collect_pools(bundle, model)
        self._collect_router(bundle)
        bundle.collect("registry/model.json", lambda: self.registry.get_model(model))
        bundle.collect("registry/history.json", lambda: self.registry.history(model, limit=200))
        if task is not None:
            bundle.add("airflow/task_log.json", task.links(self.airflow_base_url))
        else:
            bundle.miss("airflow/task_log.json", "no failing task was named by the caller")
        self._collect_prometheus(bundle, model, containers, now.timestamp())
        parts = sorted([*bundle.files, "manifest.json", "README.txt"])
        manifest = {
            "model": model,
            "servingTarget": self.target,
            "createdAt": now.isoformat().replace("+00:00", "Z"),
            "runId": run_id,
            "reason": reason,
            "path": path,
            "task": task.links(self.airflow_base_url) if task else None,
            "parts": parts,
            "missing": dict(sorted(bundle.missing.items())),
            "redaction": f"values of {len(self.redactor)} configured secrets and secret patterns -> {REDACTED}",
        }
        bundle.add("manifest.json", manifest)
        bundle.add("README.txt", _readme(manifest))
        data = bundle.tar_gz(top, now.timestamp())
        uri = _bounded(lambda: self.store.put_file(path, data), max(self.part_timeout_s, 60.0))
        log.info(
            "diagnosis bundle of %s: %s (%d bytes, %d parts, %d missing)",
            model,
            uri,
            len(data),
            len(parts),
            len(bundle.missing),
        )
        return DiagnosisBundle(model, path, uri, parts, dict(bundle.missing), len(data), top)

    # ------------------------------------------------------------------ parts

    def _collect_pools(self, bundle: _Bundle, model: str) -> list[str]:
        """Each pool's models.config and, per replica, its logs, inspect and model status. Returns the containers."""
        containers: list[str] = []
        for pool, service in self.pools.items():
            host = service.host
            bundle.collect(f"pools/{pool}/models.config", partial(_config_text, host))
            try:
                replicas: list[TFServingHook] = _bounded(lambda: service.replicas, self.part_timeout_s)  # noqa: B023
            except Exception as exc:  # noqa: BLE001 - the pool's Connection is unusable: name what is missing
                bundle.miss(f"pools/{pool}/replicas", f"{type(exc).__name__}: {exc}")
                continue
            for index, replica in enumerate(replicas):
                name = service.target.container(index)
                containers.append(name)
                where = f"pools/{pool}/{name}"
                bundle.collect(f"{where}/logs.txt", partial(_logs, service.host_of(index), name, self.log_tail))
                bundle.collect(f"{where}/inspect.json", partial(_inspect, service.host_of(index), name))
                bundle.collect(f"{where}/model_status.json", partial(_served, replica, model))
        return containers

    def _collect_router(self, bundle: _Bundle) -> None:
        router = next(iter(self.pools.values())).router
        bundle.collect("router/weights.json", router.weights)
        bundle.collect("router/candidates.json", router.candidates)
        bundle.collect("router/limits.json", router.limits)

        def servers() -> dict[str, Any]:
            return {
                backend: router.server_stats(backend)
                for service in self.pools.values()
                for backend in service.target.router_backends
            }

        bundle.collect("router/servers.json", servers)

    def _collect_prometheus(self, bundle: _Bundle, model: str, containers: list[str], end: float) -> None:
        start = end - self.window_s
        unreachable: str | None = None
        for name, expr in prometheus_queries(model, containers).items():
            part = f"prometheus/{name}.json"
            if unreachable:
                bundle.miss(part, unreachable)
                continue

            def query(expr: str = expr) -> dict[str, Any]:
                result = self.prometheus.query_range(expr, start=start, end=end, step=self.step_s)
                return {"query": expr, "start": start, "end": end, "step": self.step_s, "result": result}

            if not bundle.collect(part, query) and _unreachable(bundle.missing[part]):
                unreachable = f"Prometheus unreachable: {bundle.missing[part]}"
        if unreachable:
            bundle.add(
                "prometheus/NOTE.txt",
                f"Prometheus could not be reached, so this bundle has none of {model}'s series.\n{unreachable}\n",
            )


def _config_text(host: ServingHostHook) -> str:
    return host.read_config_text() or ""


def _logs(host: ServingHostHook, name: str, tail: int) -> str:
    text = host.server_logs(name, tail=tail)
    if text.startswith("(logs unavailable:"):
        raise RuntimeError(text.strip("()"))
    return text


def _inspect(host: ServingHostHook, name: str) -> dict[str, Any]:
    return redact_inspect(host.inspect_server(name))


def _served(replica: TFServingHook, model: str) -> dict[str, Any]:
    status = replica.model_status(model)
    return {
        "replica": {"rest": replica.rest_url, "grpc": replica.grpc_target},
        "model": model,
        "versions": {str(v): {"state": state, "error": error} for v, (state, error) in sorted(status.items())},
    }


def _unreachable(why: str) -> bool:
    """Whether a failed query means Prometheus cannot be reached at all (no use asking again), rather than it
    refusing that one query."""
    return not why.startswith(f"{PrometheusError.__name__}: Prometheus refused")


def _readme(manifest: Mapping[str, Any]) -> str:
    lines = [
        f"Diagnosis bundle of model {manifest['model']} on serving target {manifest['servingTarget']}",
        f"created {manifest['createdAt']} by run {manifest['runId']}",
        f"reason: {manifest['reason'] or '-'}",
        f"stored at HDFS {manifest['path']}",
        "",
    ]
    task = manifest.get("task")
    if task:
        lines += [
            f"failing task: {task['dag_id']} / {task['run_id']} / {task['task_id']}",
            f"  its log in the Airflow UI: {task['ui']}",
            f"  over the REST API:         {task['api']}",
            "",
        ]
    lines.append("parts:")
    lines += [f"  {part}" for part in manifest["parts"]]
    lines.append("")
    if manifest["missing"]:
        lines.append("not collected (and why):")
        lines += [f"  {part}: {why}" for part, why in manifest["missing"].items()]
    else:
        lines.append("every part was collected")
    lines += ["", f"redaction: {manifest['redaction']}", ""]
    return "\n".join(lines)
