"""Diagnosis bundles against the test stack: a model served by both pools of the `local` target (one the stack
already serves, else TF Serving's half_plus_two test model staged into both pools through the pipeline's own
ServingTargetService), secrets planted in a replica's real container log, the collection run directly (and,
when Airflow is up, through the model_diagnose DAG over the REST API); the archive downloaded from HDFS over
WebHDFS, every part the manifest lists found in it, and no configured secret in any of its files (the secrets
read from `TFDEPLOY_STACK=test stack.py env`, as the services get them)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import requests

from tfdeploy.core.redaction import LITERAL_MIN, SHORT_MIN

ROOT = Path(__file__).resolve().parents[2]
HP_VERSION = ROOT / "tests" / "data" / "tfserving-testdata" / "saved_model_half_plus_two_cpu" / "00000123"


def stack_env() -> dict[str, str]:
    """The test stack's environment as stack.py prints it (what every Airflow component runs with)."""
    env = {**os.environ, "TFDEPLOY_STACK": "test"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "include" / "scripts" / "stack.py"), "env"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    values = {}
    for line in out.splitlines():
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            values[name] = shlex.split(value)[0] if value else ""
    return values


def configured_secrets(settings) -> dict[str, str]:
    """Each secret the stack configures, by where it comes from: the Fernet key, the JWT secret, the registry API
    token, the admin password, every Connection's password and (with credentials or not) URI, the secrets dir."""
    env = stack_env()
    found = {
        "fernet key": env["AIRFLOW__CORE__FERNET_KEY"],
        "JWT secret": env["AIRFLOW__API_AUTH__JWT_SECRET"],
        "registry API token": env["REGISTRY_API_TOKEN"],
        "admin password": settings.airflow_password,
    }
    for name, value in env.items():
        if not name.startswith("AIRFLOW_CONN_"):
            continue
        found[f"{name} value"] = value
        with contextlib.suppress(ValueError, AttributeError):
            if password := json.loads(value).get("password"):
                found[f"{name} password"] = password
    for path in sorted((settings.state_dir / "secrets").iterdir()):
        if path.is_file():
            found[f"secrets/{path.name}"] = path.read_text().strip()
    assert len(found["fernet key"]) >= 32 and len(found["registry API token"]) >= 32
    return {k: v for k, v in found.items() if len(v) >= SHORT_MIN}


def leaked(text: str, secret: str) -> bool:
    """``secret`` in ``text`` as the redactor matches it: anywhere when long, as a whole word when short."""
    if len(secret) >= LITERAL_MIN:
        return secret in text
    return re.search(rf"(?<![A-Za-z0-9_]){re.escape(secret)}(?![A-Za-z0-9_])", text) is not None


@pytest.fixture(scope="module")
def served(settings, hdfs_ready, docker_client):
    """(model, staged_by_us): a model both pools serve. Reuses one the stack serves in both pools; else stages
    half_plus_two v123 into both (containers created by the pipeline's own service) and removes it afterwards."""
    from tfdeploy.core.models_config import ServedModel
    from tfdeploy.services.serving_target import ServingTargetService
    from tfdeploy.services.targets import get_target

    pools = {pool: ServingTargetService(get_target("local", pool=pool)) for pool in ("stable", "canary")}

    def available_everywhere(model: str) -> bool:
        for service in pools.values():
            for replica in service.replicas:
                try:
                    if "AVAILABLE" not in {s for s, _ in replica.model_status(model).values()}:
                        return False
                except Exception:  # noqa: BLE001 - a replica not answering: not this one
                    return False
        return True

    stable_models = {m.name for m in pools["stable"].host.read_config()}
    canary_models = {m.name for m in pools["canary"].host.read_config()}
    for model in sorted(stable_models & canary_models):
        if available_everywhere(model):
            yield model, False
            return
    model = f"diag_{uuid.uuid4().hex[:8]}"
    for service in pools.values():
        base = [host.stage_version(HP_VERSION, model, 123) for host in service.hosts][0]  # on every host of the pool
        service.change(model, lambda _entry, base=base: ServedModel(model, base, (123,), {}))
    try:
        yield model, True
    finally:
        for service in pools.values():
            with contextlib.suppress(Exception):
                service.change(model, lambda _entry: None)


