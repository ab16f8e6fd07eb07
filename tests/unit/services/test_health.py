"""A production model's health with fakes (services/health.py): the golden inputs in TF Serving's row format,
parity through a server against validation's predictions, and ``check_model``'s status from the replicas'
model status, the golden predict through the router and Prometheus' rates (budgets)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from tfdeploy.core.errors import PrometheusError, ServingRequestError, ServingUnavailable
from tfdeploy.services.health import STATUSES, Budgets, HealthReport, check_model, instances, parity_problem

MODEL = "demo_regressor"
REPORT = {
    "goldenInputs": [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
    "goldenPredictions": [[0.5], [1.5], [2.5]],
    "signatureName": "serving_default",
}


def unavailable(url: str = "http://127.0.0.1:1") -> ServingUnavailable:
    return ServingUnavailable("connection refused", status_code=None, error="refused", method="GET", url=url)


class FakeServer:
    """A TF Serving replica or the router: ``statuses`` (version -> state) for ``model_status``, ``answer`` for
    ``predict`` (rows -> predictions), ``error`` raised by both when set. Every call is recorded."""

    def __init__(
        self,
        rest_url: str = "http://127.0.0.1:8501",
        *,
        statuses: dict[int, str] | None = None,
        answer: Any = None,
        error: Exception | None = None,
    ) -> None:
        self.rest_url = rest_url
        self.statuses = statuses if statuses is not None else {2: "AVAILABLE"}
        self.answer = answer if answer is not None else (lambda rows: [[0.5], [1.5], [2.5]][: len(rows)])
        self.error = error
        self.predicts: list[dict[str, Any]] = []

    def model_status(self, model: str) -> dict[int, tuple[str, str]]:
        if self.error is not None:
            raise self.error
        return {v: (state, "") for v, state in self.statuses.items()}

    def predict(self, model: str, rows: list[Any], *, signature_name: str | None = None, **spec: Any) -> dict:
        self.predicts.append({"model": model, "rows": rows, "signature_name": signature_name, **spec})
        if self.error is not None:
            raise self.error
        return {"predictions": self.answer(rows)}


class FakePrometheus:
    """``scalar`` answers by the query's kind: the request rate, the failed requests' rate, the p99 in ms."""

    def __init__(
        self, rate: float | None = 10.0, errors: float | None = 0.0, p99_ms: float | None = 20.0, error: bool = False
    ) -> None:
        self.values = {"rate": rate, "errors": errors, "p99": p99_ms}
        self.error = error
        self.queries: list[str] = []

    def scalar(self, expr: str) -> float | None:
        self.queries.append(expr)
        if self.error:
            raise PrometheusError(f"Prometheus at http://127.0.0.1:9 did not answer {expr!r}")
        if expr.startswith("histogram_quantile"):
            return self.values["p99"]
        return self.values["errors"] if 'status!="OK"' in expr else self.values["rate"]


def check(
    replicas: list[FakeServer] | None = None,
    router: FakeServer | None = None,
    prometheus: FakePrometheus | None = None,
    report: dict[str, Any] | None = None,
    budgets: Budgets | None = None,
) -> HealthReport:
    return check_model(
        MODEL,
        2,
        REPORT if report is None else report,
        replicas=replicas if replicas is not None else [FakeServer(), FakeServer("http://127.0.0.1:8503")],
        router=router or FakeServer("http://127.0.0.1:8080"),
        prometheus=prometheus,
        budgets=budgets or Budgets(),
    )


# --------------------------------------------------------------------------- instances


def test_instances_of_a_list_of_rows_are_the_rows() -> None:
    assert instances([[1, 2], [3, 4]]) == [[1, 2], [3, 4]]
    assert instances(((1, 2),)) == [(1, 2)]


def test_instances_of_named_inputs_are_one_object_per_row() -> None:
    assert instances({"x": [1, 2], "mask": [0, 1]}) == [{"x": 1, "mask": 0}, {"x": 2, "mask": 1}]
    assert instances({}) == []


# --------------------------------------------------------------------------- parity_problem


def test_parity_within_tolerance_is_no_problem() -> None:
    server = FakeServer(answer=lambda rows: [[0.50001], [1.5], [2.5]][: len(rows)])

    diff, problem = parity_problem(server, MODEL, REPORT, 1e-4, how="the router")

    assert problem is None and diff == pytest.approx(1e-5)
    [call] = server.predicts
    assert call == {"model": MODEL, "rows": REPORT["goldenInputs"], "signature_name": "serving_default"}


def test_parity_difference_over_tolerance_is_a_problem() -> None:
    server = FakeServer(answer=lambda rows: [[0.5], [1.5], [9.5]])

    diff, problem = parity_problem(server, MODEL, REPORT, 1e-4, how="v2")

    assert diff == pytest.approx(7.0)
    assert problem == "served outputs via v2 differ from validation's by 7 (> 0.0001)"


def test_parity_rows_spec_signature_and_output_key() -> None:
    """``rows`` limits the golden inputs (and the predictions compared), ``spec`` names the version or label,
    ``outputKey`` picks the output of named outputs, the report's signature is asked for."""
    report = REPORT | {"signatureName": "predict", "outputKey": "y", "goldenPredictions": [0.5, 1.5, 2.5]}
    server = FakeServer(answer=lambda rows: [{"y": 0.5, "other": 99.0}])

    diff, problem = parity_problem(server, MODEL, report, 1e-4, how="the label", rows=1, label="canary")

    assert (diff, problem) == (0.0, None)
    assert server.predicts == [{"model": MODEL, "rows": [[1.0, 2.0]], "signature_name": "predict", "label": "canary"}]


