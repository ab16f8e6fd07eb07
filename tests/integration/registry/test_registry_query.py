"""The registry's query endpoints whose data comes from outside it, against real databases (SQLite file and the
stack's PostgreSQL) with fake sources in place of the plugin's: a model's live performance per pool (Prometheus
in the plugin), its serving replicas' recent log lines (the Docker engine in the plugin; write access, redacted),
and its diagnosis bundles from the history with their WebHDFS download links."""

from __future__ import annotations

import math
import warnings

import pytest

from tfdeploy.core.errors import PrometheusError
from tfdeploy.registry.api import create_app
from tfdeploy.registry.config import RegistryConfig

from .test_registry_api import AUTH, TOKEN, move, register, unique

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

WEBHDFS = "http://127.0.0.1:19870"
DB_PASSWORD = "db-secret-Pa55word"  # a database URI's password in a log line: the URI pattern redacts it


class Sources:
    """The plugin's performance and logs sources, faked: each call recorded; ``perf`` / ``logs`` are what they
    answer (an exception instance: raised)."""

    def __init__(self) -> None:
        self.perf_calls: list[str] = []
        self.log_calls: list[tuple[str, int]] = []
        self.perf: object = {}
        self.logs: object = {}

    def performance(self, model: str) -> dict:
        self.perf_calls.append(model)
        if isinstance(self.perf, Exception):
            raise self.perf
        return self.perf  # type: ignore[return-value]

    def replica_logs(self, model: str, lines: int) -> dict[str, list[str]]:
        self.log_calls.append((model, lines))
        if isinstance(self.logs, Exception):
            raise self.logs
        return self.logs  # type: ignore[return-value]


@pytest.fixture(scope="module")
def sources() -> Sources:
    return Sources()


@pytest.fixture(scope="module")
def client(db_url, sources):
    app = create_app(
        RegistryConfig(db_url=db_url, api_token=TOKEN, airflow_url="http://airflow.test"),
        performance_source=sources.performance,
        logs_source=sources.replica_logs,
        webhdfs_url=WEBHDFS + "/",
    )
    with TestClient(app) as c:
        yield c


@pytest.fixture
def model(client) -> str:
    name = unique("query")
    register(client, name, 1)
    move(client, name, 1, "validated", "canary", "production")
    return name


# --------------------------------------------------------------------------- performance