@pytest.fixture(scope="module")
def planted(settings, served, docker_client) -> dict[str, str]:
    """Secrets written into the stable pool's first replica's real container log (through its PID 1's stdout),
    in the forms a log would carry them."""
    secrets = configured_secrets(settings)
    container = docker_client.containers.get(f"{settings.serving_container_prefix}-local")
    lines = [
        f"GET /registry/v1/models Authorization: Bearer {secrets['registry API token']}",
        f"airflow login admin password={secrets['admin password']}",
        f"fernet {secrets['fernet key']} jwt {secrets['JWT secret']}",
        f"conn {secrets['AIRFLOW_CONN_TFDEPLOY_REGISTRY value']}",
        "planted-by-test_diagnosis",
    ]
    script = "; ".join(f"echo {shlex.quote(line)} > /proc/1/fd/1" for line in lines)
    result = container.exec_run(["sh", "-c", script])
    assert result.exit_code == 0, result.output
    assert "planted-by-test_diagnosis" in container.logs(tail=10).decode()
    return secrets


def download(settings, path: str) -> dict[str, str]:
    """The archive at HDFS ``path`` over WebHDFS (as `make diagnose` prints it): member name -> text."""
    url = f"{settings.webhdfs_url}/webhdfs/v1{quote(path)}?op=OPEN&user.name={quote(settings.hdfs_user)}"
    with requests.Session() as session:
        session.trust_env = False
        resp = session.get(url, timeout=60)
    resp.raise_for_status()
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def check_bundle(settings, path: str, secrets: dict[str, str], model: str, *, staged: bool) -> dict:
    """Every listed part in the archive, the serving parts there, no secret in any file; returns the manifest."""
    files = download(settings, path)
    top = path.rsplit("/", 1)[-1].removesuffix(".tar.gz")
    assert all(name.startswith(f"{top}/") for name in files)
    parts = {name.removeprefix(f"{top}/"): text for name, text in files.items()}
    manifest = json.loads(parts["manifest.json"])
    assert manifest["model"] == model and manifest["path"] == path
    assert set(manifest["parts"]) == set(parts), "every listed part is in the archive, nothing else"
    assert not set(manifest["missing"]) & set(parts)
    stable = f"{settings.serving_container_prefix}-local"
    expected = {"README.txt", "manifest.json", "pools/stable/models.config", "airflow/task_log.json"}
    expected |= {f"router/{m}.json" for m in ("weights", "candidates", "limits", "servers")}
    for container in (stable, f"{stable}-1"):
        expected |= {f"pools/stable/{container}/{p}" for p in ("logs.txt", "inspect.json", "model_status.json")}
    if staged:
        canary = f"{stable}-canary"
        expected |= {"pools/canary/models.config"}
        expected |= {f"pools/canary/{canary}/{p}" for p in ("logs.txt", "inspect.json", "model_status.json")}
    assert expected <= set(parts), (sorted(expected - set(parts)), manifest["missing"])
    status = json.loads(parts[f"pools/stable/{stable}/model_status.json"])
    assert "AVAILABLE" in {v["state"] for v in status["versions"].values()}
    assert model in parts["pools/stable/models.config"]
    inspect = json.loads(parts[f"pools/stable/{stable}/inspect.json"])
    assert inspect["Config"]["Env"] and all(e.endswith("=[REDACTED]") for e in inspect["Config"]["Env"])
    servers = json.loads(parts["router/servers.json"])
    assert {"local_rest", "local_grpc", "local_canary_rest", "local_canary_grpc"} <= set(servers)
    has_prometheus = any(p.startswith("prometheus/") and p.endswith(".json") for p in parts)
    assert has_prometheus or "prometheus/NOTE.txt" in parts, "Prometheus' series or the note why not"
    for name, text in parts.items():
        for what, secret in secrets.items():
            assert not leaked(text, secret), f"the {what} is in {name} of {path}"
    return manifest


