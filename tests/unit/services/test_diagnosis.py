"""Diagnosis bundles with fakes: every part in the archive and the manifest, a failing or hanging part recorded
(never raised), Prometheus unreachable as a note, the archive stored under its path, and no secret in any file:
not in logs, not in ``docker inspect`` (environment, arguments), not in registry answers or error messages."""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import socket
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import stack
from tfdeploy.core.errors import PrometheusError, RegistryUnavailable, ServerNotFound
from tfdeploy.core.redaction import LITERAL_MIN, REDACTED, Redactor
from tfdeploy.hooks.registry import ModelRecord
from tfdeploy.services import diagnosis as diagnosis_module
from tfdeploy.services.diagnosis import (
    DiagnosisService,
    TaskRef,
    configured_secrets,
    prometheus_queries,
    redact_inspect,
)
from tfdeploy.services.targets import POOLS, get_target
from tfdeploy.settings import get_settings

MODEL = "demo_regressor"
RUN_ID = "manual__2026-05-04T10:11:12.123456+00:00"
NOW = dt.datetime(2026, 5, 4, 10, 20, 30, tzinfo=dt.UTC)

# One secret of each kind the stack configures (values as stack.py generates them), plus a weak password.
FERNET = "kVx0mT3dQ1k6bH2rG8yN5wE9zA4cU7pL0sJ3fD6hM1o="
JWT_SECRET = "jwtsecret-Xq93_4Lm0PzR2tYw"
REGISTRY_TOKEN = "regtok-AbCdEfGh1234567890_zz"
CONN_PASSWORD = "c0nnP4ss-w0rd!"
SMTP_PASSWORD = "smtpPassw0rd99"
ADMIN_PASSWORD = "admin"
SECRETS = (FERNET, JWT_SECRET, REGISTRY_TOKEN, CONN_PASSWORD, SMTP_PASSWORD, ADMIN_PASSWORD)
CONN_URI = f"postgresql://tfdeploy:{CONN_PASSWORD}@127.0.0.1:5433/registry"
UNKNOWN_BEARER = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJlLXZhbHVl"
UNKNOWN_PASSWORD = "notConfiguredAnywhere42"


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(self: socket.socket, address: Any) -> None:
        raise AssertionError(f"unit test tried to connect to {address}")

    monkeypatch.setattr(socket.socket, "connect", no_network)


# --------------------------------------------------------------------------- fakes


class FakeHost:
    """A pool's serving host: a models.config on disk, containers' logs and inspect answers."""

    def __init__(self, root: Path, containers: dict[str, str], *, config: str) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "models.config"
        self.config_path.write_text(config)
        self.containers = containers  # name -> log text
        self.inspected: list[str] = []

    def read_config_text(self) -> str:
        return self.config_path.read_text()

    def server_logs(self, name: str, tail: int = 50) -> str:
        if name not in self.containers:
            raise ServerNotFound(f"no container named {name!r} on the Docker engine at unix:///var/run/docker.sock")
        return "\n".join(self.containers[name].splitlines()[-tail:])

    def inspect_server(self, name: str) -> dict[str, Any]:
        if name not in self.containers:
            raise ServerNotFound(f"no container named {name!r}")
        self.inspected.append(name)
        return {
            "Id": f"id-{name}",
            "Name": f"/{name}",
            "Args": ["--model_config_file=/models/models.config", f"--password={CONN_PASSWORD}"],
            "Config": {
                "Env": [
                    "MODEL_NAME=demo_regressor",
                    f"REGISTRY_API_TOKEN={REGISTRY_TOKEN}",
                    f"AIRFLOW__CORE__FERNET_KEY={FERNET}",
                    f"DB={CONN_URI}",
                    f"OTHER_SECRET={UNKNOWN_PASSWORD}",
                ],
                "Labels": {"tfdeploy.serving.managed": "true", "note": f"Authorization: Bearer {UNKNOWN_BEARER}"},
            },
            "State": {"Status": "running", "Running": True, "ExitCode": 0},
        }


@dataclass
class FakeReplica:
    rest_url: str
    grpc_target: str
    status: dict[int, tuple[str, str]] = field(default_factory=dict)
    error: Exception | None = None

    def model_status(self, model: str) -> dict[int, tuple[str, str]]:
        if self.error is not None:
            raise self.error
        return dict(self.status)


