"""ReleaseStepTrigger: the bake of one gray-release step, run as the triggerer runs it (its async generator, until
its first event) with fakes for the live metrics and the registry's release controls. A breach or an abort sets
the weight to 0 itself; a pause holds the bake clock; too little traffic bakes again or fails; the router
unreachable is an error; the registry unreachable is not. Steps bake for a few hundredths of a second."""

from __future__ import annotations

import asyncio
import importlib
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from tfdeploy.core.errors import RegistryUnavailable, RouterError
from tfdeploy.core.release import Side, plan_release
from tfdeploy.triggers import release as release_module
from tfdeploy.triggers.release import ReleaseStepTrigger

MODEL = "demo_regressor"
STEP = 0.05  # seconds of bake
CHECK = 0.01  # seconds between looks
BASELINE = {"stable": Side(1000, 5, 0), "canary": Side(10, 0, 0)}
GOOD = {"stable": Side(2000, 10, 0), "canary": Side(110, 0, 0)}  # window: 100 candidate calls, no error
BAD = {"stable": Side(2000, 10, 0), "canary": Side(110, 0, 30)}  # window: 30% 5xx on the candidate
QUIET = {"stable": Side(2000, 10, 0), "canary": Side(15, 0, 0)}  # window: 5 candidate calls


class Router:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.fail: RouterError | None = None

    def set_weight(self, model: str, percent: int) -> None:
        if self.fail is not None:
            raise self.fail
        self.calls.append((model, percent))


class Metrics:
    """``ReleaseMetrics``: cumulative samples ``now`` (or ``fail``), the canary pool ``up``."""

    def __init__(self) -> None:
        self.now = GOOD
        self.up = True
        self.fail: RouterError | None = None
        self.router = Router()
        self.samples = 0
        self.targets: list[str] = []

    def __call__(self, target: str, **_: Any) -> Metrics:
        self.targets.append(target)
        return self

    def sample(self, model: str) -> dict[str, Side]:
        assert model == MODEL
        self.samples += 1
        if self.fail is not None:
            raise self.fail
        return dict(self.now)

    def candidate_up(self) -> bool:
        return self.up


@dataclass
class Control:
    paused: bool = False
    pending_action: str | None = None


@dataclass
class Registry:
    """``RegistryHook``'s release controls (``get_traffic``), or ``fail``."""

    control: Control = field(default_factory=Control)
    fail: BaseException | None = None
    reads: int = 0
    built: list[tuple[tuple, dict]] = field(default_factory=list)

    def __call__(self, *args: Any, **kwargs: Any) -> Registry:
        self.built.append((args, kwargs))
        return self

    def get_traffic(self, model: str) -> Control:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return self.control


@pytest.fixture
def metrics(monkeypatch: pytest.MonkeyPatch) -> Metrics:
    fake = Metrics()
    monkeypatch.setattr(release_module, "ReleaseMetrics", fake)
    return fake


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    fake = Registry()
    monkeypatch.setattr(release_module, "RegistryHook", fake)
    return fake


def trigger(*, extensions: int = 0, **plan: Any) -> ReleaseStepTrigger:
    options = {"steps": [10, 50, 100], "step_seconds": STEP, "check_seconds": CHECK, "min_requests": 20} | plan
    return ReleaseStepTrigger(
        model=MODEL,
        candidate=2,
        weight=10,
        plan=plan_release("canary", **options).to_dict(),
        baseline={side: values.to_dict() for side, values in BASELINE.items()},
        deadline=time.time() + options["step_seconds"],
        serving_target="local",
        registry_conn_id="tfdeploy_registry",
        extensions=extensions,
    )


async def first_event(step: ReleaseStepTrigger) -> dict[str, Any]:
    async for event in step.run():
        return event.payload
    raise AssertionError("the trigger ended without an event")


