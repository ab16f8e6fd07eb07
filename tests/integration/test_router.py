"""The router (HAProxy) as the stack runs it: clients' REST and gRPC reach the `local` target's replica through
it, a replica that stops answering is taken out of rotation by the health check (fast 503s, no hangs), and it
comes back once it answers again. The replica here is the stand-in image serving TF Serving's test model,
started on the target's replica ports; the test removes it (the pipeline's own tests recreate theirs).

Gray release and QoS at the router (small bounded loads on 127.0.0.1): a weight sends that share of unversioned
calls to the canary pool (X-Served-By tells the side), X-Route-Key keeps a caller on one side, a per-model rate
limit answers 429 with Retry-After, and under overload low-priority calls are refused at once (429) while
high-priority ones are queued first and served. Every weight, limit and maxconn a test sets is put back in a
`finally`, so the tests run alone and in any order."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

import stack

from .serving_hosts import replica_address, replica_engine

ROOT = Path(__file__).resolve().parents[2]
HP = ROOT / "tests" / "data" / "tfserving-testdata" / "saved_model_half_plus_two_cpu"
HP2_2V = ROOT / "tests" / "data" / "tfserving-testdata" / "saved_model_half_plus_two_2_versions"


POOLS = {"stable": ("local_rest", "local_grpc"), "canary": ("local_canary_rest", "local_canary_grpc")}


def replica_states(settings, pool: str = "stable") -> dict[str, str]:
    rows = [r.split(",") for r in stack.router_command(settings, "show stat").splitlines() if r and r[0] != "#"]
    return {f"{r[0]}/{r[1]}": r[17] for r in rows if r[0] in POOLS[pool] and r[1] not in ("FRONTEND", "BACKEND")}


def serves(port: int, model: str, address: str = "127.0.0.1") -> bool:
    try:
        return requests.get(f"http://{address}:{port}/v1/models/{model}", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def wait_for(what: str, check, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@contextlib.contextmanager
def stable_replicas(settings, docker_client, models: Path, model: str):
    """The stable pool's replicas (containers on the replica ports + 2i, each on its Docker host at that host's
    address: tests/integration/serving_hosts.py) serving ``models/<model>``, in place of the pipeline's; removed
    afterwards."""
    names = [f"{settings.serving_container_prefix}-local"] + [
        f"{settings.serving_container_prefix}-local-{i}" for i in range(1, settings.stable_replicas)
    ]
    engines = [replica_engine(settings, i) for i in range(len(names))]
    addresses = [replica_address(settings, i) for i in range(len(names))]
    for engine, name in zip(engines, names, strict=True):
        with contextlib.suppress(Exception):
            engine.containers.get(name).remove(force=True)
    models.chmod(0o755)
    containers = [
        engine.containers.run(
            "local/tfserving-compat:latest",
            detach=True,
            name=name,
            environment={"MODEL_NAME": model},
            volumes={str(models): {"bind": "/models", "mode": "ro"}},
            ports={
                "8500/tcp": (address, settings.replica_grpc_port + 2 * i),
                "8501/tcp": (address, settings.replica_rest_port + 2 * i),
            },
            labels={"tfdeploy.serving.model-root": str(settings.state_dir / "serving" / "router-test")},
        )
        for i, (engine, name, address) in enumerate(zip(engines, names, addresses, strict=True))
    ]
    try:
        # the replicas themselves first: a container just replaced on the same ports can still look UP
        for i, address in enumerate(addresses):
            port = settings.replica_rest_port + 2 * i
            wait_for("the replica to serve", lambda port=port, address=address: serves(port, model, address), 60)
        wait_for("the replicas to be UP in the router", lambda: set(replica_states(settings).values()) == {"UP"}, 60)
        yield containers
    finally:
        for container in containers:
            with contextlib.suppress(Exception):
                container.remove(force=True)


@pytest.fixture
def replicas(settings, docker_client, tmp_path):
    """The stable pool's replicas serving TF Serving's half_plus_two test model (v123)."""
    models = tmp_path / "models"
    shutil.copytree(HP, models / "half_plus_two")
    with stable_replicas(settings, docker_client, models, "half_plus_two") as containers:
        yield containers


@pytest.fixture
def replica(replicas):
    return replicas[0]


def test_clients_reach_the_replica_through_the_router(settings, replica):
    url = f"http://127.0.0.1:{settings.serving_rest_port}/v1/models/half_plus_two:predict"
    resp = requests.post(url, json={"instances": [1.0, 2.0]}, timeout=10)
    assert resp.status_code == 200, (resp.status_code, resp.headers, resp.text[:300])
    assert resp.json() == {"predictions": [2.5, 3.0]}

    from tfdeploy.hooks.tfserving import TFServingHook

    # gRPC (h2) through the router: the model's status over ModelService
    through_router = TFServingHook(
        None, grpc_target=f"127.0.0.1:{settings.serving_grpc_port}", rest_url="http://unused", timeout=10
    )
    assert through_router.model_status("half_plus_two") == {123: ("AVAILABLE", "")}
    through_router.close()
    metrics = requests.get(f"http://127.0.0.1:{settings.router_stats_port}/metrics", timeout=10).text
    assert 'haproxy_backend_http_responses_total{proxy="local_rest",code="2xx"}' in metrics


def test_a_killed_replica_costs_only_requests_until_it_is_marked_down(settings, replicas):
    assert len(replicas) >= 2, "the stable pool has at least two replicas by default"
    url = f"http://127.0.0.1:{settings.serving_rest_port}/v1/models/half_plus_two:predict"
    results: list[tuple[float, int]] = []
    stop = threading.Event()

    def client() -> None:
        with requests.Session() as session:
            session.trust_env = False
            while not stop.is_set() and len(results) < 5000:
                t0 = time.monotonic()
                try:
                    results.append((t0, session.post(url, json={"instances": [1.0]}, timeout=10).status_code))
                except requests.RequestException:
                    results.append((t0, 0))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        time.sleep(1)
        killed = time.monotonic()
        replicas[0].kill()
        wait_for("the router to take it out", lambda: replica_states(settings)["local_rest/replica1"] == "DOWN")
        down = time.monotonic()
        time.sleep(1)
    finally:
        stop.set()
        thread.join(timeout=30)
    failed = [t for t, code in results if code != 200]
    assert len(results) > 50
    # only requests sent between the kill and the router marking it down can fail; every one after succeeds
    assert all(killed - 0.5 <= t <= down for t in failed), (killed, down, failed)
    assert all(code == 200 for t, code in results if t > down)
    assert down - killed < 3


def test_a_silent_pool_is_taken_out_and_answers_503_at_once(settings, replicas):
    url = f"http://127.0.0.1:{settings.serving_rest_port}/v1/models/half_plus_two"
    for container in replicas:
        container.pause()  # alive but not answering: only the health check can tell
    try:
        wait_for("the health check to mark them DOWN", lambda: set(replica_states(settings).values()) == {"DOWN"})
        t0 = time.monotonic()
        resp = requests.get(url, timeout=10)
        assert resp.status_code == 503 and time.monotonic() - t0 < 1.0  # refused at once, not a hung request
    finally:
        for container in replicas:
            container.unpause()
    wait_for("the replicas to be back", lambda: set(replica_states(settings).values()) == {"UP"})
    assert requests.get(url, timeout=10).status_code == 200


def test_router_port_in_use_is_a_clear_error(settings, monkeypatch):
    # the stack refuses to start a second router on the same ports, naming the port
    monkeypatch.setattr(stack, "running_pid", lambda s, name: None)
    monkeypatch.setattr(stack, "stop_service", lambda s, name: None)
    with pytest.raises(stack.StackError, match=f"127.0.0.1:{settings.serving_rest_port}"):
        stack.up_router(settings)


def test_grpc_without_a_replica_fails_fast(settings):
    for i in range(settings.stable_replicas):
        name = f"{settings.serving_container_prefix}-local" + (f"-{i}" if i else "")
        with contextlib.suppress(Exception):
            replica_engine(settings, i).containers.get(name).remove(force=True)
    wait_for("no replica UP", lambda: "UP" not in set(replica_states(settings).values()))
    from tfdeploy.hooks.tfserving import TFServingHook

    hook = TFServingHook(None, grpc_target=f"127.0.0.1:{settings.serving_grpc_port}", rest_url="http://x", timeout=20)
    t0 = time.monotonic()
    with pytest.raises(Exception, match="UNAVAILABLE"):
        hook.model_status("half_plus_two")
    # the router answers 503 at once (grpc-python retries that transparently for ~3 s), long before the timeout
    assert time.monotonic() - t0 < 10
    hook.close()


@pytest.fixture
def canary_replica(settings, replica, docker_client, tmp_path):
    """Beside the stable replicas (half_plus_two v123), the canary pool's replica serving half_plus_two v124 only,
    with the label `canary` on it: unversioned calls the router sends to the canary pool get v124."""
    name = f"{settings.serving_container_prefix}-local-canary"
    with contextlib.suppress(Exception):
        docker_client.containers.get(name).remove(force=True)
    models = tmp_path / "canary-models"
    shutil.copytree(HP2_2V, models / "hp2")
    (models / "hp2" / "00000123").rename(models / "hp2" / ".not-a-version")
    shutil.copytree(HP, models / "half_plus_two")
    shutil.rmtree(models / "half_plus_two" / "00000123")
    shutil.copytree(models / "hp2" / "00000124", models / "half_plus_two" / "124")
    (models / "models.config").write_text(
        "model_config_list { config { name: 'half_plus_two' base_path: '/models/half_plus_two' "
        "model_platform: 'tensorflow' version_labels { key: 'canary' value: 124 } } }"
    )
    models.chmod(0o755)
    canary = docker_client.containers.run(
        "local/tfserving-compat:latest",
        ["--model_config_file=/models/models.config", "--allow_version_labels_for_unavailable_models=true"],
        detach=True,
        name=name,
        volumes={str(models): {"bind": "/models", "mode": "ro"}},
        ports={
            "8500/tcp": ("127.0.0.1", settings.canary_replica_grpc_port),
            "8501/tcp": ("127.0.0.1", settings.canary_replica_rest_port),
        },
    )
    try:
        wait_for("the canary replica to serve", lambda: serves(settings.canary_replica_rest_port, "half_plus_two"), 60)
        wait_for("the canary pool UP", lambda: set(replica_states(settings, "canary").values()) == {"UP"}, 60)
        yield canary
    finally:
        canary.remove(force=True)


def test_calls_naming_a_candidate_reach_the_canary_pool_and_nothing_else_does(settings, canary_replica):
    """The stable replica serves v123; a canary replica serves v124. Unversioned calls and /versions/123 reach
    the stable pool; /labels/canary, and /versions/124 once the pipeline routes it, reach the canary pool."""
    from tfdeploy.hooks.router import RouterHook

    router = RouterHook("router_local")  # its Connection comes from stack.airflow_env (tests/conftest.py)
    try:
        base = f"http://127.0.0.1:{settings.serving_rest_port}/v1/models/half_plus_two"

        def version_of(path: str) -> int | None:
            resp = requests.get(f"{base}{path}/metadata", timeout=10)
            return int(resp.json()["model_spec"]["version"]) if resp.status_code == 200 else None

        assert version_of("") == 123 and version_of("/versions/123") == 123
        assert version_of("/labels/canary") == 124  # the label lives in the canary pool only
        assert version_of("/versions/124") is None  # not routed yet: the stable pool does not have it
        router.route_candidate("half_plus_two", 124)
        assert version_of("/versions/124") == 124 and version_of("/VERSIONS/124") == 124
        assert version_of("") == 123  # unversioned calls never move
        assert "half_plus_two/124 canary" in stack.router_map(settings).read_text()  # a restarted router keeps it
        assert router.unroute_candidates("half_plus_two") == ["half_plus_two/124"]
        assert version_of("/versions/124") is None
        assert stack.router_map(settings).read_text() == ""
    finally:
        with contextlib.suppress(Exception):
            router.unroute_candidates("half_plus_two")


# ----------------------------------------------------------------------------- gray release and QoS

MODEL = "half_plus_two"


def predict_url(settings, model: str = MODEL, path: str = "") -> str:
    return f"http://127.0.0.1:{settings.serving_rest_port}/v1/models/{model}{path}:predict"


def sides_of(url: str, count: int, headers: dict[str, str] | None = None) -> list[str]:
    """``count`` predict calls one after the other: the side that answered each (X-Served-By); all must be 200."""
    sides = []
    with requests.Session() as session:
        session.trust_env = False
        for _ in range(count):
            resp = session.post(url, json={"instances": [1.0]}, headers=headers or {}, timeout=10)
            assert resp.status_code == 200, (resp.status_code, resp.text[:300])
            sides.append(resp.headers.get("X-Served-By", ""))
    return sides


def map_file(settings, name: str) -> dict[str, str]:
    lines = stack.router_map(settings, name).read_text().splitlines()
    return dict(line.split(maxsplit=1) for line in lines if line.strip())


@pytest.fixture
def router():
    from tfdeploy.hooks.router import RouterHook

    return RouterHook("router_local")  # its Connection comes from stack.airflow_env (tests/conftest.py)


def test_a_weight_sends_that_share_of_unversioned_calls_to_the_canary_pool(settings, canary_replica, router):
    url = predict_url(settings)
    try:
        before = router.traffic(MODEL)
        router.set_weight(MODEL, 30)
        assert router.weights()[MODEL] == 30 and map_file(settings, "weights")[MODEL] == "30"
        sides = sides_of(url, 400)
        assert set(sides) <= {"stable", "canary"}
        share = 100 * sides.count("canary") / len(sides)
        assert 20 <= share <= 40, f"{share:.1f}% of 400 unversioned calls answered by the canary pool at weight 30"
        # X-Served-By tells the truth: the router's per-side counters (what judges a release) saw the same split
        window = {side: router.traffic(MODEL)[side] - before[side] for side in ("stable", "canary")}
        assert window["canary"].requests == sides.count("canary") and window["stable"].requests == sides.count("stable")
        # only unversioned inference calls are shared: a call naming a version stays where it is
        assert set(sides_of(predict_url(settings, path="/versions/123"), 50)) == {"stable"}

        router.set_weight(MODEL, 0)
        assert MODEL not in router.weights() and MODEL not in map_file(settings, "weights")
        assert set(sides_of(url, 100)) == {"stable"}
    finally:
        router.set_weight(MODEL, 0)


def test_a_route_key_keeps_a_caller_on_one_side(settings, canary_replica, router):
    url = predict_url(settings)
    keys = [f"user-{i}" for i in range(40)]
    try:
        router.set_weight(MODEL, 30)
        seen: dict[str, set[str]] = {key: set() for key in keys}
        for _round in range(5):
            for key in keys:
                seen[key] |= set(sides_of(url, 1, {"X-Route-Key": key}))
        assert all(len(sides) == 1 for sides in seen.values()), {k: v for k, v in seen.items() if len(v) > 1}
        on_canary = {key for key, sides in seen.items() if sides == {"canary"}}
        assert 0 < len(on_canary) < len(keys), f"{len(on_canary)} of {len(keys)} keys on the canary at 30%"
        # as the release goes on, a caller already on the candidate stays there
        router.set_weight(MODEL, 60)
        later = {key for key in keys if sides_of(url, 1, {"X-Route-Key": key}) == ["canary"]}
        assert on_canary < later, (sorted(on_canary), sorted(later))
    finally:
        router.set_weight(MODEL, 0)


def wait_for_no_rate(router, model: str) -> None:
    """Until the router's request rate for ``model`` (its `rates` table, over the last second) is back to 0, so
    that calls of an earlier test do not count against a limit."""

    def quiet() -> bool:
        for line in router.command("show table rates").splitlines():
            fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
            if fields.get("key") == model:
                return all(value == "0" for name, value in fields.items() if name.startswith("http_req_rate"))
        return True

    wait_for(f"no recent calls of {model} at the router", quiet, 10)


def test_a_rate_limit_answers_429_with_retry_after_above_it(settings, replica, router):
    url = predict_url(settings)
    wait_for_no_rate(router, MODEL)
    try:
        router.set_limit(MODEL, 5)
        assert router.limits()[MODEL] == 5 and map_file(settings, "limits")[MODEL] == "5"
        with requests.Session() as session:
            session.trust_env = False
            answers = [session.post(url, json={"instances": [1.0]}, timeout=10) for _ in range(30)]
        codes = [resp.status_code for resp in answers]
        assert codes[:5] == [200] * 5 and set(codes) == {200, 429}, codes
        refused = [resp for resp in answers if resp.status_code == 429]
        assert len(refused) >= 20, codes
        for resp in refused:
            assert resp.headers.get("Retry-After") == "1", resp.headers
            assert resp.headers.get("Content-Type", "").startswith("application/json")
            assert "rate limit" in resp.json()["error"]

        router.set_limit(MODEL, None)
        assert MODEL not in router.limits() and MODEL not in map_file(settings, "limits")
        assert len(sides_of(url, 30)) == 30  # all 200 again, at once
    finally:
        router.set_limit(MODEL, None)


@pytest.fixture(scope="module")
def slow_models(tmp_path_factory) -> Path:
    """A models directory with the example model's `slow` variant (correct, ~15 ms of matmuls per call) as
    `slow` version 1."""
    out = tmp_path_factory.mktemp("slow-model")
    build = subprocess.run(
        [
            sys.executable,
            str(ROOT / "include" / "example_model" / "build.py"),
            "--out",
            str(out / "build"),
            "--variant",
            "slow",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    shutil.copytree(out / "build" / "saved_model", out / "models" / "slow" / "1")
    return out / "models"


@pytest.fixture
def slow_replicas(settings, docker_client, slow_models):
    with stable_replicas(settings, docker_client, slow_models, "slow") as containers:
        yield containers


def test_under_overload_low_priority_is_refused_at_once_and_high_priority_is_served(settings, slow_replicas, router):
    """Capacity capped at one request per stable replica (runtime API): eight low-priority callers and three
    high-priority ones of the slow model. Low-priority calls that arrive while any call waits get 429 with
    Retry-After at once; every high-priority call is queued ahead of them and served."""
    url = predict_url(settings, "slow")
    servers = [f"replica{i + 1}" for i in range(settings.stable_replicas)]
    results: dict[str, list[tuple[int, float, str | None, str]]] = {"high": [], "low": []}
    stop = threading.Event()

    def caller(priority: str, limit: int) -> None:
        with requests.Session() as session:
            session.trust_env = False
            sent = 0
            while not stop.is_set() and sent < limit:
                sent += 1
                t0 = time.monotonic()
                try:
                    resp = session.post(
                        url, json={"instances": [[0.5, 0.0, 0.0, 0.0]]}, headers={"X-Priority": priority}, timeout=15
                    )
                    record = (resp.status_code, time.monotonic() - t0, resp.headers.get("Retry-After"), resp.text)
                except requests.RequestException as exc:
                    record = (0, time.monotonic() - t0, None, str(exc))
                results[priority].append(record)
                if priority == "low":
                    stop.wait(0.005)  # bounded: a refused caller does not spin

    threads = [threading.Thread(target=caller, args=("low", 400)) for _ in range(8)]
    threads += [threading.Thread(target=caller, args=("high", 200)) for _ in range(3)]
    try:
        for server in servers:
            answer = router.command(f"set maxconn server local_rest/{server} 1")
            assert answer.strip() == "", f"HAProxy refused set maxconn: {answer!r}"
        assert {row["slim"] for row in router.server_stats("local_rest").values()} == {"1"}
        for thread in threads:
            thread.start()
        time.sleep(4)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        for server in servers:
            router.command(f"set maxconn server local_rest/{server} {settings.serving_maxconn}")
    assert {row["slim"] for row in router.server_stats("local_rest").values()} == {str(settings.serving_maxconn)}

    high, low = results["high"], results["low"]
    assert len(high) >= 10 and [r[0] for r in high] == [200] * len(high), [r[:2] for r in high if r[0] != 200]
    assert {r[0] for r in low} <= {200, 429}, {r[0] for r in low}
    shed = [r for r in low if r[0] == 429]
    assert len(shed) >= 20, f"only {len(shed)} of {len(low)} low-priority calls refused"
    for _code, _seconds, retry_after, text in shed:
        assert retry_after == "1" and "overloaded" in json.loads(text)["error"], (retry_after, text[:200])
    # refused at once: far under the queue timeout (10 s) a queued call would wait before a 503
    shed_times = sorted(r[1] for r in shed)
    assert shed_times[-1] < 1.0 and shed_times[len(shed_times) // 2] < 0.1, shed_times[-5:]
