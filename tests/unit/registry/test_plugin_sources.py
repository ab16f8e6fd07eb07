"""The registry plugin's query sources with fakes (plugins/tfdeploy_registry_plugin.py): a model's live performance
from Prometheus' answers (PromQL by pool, the error rate, latencies in ms), the replicas' log lines (every replica
of both pools, the lines mentioning the model, redacted), and WebHDFS' base URL from the Connection."""

from __future__ import annotations

import math
from typing import Any

import pytest
import tfdeploy_registry_plugin as plugin

from tfdeploy.core.errors import PrometheusError, ServerNotFound
from tfdeploy.core.redaction import Redactor
from tfdeploy.hooks.serving_host import ServingHostHook
from tfdeploy.hooks.tfserving import TFServingHook

MODEL = "demo_regressor"


class FakePrometheus:
    """Answers each of the plugin's three queries from ``answers`` (by query name); records the queries."""

    def __init__(self, answers: dict[str, list[dict[str, Any]]], error: Exception | None = None) -> None:
        self.answers = answers
        self.error = error
        self.queries: list[str] = []

    def query(self, expr: str) -> list[dict[str, Any]]:
        self.queries.append(expr)
        if self.error is not None:
            raise self.error
        name = next(k for k, q in plugin.performance_queries(MODEL).items() if q == expr)
        return self.answers.get(name, [])


def series(value: float, **labels: str) -> dict[str, Any]:
    return {"metric": labels, "value": value}


def test_queries_group_by_pool_over_five_minutes_and_filter_on_the_model_only():
    queries = plugin.performance_queries(MODEL)
    assert queries == {
        "requests": 'sum by (pool, status) (rate(:tensorflow:serving:request_count{model_name="demo_regressor"}[5m]))',
        "p50": "histogram_quantile(0.5, sum by (pool, le) "
        '(rate(:tensorflow:serving:request_latency_bucket{model_name="demo_regressor"}[5m])))',
        "p99": "histogram_quantile(0.99, sum by (pool, le) "
        '(rate(:tensorflow:serving:request_latency_bucket{model_name="demo_regressor"}[5m])))',
    }
    assert 'model_name="a\\"b\\\\c"' in plugin.performance_queries('a"b\\c')["requests"]  # escaped, never broken out


def test_performance_per_pool():
    prometheus = FakePrometheus(
        {
            "requests": [
                series(9.5, pool="stable", status="OK"),
                series(0.5, pool="stable", status="INVALID_ARGUMENT"),
                series(0.25, pool="stable", status="NOT_FOUND"),
                series(2.0, pool="canary", status="OK"),
            ],
            "p50": [series(1500.0, pool="stable"), series(2500.0, pool="canary")],
            "p99": [series(48000.0, pool="stable"), series(math.inf, pool="canary")],
        }
    )
    out = plugin.model_performance(MODEL, prometheus)  # type: ignore[arg-type]
    assert out["window"] == "5m"
    stable, canary = out["pools"]["stable"], out["pools"]["canary"]
    assert stable == {"requestRate": 10.25, "errorRate": pytest.approx(0.75 / 10.25), "p50Ms": 1.5, "p99Ms": 48.0}
    # +Inf: past the histogram's last bucket (or no data): null rather than a number JSON cannot carry
    assert canary == {"requestRate": 2.0, "errorRate": 0.0, "p50Ms": 2.5, "p99Ms": None}
    assert len(prometheus.queries) == 3


def test_no_requests_no_error_rate_and_no_series_no_pool():
    prometheus = FakePrometheus(
        {"requests": [series(0.0, pool="stable", status="OK")], "p50": [series(math.nan, pool="stable")]}
    )
    out = plugin.model_performance(MODEL, prometheus)  # type: ignore[arg-type]
    assert out["pools"] == {"stable": {"requestRate": 0.0, "errorRate": None, "p50Ms": None, "p99Ms": None}}


def test_prometheus_unreachable_raises_after_the_first_query():
    prometheus = FakePrometheus({}, error=PrometheusError("Prometheus at http://127.0.0.1:1 did not answer"))
    with pytest.raises(PrometheusError, match="did not answer"):
        plugin.model_performance(MODEL, prometheus)  # type: ignore[arg-type]
    assert len(prometheus.queries) == 1


def test_pick_lines_mentioning_the_model_else_the_tail():
    text = "\n".join(
        [
            "boot",
            f"loaded {{name: {MODEL} version: 1}}",
            f"loaded {{name: {MODEL}_v2 version: 1}}",  # another model whose name starts the same
            "GET /v1/models/other:predict",
            f"GET /v1/models/{MODEL}:predict 200",
            f"predict {MODEL}.",
        ]
    )
    assert plugin.pick_lines(text, MODEL, 10) == [
        f"loaded {{name: {MODEL} version: 1}}",
        f"GET /v1/models/{MODEL}:predict 200",
        f"predict {MODEL}.",
    ]
    assert plugin.pick_lines(text, MODEL, 2) == [f"GET /v1/models/{MODEL}:predict 200", f"predict {MODEL}."]
    assert plugin.pick_lines(text, "absent", 2) == text.splitlines()[-2:]
    assert plugin.pick_lines("", MODEL, 5) == []