def run(step: ReleaseStepTrigger, timeout: float = 2.0) -> tuple[dict[str, Any], float]:
    """The first event and the seconds it took."""
    started = time.monotonic()
    payload = asyncio.run(asyncio.wait_for(first_event(step), timeout))
    return payload, time.monotonic() - started


# --------------------------------------------------------------------------- judged


def test_a_breach_fires_at_once_and_sets_the_weight_to_0(metrics: Metrics, registry: Registry) -> None:
    metrics.now = BAD
    before = time.time()
    event, took = run(trigger(step_seconds=5.0))
    assert event["status"] == "breach" and event["metric"] == "error_rate" and event["weight"] == 10
    assert "error rate 30.00% (30/100) on the candidate" in event["message"]
    assert event["values"]["candidate_requests"] == 100 and event["values"]["candidate_errors"] == 30
    assert metrics.router.calls == [(MODEL, 0)]
    assert before <= event["detected_at"] <= event["weight_zero_at"] <= time.time()
    assert took < 1.0 and metrics.samples == 1  # not waiting for the 5 s bake
    assert metrics.targets == ["local"]
    assert registry.built == [(("tfdeploy_registry",), {"max_attempts": 1, "timeout": 1.0})]


def test_a_breach_whose_weight_cannot_go_to_0_says_why(metrics: Metrics, registry: Registry) -> None:
    metrics.now = BAD
    metrics.router.fail = RouterError("router gone")
    event, _ = run(trigger())
    assert event["status"] == "breach" and event["weight_zero_error"] == "router gone"
    assert "weight_zero_at" not in event


def test_the_candidate_pool_down_is_a_breach(metrics: Metrics, registry: Registry) -> None:
    metrics.up = False
    event, _ = run(trigger())
    assert event["status"] == "breach" and event["metric"] == "candidate_available"
    assert metrics.router.calls == [(MODEL, 0)]


def test_a_good_step_passes_at_the_deadline(metrics: Metrics, registry: Registry) -> None:
    event, took = run(trigger())
    assert event["status"] == "passed" and event["message"] == "within thresholds" and event["extensions"] == 0
    assert event["values"]["candidate_requests"] == 100 and event["values"]["stable_requests"] == 1000
    assert took >= STEP * 0.8 and metrics.samples >= 2
    assert metrics.router.calls == []


def test_low_traffic_bakes_again_max_extensions_times_then_fires(metrics: Metrics, registry: Registry) -> None:
    metrics.now = QUIET
    event, took = run(trigger(low_traffic="extend", max_extensions=2))
    assert event["status"] == "low_traffic" and event["extensions"] == 2 and event["metric"] == "candidate_requests"
    assert "only 5 unversioned inference calls reached the candidate" in event["message"]
    assert took >= 3 * STEP * 0.8  # the bake and two more
    # failing closed takes the candidate out of the traffic at once, as a breach does
    assert metrics.router.calls == [("demo_regressor", 0)] and "weight_zero_at" in event


def test_low_traffic_extensions_already_used_count(metrics: Metrics, registry: Registry) -> None:
    """A re-deferred trigger (or a restarted triggerer) keeps the extensions it used."""
    metrics.now = QUIET
    event, took = run(trigger(extensions=2, low_traffic="extend", max_extensions=2))
    assert event["status"] == "low_traffic" and took < 2 * STEP


def test_enough_traffic_during_an_extension_passes(metrics: Metrics, registry: Registry) -> None:
    metrics.now = QUIET

    async def scenario() -> dict[str, Any]:
        task = asyncio.ensure_future(first_event(trigger(low_traffic="extend", max_extensions=2)))
        await asyncio.sleep(STEP * 1.5)  # the first bake is over: extended
        assert not task.done()
        metrics.now = GOOD
        return await asyncio.wait_for(task, 2)

    event = asyncio.run(scenario())
    assert event["status"] == "passed" and event["extensions"] == 1