def test_parity_without_a_signature_name_asks_for_serving_default() -> None:
    server = FakeServer()
    parity_problem(server, MODEL, {k: v for k, v in REPORT.items() if k != "signatureName"}, 1e-4, how="x", rows=2)
    assert server.predicts[0]["signature_name"] == "serving_default"
    assert len(server.predicts[0]["rows"]) == 2


def test_parity_of_a_server_that_does_not_answer() -> None:
    server = FakeServer(error=unavailable())

    diff, problem = parity_problem(server, MODEL, REPORT, 1e-4, how="the router", version=2)

    assert diff is None
    assert problem is not None and problem.startswith("golden inputs via the router were not answered: ")
    assert "connection refused" in problem
    assert server.predicts[0]["version"] == 2


def test_parity_of_outputs_of_another_shape() -> None:
    server = FakeServer(answer=lambda rows: [[0.5, 0.1], [1.5, 0.1], [2.5, 0.1]])

    diff, problem = parity_problem(server, MODEL, REPORT, 1e-4, how="the router")

    assert diff is None
    assert problem == "served outputs via the router have 6 values, validation's 3 (shape [3, 2] against [3, 1])"


@pytest.mark.parametrize("served", [math.nan, math.inf])
def test_parity_of_non_finite_outputs_is_a_problem(served: float) -> None:
    server = FakeServer(answer=lambda rows: [[served] for _ in rows])

    diff, problem = parity_problem(server, MODEL, REPORT, 1e-4, how="the router")

    assert diff is not None and not math.isfinite(diff)
    assert problem is not None and "differ from validation's" in problem


# --------------------------------------------------------------------------- check_model


def test_every_check_passing_is_healthy() -> None:
    prometheus = FakePrometheus(rate=10.0, errors=0.1, p99_ms=20.0)
    router = FakeServer("http://127.0.0.1:8080")

    health = check(router=router, prometheus=prometheus)

    assert (health.model, health.version, health.status, health.problems) == (MODEL, 2, "healthy", [])
    assert health.checks == {
        "replicas": {"http://127.0.0.1:8501": "AVAILABLE", "http://127.0.0.1:8503": "AVAILABLE"},
        "goldenMaxDiff": 0.0,
        "requestRate": 10.0,
        "errorRate": pytest.approx(0.01),
        "p99Ms": 20.0,
    }
    # one golden row through the router, unversioned (as clients call)
    assert router.predicts == [{"model": MODEL, "rows": [[1.0, 2.0]], "signature_name": "serving_default"}]
    assert health.details() == {"check": "model_health", **health.checks, "problems": []}


def test_a_replica_without_the_version_is_degraded() -> None:
    replicas = [FakeServer(), FakeServer("http://127.0.0.1:8503", statuses={1: "AVAILABLE", 2: "LOADING"})]

    health = check(replicas)

    assert health.status == "degraded"
    assert health.checks["replicas"]["http://127.0.0.1:8503"] == "LOADING"
    [problem] = health.problems
    assert problem.startswith("v2 is AVAILABLE on 1 of 2 replicas")


def test_an_unreachable_replica_is_degraded_and_named() -> None:
    replicas = [FakeServer(), FakeServer("http://127.0.0.1:8503", error=unavailable())]

    health = check(replicas)

    assert health.status == "degraded"
    assert health.checks["replicas"]["http://127.0.0.1:8503"] == "unreachable (ServingUnavailable)"


def test_no_replica_serving_the_version_is_failing() -> None:
    replicas = [FakeServer(statuses={1: "AVAILABLE"}), FakeServer("http://127.0.0.1:8503", statuses={})]

    health = check(replicas)

    assert health.status == "failing"
    assert health.checks["replicas"] == {"http://127.0.0.1:8501": "NOT_LOADED", "http://127.0.0.1:8503": "NOT_LOADED"}
    assert health.problems[0].startswith("v2 is AVAILABLE on none of 2 replicas")


def test_wrong_answers_through_the_router_are_failing() -> None:
    health = check(router=FakeServer(answer=lambda rows: [[42.0]]))

    assert health.status == "failing"
    assert health.checks["goldenMaxDiff"] == pytest.approx(41.5)
    assert health.problems == ["served outputs via the router differ from validation's by 41.5 (> 0.0001)"]