def test_replica_logs_of_every_replica_of_both_pools_redacted(monkeypatch, settings):
    prefix = settings.serving_container_prefix
    secret = "s3cr3t-value-of-the-stack"
    logs = {
        f"{prefix}-local": f"boot\n{MODEL} predict password={secret}\n{MODEL} ok Authorization: Bearer abc.def\n",
        f"{prefix}-local-1": "only boot lines\nstill booting\n",
        f"{prefix}-local-canary": f"canary {MODEL} {secret}\n",
    }
    asked: list[tuple[str, int]] = []

    def server_logs(self: ServingHostHook, name: str, tail: int = 50) -> str:
        asked.append((name, tail))
        if name not in logs:
            raise ServerNotFound(f"no container named {name!r}")
        return logs[name]

    def replicas(self: TFServingHook) -> list[TFServingHook]:
        return [self, self]  # two replicas in each pool; the canary pool's second has no container

    monkeypatch.setattr(ServingHostHook, "server_logs", server_logs)
    monkeypatch.setattr(TFServingHook, "replicas", replicas)
    out = plugin.replica_logs(MODEL, 50, redactor=Redactor([secret]))
    assert list(out) == [f"{prefix}-local", f"{prefix}-local-1", f"{prefix}-local-canary", f"{prefix}-local-canary-1"]
    assert out[f"{prefix}-local"] == [
        f"{MODEL} predict password=[REDACTED]",
        f"{MODEL} ok Authorization: Bearer [REDACTED]",
    ]
    assert out[f"{prefix}-local-1"] == ["only boot lines", "still booting"]  # no line names the model: the tail
    assert out[f"{prefix}-local-canary"] == [f"canary {MODEL} [REDACTED]"]
    assert out[f"{prefix}-local-canary-1"] == [
        f"(no container {prefix}-local-canary-1: this canary replica is not running)"
    ]
    assert all(tail >= 50 for _name, tail in asked) and secret not in repr(out)


def test_replica_logs_name_a_pool_whose_replicas_cannot_be_known(monkeypatch, settings):
    def replicas(self: TFServingHook) -> list[TFServingHook]:
        raise ValueError(f"Connection {self.tfserving_conn_id!r} needs host, port and extra.grpc_port")

    monkeypatch.setattr(TFServingHook, "replicas", replicas)
    out = plugin.replica_logs(MODEL, 5, redactor=Redactor())
    prefix = settings.serving_container_prefix
    assert list(out) == [f"{prefix}-local (stable pool)", f"{prefix}-local-canary (canary pool)"]
    assert out[f"{prefix}-local (stable pool)"][0].startswith("(replicas unknown: ValueError: Connection")


@pytest.mark.parametrize(
    ("conn", "url"),
    [
        ("webhdfs://airflow@127.0.0.1:19870", "http://127.0.0.1:19870"),
        ("webhdfs://hdfs.example.com:9871?use_ssl=True", "https://hdfs.example.com:9871"),
        (
            '{"conn_type": "webhdfs", "host": "nn.local", "port": 9870, "extra": {"use_ssl": false}}',
            "http://nn.local:9870",
        ),
    ],
)
def test_webhdfs_url_from_the_connection(monkeypatch, conn, url):
    monkeypatch.setenv("AIRFLOW_CONN_WEBHDFS_DEFAULT", conn)
    assert plugin.webhdfs_base_url() == url


def test_webhdfs_url_from_the_settings_without_a_connection(monkeypatch, settings):
    monkeypatch.delenv("AIRFLOW_CONN_WEBHDFS_DEFAULT", raising=False)
    assert plugin.webhdfs_base_url() == settings.webhdfs_url


def test_prometheus_down_is_available_false_through_the_registry(monkeypatch, tmp_path):
    """The plugin's real source (PrometheusHook on a port nothing listens on) behind the real app: 200, not 500."""
    import socket
    import warnings

    from tfdeploy.registry.api import create_app
    from tfdeploy.registry.config import RegistryConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: connections to it are refused
    monkeypatch.setenv(
        "AIRFLOW_CONN_PROMETHEUS_DEFAULT", f'{{"conn_type": "http", "host": "127.0.0.1", "port": {port}}}'
    )
    app = create_app(
        RegistryConfig(db_url=f"sqlite:///{tmp_path / 'registry.db'}", api_token="t0ken-for-the-test"),
        performance_source=plugin.model_performance,
    )
    auth = {"Authorization": "Bearer t0ken-for-the-test"}
    with TestClient(app) as client:
        assert client.post("/v1/models", json={"name": MODEL}, headers=auth).status_code == 201
        resp = client.get(f"/v1/models/{MODEL}/performance", headers=auth)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["available"] is False and "pools" not in body
    assert body["reason"].startswith(f"PrometheusError: Prometheus at http://127.0.0.1:{port}/api/v1/query did not")