def test_collection_stores_a_complete_redacted_bundle_on_hdfs(settings, served, planted):
    from tfdeploy.services.diagnosis import DiagnosisService, TaskRef

    model, staged = served
    run_id = f"manual__itest_{uuid.uuid4().hex[:6]}:00+00:00"
    task = TaskRef("model_deploy", "manual__2026-01-01T00:00:00+00:00", "smoke", try_number=1)
    bundle = DiagnosisService("local").collect(model, run_id=run_id, reason="integration test", task=task)

    assert re.fullmatch(
        rf"/diagnostics/{model}/\d{{8}}T\d{{6}}Z-manual__itest_[0-9a-f]{{6}}_00_00_00\.tar\.gz", bundle.path
    )
    listing = requests.get(
        f"{settings.webhdfs_url}/webhdfs/v1/diagnostics/{model}?op=LISTSTATUS&user.name={settings.hdfs_user}",
        timeout=10,
    ).json()["FileStatuses"]["FileStatus"]
    names = {f["pathSuffix"]: f for f in listing}
    assert bundle.path.rsplit("/", 1)[-1] in names
    assert not [n for n in names if n.startswith(".tmp-")], "no temp file left behind"
    assert names[bundle.path.rsplit("/", 1)[-1]]["owner"] == settings.hdfs_user
    manifest = check_bundle(settings, bundle.path, planted, model, staged=staged)
    assert manifest["parts"] == bundle.parts and manifest["missing"] == bundle.missing
    logs = download(settings, bundle.path)
    log_text = next(t for n, t in logs.items() if n.endswith(f"{settings.serving_container_prefix}-local/logs.txt"))
    assert "planted-by-test_diagnosis" in log_text and "Authorization: Bearer [REDACTED]" in log_text


def airflow_up(settings) -> bool:
    try:
        return requests.get(f"{settings.airflow_url}/api/v2/monitor/health", timeout=5).ok
    except requests.RequestException:
        return False


def test_model_diagnose_dag_stores_a_bundle_and_records_it_in_the_history(settings, served, planted, airflow):
    if not airflow_up(settings):
        pytest.skip(f"Airflow is not up at {settings.airflow_url}: the DAG run is not tested")
    model, staged = served
    if staged:  # the history event needs the model in the registry
        from tfdeploy.hooks.registry import RegistryHook

        RegistryHook().register_version(
            model,
            version=123,
            hdfs_uri=f"webhdfs://127.0.0.1:{settings.webhdfs_port}/models/{model}/123",
            manifest_sha256="0" * 64,
            source=str(HP_VERSION),
            reason="test_diagnosis: staged by hand",
            context={"interface": "rest_api"},
        )
    airflow.wait_for_dag("model_diagnose", timeout=120)
    airflow.unpause("model_diagnose")
    run = airflow.trigger("model_diagnose", conf={"model_name": model, "reason": "integration test via the DAG"})
    run_id = run["dag_run_id"]
    final = airflow.wait_for_run("model_diagnose", run_id, timeout=600)
    assert final["state"] == "success", airflow.task_instances("model_diagnose", run_id)
    value = airflow.request(
        "GET",
        f"/api/v2/dags/model_diagnose/dagRuns/{quote(run_id, safe='')}/taskInstances/collect/xcomEntries/return_value",
    )["value"]
    path = value["path"]
    assert path.startswith(f"/diagnostics/{model}/") and path.endswith(".tar.gz")
    manifest = check_bundle(settings, path, planted, model, staged=staged)
    assert manifest["parts"] == value["parts"]
    assert {"registry/model.json", "registry/history.json"} <= set(manifest["parts"]), manifest["missing"]
    links = json.loads(
        download(settings, path)[f"{path.rsplit('/', 1)[-1].removesuffix('.tar.gz')}/airflow/task_log.json"]
    )
    assert links["dag_id"] == "model_diagnose" and links["task_id"] == "collect"
    events = requests.get(
        f"{settings.airflow_url}/registry/v1/models/{model}/history",
        params={"kind": "diagnosis", "limit": 20},
        headers={"Authorization": f"Bearer {airflow.token()}"},
        timeout=10,
    ).json()["events"]
    assert any(e["details"].get("path") == path and e["runId"] == run_id for e in events), events