class FakeRouter:
    def weights(self) -> dict[str, int]:
        return {MODEL: 10}

    def candidates(self) -> dict[str, str]:
        return {f"{MODEL}/3": "canary"}

    def limits(self) -> dict[str, int]:
        return {}

    def server_stats(self, backend: str) -> dict[str, dict[str, str]]:
        return {"replica1": {"pxname": backend, "svname": "replica1", "status": "UP", "weight": "1"}}


class FakeRegistry:
    def __init__(self) -> None:
        self.history_error: Exception | None = None

    def get_model(self, model: str) -> ModelRecord:
        return ModelRecord(model=model, production_version=2, canary_version=3, latest_version=3, health="failing")

    def history(self, model: str, *, limit: int = 100, kind: str | None = None) -> list[dict[str, Any]]:
        if self.history_error is not None:
            raise self.history_error
        return [
            {"id": 7, "kind": "health", "actor": "admin", "reason": f"login with password={UNKNOWN_PASSWORD}"},
            {"id": 6, "kind": "transition", "reason": f"connection {CONN_URI} refused", "details": {"token": "x1y2"}},
        ]


class FakePrometheus:
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.queries: list[tuple[str, float, float, float]] = []

    def query_range(self, expr: str, *, start: float, end: float, step: float) -> list[dict[str, Any]]:
        self.queries.append((expr, start, end, step))
        if self.error is not None:
            raise self.error
        return [{"metric": {"pool": "stable", "status": "OK"}, "values": [[start, "1.5"], [end, "2"]]}]


class FakeStore:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}

    def put_file(self, path: str, data: bytes) -> str:
        assert path not in self.files, "a bundle is never overwritten"
        self.files[path] = data
        return f"webhdfs://127.0.0.1:9870{path}"


LOG = "\n".join(
    [f"line {i}" for i in range(300)]
    + [
        f"GET /v1/models with Authorization: Bearer {UNKNOWN_BEARER}",
        f"connecting to {CONN_URI}",
        f"fernet={FERNET} jwt {JWT_SECRET} token {REGISTRY_TOKEN} smtp {SMTP_PASSWORD}",
        f"user admin logged in with password {ADMIN_PASSWORD}; administrator unaffected",
        f'{{"password": "{UNKNOWN_PASSWORD}"}}',
    ]
)


def pools(tmp_path: Path, *, logs: dict[str, str] | None = None) -> dict[str, Any]:
    """Both pools of target ``local``: the stable pool with two replicas, the canary pool with one."""
    out = {}
    router = FakeRouter()
    for pool in POOLS:
        target = get_target("local", pool=pool)
        count = 2 if pool == "stable" else 1
        names = [target.container(i) for i in range(count)]
        containers = {n: (logs or {}).get(n, LOG) for n in names}
        host = FakeHost(tmp_path / pool, containers, config=f'model_config_list {{ config {{ name: "{MODEL}" }} }}\n')
        replicas = [
            FakeReplica(f"http://127.0.0.1:{18511 + 2 * i}", f"127.0.0.1:{18510 + 2 * i}", {2: ("AVAILABLE", "")})
            for i in range(count)
        ]
        out[pool] = SimpleNamespace(
            host=host, host_of=lambda _i, host=host: host, replicas=replicas, router=router, target=target
        )
    return out


def service(tmp_path: Path, **overrides: Any) -> tuple[DiagnosisService, FakeStore]:
    store = FakeStore()
    kwargs: dict[str, Any] = {
        "pools": pools(tmp_path),
        "registry": FakeRegistry(),
        "prometheus": FakePrometheus(),
        "store": store,
        "redactor": Redactor(SECRETS),
        "airflow_base_url": "http://127.0.0.1:8080",
        "clock": lambda: NOW.timestamp(),
        "part_timeout_s": 5,
        "total_timeout_s": 30,
    }
    kwargs.update(overrides)
    return DiagnosisService("local", **kwargs), store