def test_low_traffic_fail_fires_at_the_first_deadline(metrics: Metrics, registry: Registry) -> None:
    metrics.now = QUIET
    event, took = run(trigger(low_traffic="fail", max_extensions=2))
    assert event["status"] == "low_traffic" and event["extensions"] == 0
    assert STEP * 0.8 <= took < 2 * STEP + 0.5


# --------------------------------------------------------------------------- the registry's controls


def test_an_abort_fires_aborted_and_sets_the_weight_to_0(metrics: Metrics, registry: Registry) -> None:
    registry.control.pending_action = "abort"
    event, took = run(trigger(step_seconds=5.0))
    assert event["status"] == "aborted" and event["weight"] == 10 and "weight_zero_at" in event
    assert metrics.router.calls == [(MODEL, 0)]
    assert took < 1.0


def test_promote_now_fires_promote(metrics: Metrics, registry: Registry) -> None:
    registry.control.pending_action = "promote"
    event, took = run(trigger(step_seconds=5.0))
    assert event["status"] == "promote" and event["weight"] == 10
    assert metrics.router.calls == [] and took < 1.0


def test_a_breach_wins_over_promote_now(metrics: Metrics, registry: Registry) -> None:
    metrics.now = BAD
    registry.control.pending_action = "promote"
    event, _ = run(trigger())
    assert event["status"] == "breach" and metrics.router.calls == [(MODEL, 0)]


def test_paused_holds_the_bake_until_resumed(metrics: Metrics, registry: Registry) -> None:
    registry.control.paused = True

    async def scenario() -> tuple[dict[str, Any], float]:
        task = asyncio.ensure_future(first_event(trigger(step_seconds=0.1)))
        await asyncio.sleep(0.2)  # past the deadline
        assert not task.done(), "passed while paused"
        registry.control.paused = False
        resumed = time.monotonic()
        event = await asyncio.wait_for(task, 2)
        return event, time.monotonic() - resumed

    event, after_resume = asyncio.run(scenario())
    assert event["status"] == "passed"
    assert after_resume >= 0.05  # the clock stopped: most of the bake is still to do after the resume


def test_paused_holds_low_traffic_too(metrics: Metrics, registry: Registry) -> None:
    metrics.now = QUIET
    registry.control.paused = True

    async def scenario() -> None:
        task = asyncio.ensure_future(first_event(trigger(low_traffic="fail")))
        await asyncio.sleep(STEP * 3)
        assert not task.done()
        task.cancel()

    asyncio.run(scenario())


def test_breaches_are_judged_while_paused(metrics: Metrics, registry: Registry) -> None:
    metrics.now = BAD
    registry.control.paused = True
    event, _ = run(trigger())
    assert event["status"] == "breach" and metrics.router.calls == [(MODEL, 0)]


def test_the_registry_unreachable_is_ignored(metrics: Metrics, registry: Registry) -> None:
    registry.fail = RegistryUnavailable("registry down")
    event, _ = run(trigger())
    assert event["status"] == "passed" and registry.reads >= 2


# --------------------------------------------------------------------------- the router unreachable


def test_the_router_unreachable_fires_error_and_leaves_the_weight(metrics: Metrics, registry: Registry) -> None:
    metrics.fail = RouterError("the router's runtime API at /run/haproxy.sock did not answer `show`")
    event, took = run(trigger(step_seconds=5.0))
    assert event == {"status": "error", "message": str(metrics.fail), "weight": 10}
    assert metrics.router.calls == [] and took < 1.0


# --------------------------------------------------------------------------- the triggerer's view


def test_serialize_round_trips_into_the_constructor() -> None:
    original = trigger(extensions=1)
    path, kwargs = original.serialize()
    module, _, name = path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    assert cls is ReleaseStepTrigger
    again = cls(**kwargs)
    assert again.serialize() == (path, kwargs)
    assert kwargs["extensions"] == 1 and kwargs["weight"] == 10 and kwargs["candidate"] == 2
    assert kwargs["baseline"]["canary"] == BASELINE["canary"].to_dict()