def test_performance_per_pool(client, sources, model):
    sources.perf = {
        "window": "5m",
        "pools": {
            "stable": {"requestRate": 12.5, "errorRate": 0.02, "p50Ms": 3.25, "p99Ms": 41.0},
            "canary": {"requestRate": 0.0, "errorRate": None, "p50Ms": math.nan, "p99Ms": math.inf},
        },
    }
    resp = client.get(f"/v1/models/{model}/performance", headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert sources.perf_calls[-1] == model
    assert (body["modelName"], body["available"], body["window"]) == (model, True, "5m")
    assert body["at"].endswith("Z")
    assert body["pools"] == {
        "stable": {"requestRate": 12.5, "errorRate": 0.02, "p50Ms": 3.25, "p99Ms": 41.0},
        # NaN and +Inf (Prometheus' answers without data, or past the last bucket) are null in JSON
        "canary": {"requestRate": 0.0, "errorRate": None, "p50Ms": None, "p99Ms": None},
    }


def test_performance_always_has_both_pools_and_only_the_known_fields(client, sources, model):
    sources.perf = {"pools": {"stable": {"requestRate": 1, "secret": "x", "p99Ms": "fast"}, "shadow": {"p50Ms": 2.0}}}
    body = client.get(f"/v1/models/{model}/performance", headers=AUTH).json()
    assert list(body["pools"]) == ["stable", "canary", "shadow"]
    assert body["pools"]["stable"] == {"requestRate": 1.0, "errorRate": None, "p50Ms": None, "p99Ms": None}
    assert body["pools"]["canary"] == dict.fromkeys(("requestRate", "errorRate", "p50Ms", "p99Ms"))
    assert body["pools"]["shadow"]["p50Ms"] == 2.0


@pytest.mark.parametrize(
    "failure",
    [
        PrometheusError("Prometheus at http://127.0.0.1:19090/api/v1/query did not answer 'up': Connection refused"),
        TimeoutError("no answer within 5s"),
    ],
)
def test_prometheus_unreachable_is_a_200_saying_why(client, sources, model, failure):
    sources.perf = failure
    resp = client.get(f"/v1/models/{model}/performance", headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["available"] is False and "pools" not in body
    assert body["reason"] == f"{type(failure).__name__}: {failure}"


def test_performance_source_saying_unavailable_or_answering_nonsense(client, sources, model):
    sources.perf = {"available": False, "reason": "no Prometheus configured"}
    body = client.get(f"/v1/models/{model}/performance", headers=AUTH).json()
    assert (body["available"], body["reason"]) == (False, "no Prometheus configured")
    sources.perf = ["not", "a", "dict"]
    body = client.get(f"/v1/models/{model}/performance", headers=AUTH).json()
    assert body["available"] is False and "list" in body["reason"]


def test_performance_without_a_source(db_url, model):
    app = create_app(RegistryConfig(db_url=db_url, api_token=TOKEN))
    with TestClient(app) as c:
        resp = c.get(f"/v1/models/{model}/performance", headers=AUTH)
        assert resp.status_code == 200 and resp.json()["available"] is False
        assert "no performance source" in resp.json()["reason"]
        logs = c.get(f"/v1/models/{model}/logs", headers=AUTH)
        assert logs.status_code == 200 and logs.json()["available"] is False and logs.json()["containers"] == {}
        bundles = c.get(f"/v1/models/{model}/diagnostics", headers=AUTH).json()["bundles"]
        assert bundles == []


def test_performance_needs_read_access_and_a_registered_model(client, sources):
    calls = len(sources.perf_calls)
    assert client.get("/v1/models/whatever/performance").status_code == 401
    resp = client.get("/v1/models/no-such-model/performance", headers=AUTH)
    assert resp.status_code == 404 and resp.json()["error"] == "NotFound"
    assert client.get("/v1/models/bad..name/performance", headers=AUTH).status_code == 422
    assert len(sources.perf_calls) == calls, "the source is not asked about models the registry does not know"


# --------------------------------------------------------------------------- replica logs


def test_logs_per_container_with_the_lines_asked(client, sources, model):
    sources.logs = {
        "tfdeploy-test-local": [f"line {i} {model}" for i in range(80)],
        "tfdeploy-test-local-1": [f"serving {model} v1"],
        "tfdeploy-test-local-canary": ["(no container tfdeploy-test-local-canary: this canary replica is not running)"],
    }
    resp = client.get(f"/v1/models/{model}/logs", params={"lines": 20}, headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert sources.log_calls[-1] == (model, 20)
    assert (body["modelName"], body["available"], body["lines"]) == (model, True, 20)
    assert list(body["containers"]) == list(sources.logs)  # the source's order: the page shows them so
    assert body["containers"]["tfdeploy-test-local"] == [f"line {i} {model}" for i in range(60, 80)]  # the last 20
    assert body["containers"]["tfdeploy-test-local-1"] == [f"serving {model} v1"]
    assert client.get(f"/v1/models/{model}/logs", headers=AUTH).json()["lines"] == 50  # the default


def test_logs_are_redacted_once_more_by_the_registry(client, sources, model, db_url):
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhZG1pbiJ9.c2lnbmF0dXJl"
    sources.logs = {
        "r0": [
            f"GET /registry/v1/models Authorization: Bearer {TOKEN}",
            f"called with ?token={TOKEN}&x=1",
            f"jwt {token}",
            f"db postgresql://tfdeploy:{DB_PASSWORD}@127.0.0.1:15433/registry",
            "password=hunter2hunter2",
            f"plain {TOKEN} in the middle",
        ]
    }
    lines = client.get(f"/v1/models/{model}/logs", headers=AUTH).json()["containers"]["r0"]
    text = "\n".join(lines)
    for secret in (TOKEN, token, DB_PASSWORD, "hunter2hunter2"):
        assert secret not in text, (secret, lines)
    assert lines[0] == "GET /registry/v1/models Authorization: Bearer [REDACTED]"
    assert lines[-1] == "plain [REDACTED] in the middle"  # the registry's own token, known by value


def test_logs_need_write_access_even_with_public_reads(db_url, model, sources):
    app = create_app(
        RegistryConfig(db_url=db_url, api_token=TOKEN, public_reads=True),
        performance_source=sources.performance,
        logs_source=sources.replica_logs,
    )
    sources.perf, sources.logs = {"pools": {}}, {"r0": ["x"]}
    calls = len(sources.log_calls)
    with TestClient(app) as c:
        assert c.get(f"/v1/models/{model}/performance").status_code == 200  # a read: anonymous is fine here
        assert c.get(f"/v1/models/{model}/diagnostics").status_code == 200
        resp = c.get(f"/v1/models/{model}/logs")
        assert resp.status_code == 401 and "Authorization: Bearer <token>" in resp.json()["message"]
        assert c.get(f"/v1/models/{model}/logs", headers={"Authorization": "Bearer forged"}).status_code == 403
        assert len(sources.log_calls) == calls
        assert c.get(f"/v1/models/{model}/logs", headers=AUTH).json()["containers"] == {"r0": ["x"]}


def test_logs_validation_unknown_model_and_failing_source(client, sources, model):
    for lines in (0, -1, 501, "many"):
        resp = client.get(f"/v1/models/{model}/logs", params={"lines": lines}, headers=AUTH)
        assert resp.status_code == 422, (lines, resp.text)
    assert client.get(f"/v1/models/{model}/logs", params={"lines": 500}, headers=AUTH).status_code == 200
    assert client.get("/v1/models/no-such-model/logs", headers=AUTH).status_code == 404
    sources.logs = RuntimeError(f"Docker engine at unix:///var/run/docker.sock refused: token={TOKEN}")
    body = client.get(f"/v1/models/{model}/logs", headers=AUTH).json()
    assert body["available"] is False and body["containers"] == {}
    assert body["reason"].startswith("RuntimeError: Docker engine") and TOKEN not in body["reason"]


# --------------------------------------------------------------------------- diagnosis bundles


def diagnosis(client, model: str, path: str, reason: str, **extra) -> None:
    details = {"path": path, "parts": ["README.txt", "manifest.json", "pools/stable/models.config"], "missing": {}}
    details |= extra.pop("details", {})
    resp = client.post(
        f"/v1/models/{model}/events",
        json={
            "kind": "diagnosis",
            "reason": reason,
            "details": details,
            "context": {"interface": "pipeline", "dagId": "model_diagnose", **extra},
        },
        headers=AUTH,
    )
    assert resp.status_code == 201, resp.text


def test_diagnosis_bundles_newest_first_with_download_links(client, model):
    other = unique("other")
    register(client, other, 1)
    diagnosis(client, other, f"/diagnostics/{other}/20261201T000000Z-x.tar.gz", "not this model's")
    first = f"/diagnostics/{model}/20261202T100000Z-manual__2026-12-02T10_00_00_00_00.tar.gz"
    second = f"/diagnostics/{model}/20261202T110000Z-scheduled__2026-12-02T11_00_00_00_00.tar.gz"
    diagnosis(client, model, first, "diagnosis: on demand", runId="manual__2026-12-02T10:00:00+00:00", taskId="collect")
    diagnosis(
        client,
        model,
        second,
        "model_health found v1 failing",
        runId="scheduled__2026-12-02T11:00:00+00:00",
        taskId="check",
        details={"missing": {"prometheus/request_rate_by_status.json": "Prometheus unreachable"}},
    )
    resp = client.get(f"/v1/models/{model}/diagnostics", headers=AUTH)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["modelName"], body["total"]) == (model, 2)
    newest, oldest = body["bundles"]
    assert [newest["path"], oldest["path"]] == [second, first]
    assert newest["downloadUrl"] == f"{WEBHDFS}/webhdfs/v1{second}?op=OPEN"
    assert oldest["downloadUrl"] == f"{WEBHDFS}/webhdfs/v1{first}?op=OPEN"
    assert (newest["reason"], newest["runId"], newest["dagId"], newest["taskId"]) == (
        "model_health found v1 failing",
        "scheduled__2026-12-02T11:00:00+00:00",
        "model_diagnose",
        "check",
    )
    assert newest["missing"] == ["prometheus/request_rate_by_status.json"] and oldest["missing"] == []
    assert newest["parts"] == 3 and newest["at"].endswith("Z") and newest["at"] >= oldest["at"]
    page = client.get(f"/v1/models/{model}/diagnostics", params={"limit": 1, "offset": 1}, headers=AUTH).json()
    assert [b["path"] for b in page["bundles"]] == [first] and page["total"] == 2


def test_diagnosis_without_a_path_or_a_webhdfs_url(client, db_url, model):
    diagnosis(client, model, "", "collected, but the event lost its path")
    (bundle,) = client.get(f"/v1/models/{model}/diagnostics", headers=AUTH).json()["bundles"]
    assert bundle["path"] is None and bundle["downloadUrl"] is None
    diagnosis(client, model, "/diagnostics/x/1.tar.gz", "second")
    app = create_app(RegistryConfig(db_url=db_url, api_token=TOKEN))  # no WebHDFS URL given
    with TestClient(app) as c:
        newest = c.get(f"/v1/models/{model}/diagnostics", headers=AUTH).json()["bundles"][0]
        assert newest["path"] == "/diagnostics/x/1.tar.gz" and newest["downloadUrl"] is None


def test_diagnosis_needs_read_access_and_a_registered_model(client):
    assert client.get("/v1/models/whatever/diagnostics").status_code == 401
    assert client.get("/v1/models/no-such-model/diagnostics", headers=AUTH).status_code == 404
    assert client.get("/v1/models/x/diagnostics", params={"limit": 0}, headers=AUTH).status_code == 422


def test_openapi_lists_the_query_endpoints(client):
    paths = client.get("/openapi.json", headers=AUTH).json()["paths"]
    for suffix in ("performance", "logs", "diagnostics"):
        assert f"/v1/models/{{name}}/{suffix}" in paths