def unpack(data: bytes) -> dict[str, str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


TASK = TaskRef("model_deploy", RUN_ID, "smoke", try_number=2)


# --------------------------------------------------------------------------- the bundle


def test_every_part_is_collected_and_stored_under_its_path(tmp_path):
    svc, store = service(tmp_path)
    bundle = svc.collect(MODEL, run_id=RUN_ID, reason="smoke failed", task=TASK)

    assert bundle.path == f"/diagnostics/{MODEL}/20260504T102030Z-manual__2026-05-04T10_11_12.123456_00_00.tar.gz"
    assert bundle.uri.endswith(bundle.path) and list(store.files) == [bundle.path]
    assert bundle.missing == {}
    files = unpack(store.files[bundle.path])
    top = bundle.path.rsplit("/", 1)[-1].removesuffix(".tar.gz")
    assert {name.split("/", 1)[0] for name in files} == {top}
    in_archive = {name.split("/", 1)[1] for name in files}
    assert in_archive == set(bundle.parts)
    expected = {
        "README.txt",
        "manifest.json",
        "pools/stable/models.config",
        "pools/canary/models.config",
        "router/weights.json",
        "router/candidates.json",
        "router/limits.json",
        "router/servers.json",
        "registry/model.json",
        "registry/history.json",
        "airflow/task_log.json",
        "prometheus/request_rate_by_status.json",
        "prometheus/latency_histogram_rate.json",
        "prometheus/replicas_up.json",
    }
    containers = ["tfserving-test-local", "tfserving-test-local-1", "tfserving-test-local-canary"]
    for pool, name in zip(("stable", "stable", "canary"), containers, strict=True):
        expected |= {f"pools/{pool}/{name}/{part}" for part in ("logs.txt", "inspect.json", "model_status.json")}
    assert set(bundle.parts) == expected

    def part(name: str) -> str:
        return files[f"{top}/{name}"]

    manifest = json.loads(part("manifest.json"))
    assert manifest["parts"] == bundle.parts and manifest["missing"] == {}
    assert manifest["model"] == MODEL and manifest["runId"] == RUN_ID and manifest["reason"] == "smoke failed"
    logs = part("pools/stable/tfserving-test-local/logs.txt").splitlines()
    assert len(logs) == 200 and logs[0] == "line 105", "the last 200 lines"
    status = json.loads(part("pools/canary/tfserving-test-local-canary/model_status.json"))
    assert status["versions"] == {"2": {"state": "AVAILABLE", "error": ""}}
    assert status["replica"]["rest"] == "http://127.0.0.1:18511"
    assert "demo_regressor" in part("pools/stable/models.config")
    assert json.loads(part("router/weights.json")) == {MODEL: 10}
    servers = json.loads(part("router/servers.json"))
    assert set(servers) == {"local_rest", "local_grpc", "local_canary_rest", "local_canary_grpc"}
    assert json.loads(part("registry/model.json"))["production_version"] == 2
    links = json.loads(part("airflow/task_log.json"))
    run = "manual__2026-05-04T10%3A11%3A12.123456%2B00%3A00"
    assert links["ui"] == f"http://127.0.0.1:8080/dags/model_deploy/runs/{run}/tasks/smoke?try_number=2"
    assert links["api"] == f"http://127.0.0.1:8080/api/v2/dags/model_deploy/dagRuns/{run}/taskInstances/smoke/logs/2"
    rate = json.loads(part("prometheus/request_rate_by_status.json"))
    assert rate["step"] == 15 and rate["end"] - rate["start"] == 1800 and rate["result"]
    assert "links to the failing task" not in part("README.txt") and links["ui"] in part("README.txt")


def test_prometheus_queries_are_over_30_minutes_at_15_s_for_the_model_and_its_replicas(tmp_path):
    prometheus = FakePrometheus()
    svc, _ = service(tmp_path, prometheus=prometheus)
    svc.collect(MODEL, run_id=RUN_ID, task=TASK)
    assert [(end - start, step) for _, start, end, step in prometheus.queries] == [(1800, 15)] * 3
    queries = prometheus_queries(MODEL, ["tfserving-test-local", "tfserving-test-local-1"])
    assert [q for q, *_ in prometheus.queries][:2] == [
        queries["request_rate_by_status"],
        queries["latency_histogram_rate"],
    ]
    assert 'model_name="demo_regressor"' in queries["request_rate_by_status"]
    assert "by (pool, status)" in queries["request_rate_by_status"] and "_bucket" in queries["latency_histogram_rate"]
    assert queries["replicas_up"] == 'up{container=~"tfserving\\\\-test\\\\-local|tfserving\\\\-test\\\\-local\\\\-1"}'
    assert "tfserving\\\\-test\\\\-local\\\\-canary" in prometheus.queries[2][0]


def test_a_failing_part_is_recorded_with_its_reason_and_the_rest_is_collected(tmp_path):
    registry = FakeRegistry()
    registry.history_error = RegistryUnavailable(f"registry GET http://x/registry: no answer (token {REGISTRY_TOKEN})")
    the_pools = pools(tmp_path)
    del the_pools["stable"].host.containers["tfserving-test-local-1"]  # that replica's container is gone
    the_pools["canary"].replicas[0].error = RuntimeError("gRPC UNAVAILABLE: connection refused")
    svc, store = service(tmp_path, registry=registry, pools=the_pools)

    bundle = svc.collect(MODEL, run_id=RUN_ID, task=TASK)

    assert set(bundle.missing) == {
        "registry/history.json",
        "pools/stable/tfserving-test-local-1/logs.txt",
        "pools/stable/tfserving-test-local-1/inspect.json",
        "pools/canary/tfserving-test-local-canary/model_status.json",
    }
    assert bundle.missing["registry/history.json"].startswith("RegistryUnavailable: ")
    assert REGISTRY_TOKEN not in bundle.missing["registry/history.json"], "reasons are redacted too"
    assert "ServerNotFound" in bundle.missing["pools/stable/tfserving-test-local-1/logs.txt"]
    assert "UNAVAILABLE" in bundle.missing["pools/canary/tfserving-test-local-canary/model_status.json"]
    assert not set(bundle.missing) & set(bundle.parts)
    assert (
        "registry/model.json" in bundle.parts
        and "pools/stable/tfserving-test-local-1/model_status.json" in bundle.parts
    )
    files = unpack(store.files[bundle.path])
    manifest = json.loads(next(text for name, text in files.items() if name.endswith("/manifest.json")))
    assert manifest["missing"] == bundle.missing
    readme = next(text for name, text in files.items() if name.endswith("/README.txt"))
    assert "not collected (and why):" in readme and "registry/history.json: RegistryUnavailable" in readme


def test_a_hanging_part_times_out_and_the_overall_deadline_bounds_the_collection(tmp_path):
    class SlowRouter(FakeRouter):
        def weights(self) -> dict[str, int]:
            time.sleep(3)
            return {}

    the_pools = pools(tmp_path)
    for pool in the_pools.values():
        pool.router = SlowRouter()
    svc, _ = service(tmp_path, pools=the_pools, part_timeout_s=0.2)
    started = time.monotonic()
    bundle = svc.collect(MODEL, run_id=RUN_ID, task=TASK)
    assert time.monotonic() - started < 2
    assert bundle.missing == {"router/weights.json": "timed out: no answer within 0.2s"}

    class SlowRegistry(FakeRegistry):
        def get_model(self, model: str) -> ModelRecord:
            time.sleep(3)
            raise AssertionError("not reached")

    svc, _ = service(tmp_path, registry=SlowRegistry(), part_timeout_s=1.0, total_timeout_s=0.5)
    started = time.monotonic()
    bundle = svc.collect(MODEL, run_id=RUN_ID, task=TASK)
    assert time.monotonic() - started < 2.5
    assert bundle.missing["registry/model.json"].startswith("timed out")
    assert bundle.missing["registry/history.json"] == "not collected: the collection's overall deadline passed"
    assert "prometheus/replicas_up.json" in bundle.missing


def test_prometheus_unreachable_is_a_note_in_the_bundle_not_a_failure(tmp_path):
    prometheus = FakePrometheus(
        PrometheusError("Prometheus at http://127.0.0.1:9090/api/v1/query_range did not answer")
    )
    svc, store = service(tmp_path, prometheus=prometheus)
    bundle = svc.collect(MODEL, run_id=RUN_ID, task=TASK)
    assert len(prometheus.queries) == 1, "not asked again once it did not answer"
    assert set(bundle.missing) == {f"prometheus/{name}.json" for name in prometheus_queries(MODEL, [])}
    assert "prometheus/NOTE.txt" in bundle.parts
    note = next(t for n, t in unpack(store.files[bundle.path]).items() if n.endswith("prometheus/NOTE.txt"))
    assert "could not be reached" in note and "did not answer" in note


def test_no_failing_task_named_is_listed_as_missing(tmp_path):
    svc, _ = service(tmp_path)
    bundle = svc.collect(MODEL, run_id=RUN_ID)
    assert bundle.missing == {"airflow/task_log.json": "no failing task was named by the caller"}


def test_only_storing_can_fail_the_collection(tmp_path):
    class BrokenStore(FakeStore):
        def put_file(self, path: str, data: bytes) -> str:
            raise OSError("HDFS down")

    svc, _ = service(tmp_path, store=BrokenStore())
    with pytest.raises(OSError, match="HDFS down"):
        svc.collect(MODEL, run_id=RUN_ID, task=TASK)


def test_a_bad_model_name_is_refused_before_anything_is_collected(tmp_path):
    svc, store = service(tmp_path)
    with pytest.raises(ValueError):
        svc.collect("../etc", run_id=RUN_ID)
    assert store.files == {}


# --------------------------------------------------------------------------- redaction


def test_no_secret_reaches_any_file_of_the_bundle(tmp_path):
    svc, store = service(tmp_path)
    bundle = svc.collect(MODEL, run_id=RUN_ID, reason=f"failed; auth Bearer {UNKNOWN_BEARER}", task=TASK)
    files = unpack(store.files[bundle.path])
    assert files
    for name, text in files.items():
        for secret in SECRETS:
            if len(secret) >= LITERAL_MIN:
                assert secret not in text, f"a configured secret in {name}"
            else:  # weak, short secrets are matched as whole words (as the redactor does)
                assert not re.search(rf"(?<![A-Za-z0-9_]){re.escape(secret)}(?![A-Za-z0-9_])", text), name
        for unknown in (UNKNOWN_BEARER, UNKNOWN_PASSWORD, "x1y2"):
            assert unknown not in text, f"a secret found by its pattern is in {name}"
        if name.endswith(".json"):
            json.loads(text)  # redaction keeps JSON valid
    logs = next(t for n, t in files.items() if n.endswith("tfserving-test-local/logs.txt"))
    assert f"Authorization: Bearer {REDACTED}" in logs and f"tfdeploy:{REDACTED}@127.0.0.1" in logs
    assert "administrator unaffected" in logs
    inspect = json.loads(next(t for n, t in files.items() if n.endswith("tfserving-test-local/inspect.json")))
    assert inspect["Config"]["Env"] == [
        f"MODEL_NAME={REDACTED}",
        f"REGISTRY_API_TOKEN={REDACTED}",
        f"AIRFLOW__CORE__FERNET_KEY={REDACTED}",
        f"DB={REDACTED}",
        f"OTHER_SECRET={REDACTED}",
    ]
    assert inspect["Args"] == ["--model_config_file=/models/models.config", f"--password={REDACTED}"]
    assert inspect["State"]["Running"] is True


def test_redact_inspect_keeps_env_names_only():
    attrs = {"Config": {"Env": ["A=1", "B=x=y", "C"]}, "Id": "abc"}
    assert redact_inspect(attrs) == {
        "Config": {"Env": [f"A={REDACTED}", f"B={REDACTED}", f"C={REDACTED}"]},
        "Id": "abc",
    }
    assert attrs["Config"]["Env"][0] == "A=1", "the original is not changed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def", f"Authorization: Bearer {REDACTED}"),
        ('-H "Authorization: Basic dXNlcjpwdw=="', f'-H "Authorization: Basic {REDACTED}"'),
        ("sent bearer tok_123 upstream", f"sent bearer {REDACTED} upstream"),
        ("password=hunter2&user=bob", f"password={REDACTED}&user=bob"),
        ("AIRFLOW__SMTP__SMTP_PASSWORD: s3cr3t", f"AIRFLOW__SMTP__SMTP_PASSWORD: {REDACTED}"),
        ('{"api_key": "k-1", "n": 1}', f'{{"api_key": "{REDACTED}", "n": 1}}'),
        ("redis://:pw@host:6379/0 http://u:p@h/x", f"redis://:{REDACTED}@host:6379/0 http://u:{REDACTED}@h/x"),
        ("http://127.0.0.1:8080/dags and webhdfs://airflow@127.0.0.1:9870", None),
        (f"token {UNKNOWN_BEARER} ok", f"token {REDACTED} ok"),
        ("max_tokens_label and nothing=else", None),
    ],
)
def test_redactor_patterns(text, expected):
    assert Redactor().redact_text(text) == (text if expected is None else expected)