def test_no_answer_through_the_router_is_failing() -> None:
    error = ServingRequestError("HTTP 503", status_code=503, error="", method="POST", url="http://127.0.0.1:8080")
    health = check(router=FakeServer(error=error))

    assert health.status == "failing"
    assert health.checks["goldenMaxDiff"] is None
    assert health.problems[0].startswith("golden inputs via the router were not answered")


def test_the_tolerance_is_the_budgets() -> None:
    router = FakeServer(answer=lambda rows: [[0.6]])
    assert check(router=router).status == "failing"
    assert check(router=router, budgets=Budgets(tolerance=0.2)).status == "healthy"


def test_without_golden_predictions_parity_is_not_checked_but_said() -> None:
    router = FakeServer()

    health = check(router=router, report={"goldenInputs": [[1.0, 2.0]]})

    assert health.status == "healthy"
    assert health.checks["goldenMaxDiff"] is None
    assert health.problems == ["no golden predictions recorded at validation: parity not checked"]
    assert router.predicts == []


def test_without_prometheus_no_rates() -> None:
    health = check(prometheus=None)
    assert set(health.checks) == {"replicas", "goldenMaxDiff"}


def test_prometheus_unreachable_is_recorded_not_counted() -> None:
    health = check(prometheus=FakePrometheus(error=True))

    assert health.status == "healthy" and health.problems == []
    assert health.checks["prometheus"].startswith("unreachable: Prometheus at http://127.0.0.1:9 did not answer")
    assert "requestRate" not in health.checks


def test_an_error_rate_over_budget_is_degraded() -> None:
    health = check(prometheus=FakePrometheus(rate=10.0, errors=1.0), budgets=Budgets(max_error_rate=0.05))

    assert health.status == "degraded"
    assert health.checks["errorRate"] == pytest.approx(0.1)
    assert health.problems == ["error rate 10.0% over the last 5m (budget 5.0%)"]


def test_a_p99_over_budget_is_degraded() -> None:
    health = check(prometheus=FakePrometheus(p99_ms=750.0), budgets=Budgets(p99_ms=500.0, window="2m"))

    assert health.status == "degraded"
    assert health.problems == ["p99 750 ms over the last 2m (budget 500 ms)"]


def test_no_traffic_has_no_error_rate_and_no_problem() -> None:
    """No requests in the window: Prometheus gives no series (None) or 0; neither is an error rate."""
    for rate in (None, 0.0):
        health = check(prometheus=FakePrometheus(rate=rate, errors=None, p99_ms=None))
        assert health.status == "healthy"
        assert (health.checks["requestRate"], health.checks["errorRate"], health.checks["p99Ms"]) == (rate, None, None)


def test_the_queries_name_the_model_and_the_window() -> None:
    prometheus = FakePrometheus()

    check_model(
        'demo"regressor',
        2,
        {},
        replicas=[FakeServer()],
        router=FakeServer(),
        prometheus=prometheus,  # type: ignore[arg-type]
        budgets=Budgets(window="10m"),
    )

    assert len(prometheus.queries) == 3
    for query in prometheus.queries:
        assert 'model_name="demoregressor"' in query and "[10m]" in query  # quotes cannot break out of the label
    assert 'status!="OK"' in prometheus.queries[1]
    assert prometheus.queries[2].startswith("histogram_quantile(0.99, ") and prometheus.queries[2].endswith("/ 1000")


def test_the_worst_status_wins_and_every_problem_is_kept() -> None:
    replicas = [FakeServer(), FakeServer("http://127.0.0.1:8503", statuses={})]
    health = check(replicas, router=FakeServer(answer=lambda rows: [[9.0]]), prometheus=FakePrometheus(p99_ms=900.0))

    assert health.status == "failing"
    assert len(health.problems) == 3  # degraded replica, failing parity, degraded p99: failing stays


def test_worse_never_improves_the_status() -> None:
    report = HealthReport(MODEL, 2)
    report.worse("failing", "a")
    report.worse("degraded", "b")
    assert (report.status, report.problems) == ("failing", ["a", "b"])
    assert STATUSES == ("healthy", "degraded", "failing")


@pytest.mark.parametrize("served", [math.nan, math.inf])
def test_details_of_non_finite_answers_are_strict_json(served: float) -> None:
    """The registry hook sends JSON with ``allow_nan=False`` (requests): a model answering NaN (or Prometheus'
    +Inf p99) must still be recorded as failing, not fail the health check."""
    health = check(router=FakeServer(answer=lambda rows: [[served]]), prometheus=FakePrometheus(p99_ms=math.inf))

    assert health.status == "failing"
    details = health.details()
    json.dumps(details, allow_nan=False)
    assert details["goldenMaxDiff"] == str(served) and details["p99Ms"] == "inf"