def test_known_secrets_long_anywhere_short_as_words_tiny_ignored():
    redactor = Redactor(["LongSecretValue1", "admin", "ab", "", None])  # type: ignore[list-item]
    assert len(redactor) == 2
    assert redactor("xLongSecretValue1x admin administrator ab") == f"x{REDACTED}x {REDACTED} administrator ab"
    data = {"password": None, "token": "", "a": ["LongSecretValue1"], "cookie": "z", "n": 3}
    assert redactor.redact_data(data) == {"password": None, "token": "", "a": [REDACTED], "cookie": REDACTED, "n": 3}


def test_configured_secrets_come_from_the_environment_connections_and_the_secrets_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_PASSWORD", "s3cure-admin-pw")
    (tmp_path / "alertmanager_token").write_text("am-token-from-a-file\n")
    environ = {
        "AIRFLOW__CORE__FERNET_KEY": FERNET,
        "AIRFLOW__API_AUTH__JWT_SECRET": JWT_SECRET,
        "AIRFLOW__API_AUTH__JWT_EXPIRATION_TIME": "86400",  # about a secret, not one
        "AIRFLOW__CORE__FERNET_KEY_CMD": "cat /etc/key",
        "REGISTRY_API_TOKEN": REGISTRY_TOKEN,
        "AIRFLOW_CONN_DB": CONN_URI,
        "AIRFLOW_CONN_SMTP_DEFAULT": json.dumps({"conn_type": "smtp", "password": SMTP_PASSWORD}),
        "AIRFLOW_CONN_API": json.dumps({"conn_type": "http", "extra": {"api_token": "extra-token-1", "timeout": 5}}),
        "AIRFLOW_CONN_WEBHDFS_DEFAULT": "webhdfs://airflow@127.0.0.1:9870",
        "PATH": "/usr/bin",
    }
    found = configured_secrets(environ, secrets_dir=tmp_path, connection_ids=())
    for secret in (FERNET, JWT_SECRET, REGISTRY_TOKEN, CONN_URI, CONN_PASSWORD, SMTP_PASSWORD, "extra-token-1"):
        assert secret in found
    assert "s3cure-admin-pw" in found and "am-token-from-a-file" in found
    assert "webhdfs://airflow@127.0.0.1:9870" in found, "a Connection URI is redacted whole"
    assert "86400" not in found and "cat /etc/key" not in found and "/usr/bin" not in found


def test_every_secret_the_stack_sets_is_known_to_the_redactor(settings):
    """stack.py's environment (what every Airflow component runs with): Fernet key, JWT secret, registry token,
    each Connection's password, and the admin password."""
    env = stack.airflow_env(settings)
    found = set(configured_secrets(env, connection_ids=()))
    expected = {
        env["AIRFLOW__CORE__FERNET_KEY"],
        env["AIRFLOW__API_AUTH__JWT_SECRET"],
        env["REGISTRY_API_TOKEN"],
        get_settings().airflow_password,
    }
    for name, value in env.items():
        if name.startswith("AIRFLOW_CONN_"):
            expected.add(value)
            try:
                password = json.loads(value).get("password")
            except ValueError:
                password = None
            if password:
                expected.add(password)
    assert expected <= found
    secrets_dir = settings.state_dir / "secrets"
    assert {p.read_text().strip() for p in secrets_dir.iterdir() if p.is_file()} <= found


def test_the_run_id_is_made_safe_for_an_hdfs_path(tmp_path):
    svc, _ = service(tmp_path)
    assert svc.path_for("m", "scheduled__2026-01-01T00:00:00+00:00", NOW).endswith(
        "/m/20260504T102030Z-scheduled__2026-01-01T00_00_00_00_00.tar.gz"
    )
    assert svc.path_for("m", "::", NOW).endswith("-run.tar.gz")


def test_the_module_builds_real_pools_from_the_target_with_short_timeouts():
    svc = DiagnosisService("local", part_timeout_s=10, redactor=Redactor())
    assert set(svc.pools) == set(POOLS)
    stable = svc.pools["stable"]
    assert stable.host.docker_timeout == 5 and stable.serving.timeout == 5
    assert stable.target.container_name.endswith("-local") and svc.pools["canary"].target.pool == "canary"
    assert diagnosis_module.ROOT == "/diagnostics" and svc.store.base_path == "/diagnostics"
