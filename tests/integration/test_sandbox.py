"""The sandbox on the real Docker engine: a model validates in it, and what model code could try there fails: the
network (the host's loopback, the Docker bridge), writing its inputs or the image, reading the worker's secrets,
running past its time, using more memory than it may; a .keras file with code in it is refused (safe_mode).
Every container is removed afterwards."""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from tfdeploy.core.errors import SandboxFailed, SandboxTimeout
from tfdeploy.hooks.sandbox import LABEL, LABEL_WHAT, SANDBOX_ENV, SandboxHook, SandboxLimits

ROOT = Path(__file__).resolve().parents[2]
HALF_PLUS_TWO = ROOT / "tests" / "data" / "tfserving-testdata" / "saved_model_half_plus_two_cpu" / "00000123"
SECRET_VARIABLES = ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__CORE__FERNET_KEY", "REGISTRY_API_TOKEN")


@pytest.fixture(scope="module")
def image(settings, docker_client) -> str:
    import docker

    try:
        docker_client.images.get(settings.sandbox_image)
    except docker.errors.ImageNotFound:
        pytest.fail(f"no {settings.sandbox_image} on the engine: run include/scripts/build_images.sh (make images)")
    return settings.sandbox_image


def sandbox(settings, image: str, **limits) -> SandboxHook:
    return SandboxHook(None, image=image, base_url=settings.docker_host, limits=SandboxLimits(**limits))


def leftovers(docker_client, what: str) -> list[str]:
    return [
        c.name
        for c in docker_client.containers.list(all=True, filters={"label": LABEL})
        if c.labels.get(LABEL_WHAT) == what
    ]


def python(code: str) -> list[str]:
    return ["python", "-c", code]


def test_a_model_validates_in_the_sandbox(settings, image, docker_client, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(HALF_PLUS_TWO, model)

    result, run = sandbox(settings, image).validate(
        model, signature_name="serving_default", inputs=[[1.0], [2.0], [5.0]], latency_runs=20, work_dir=tmp_path
    )

    assert result["signatures"]["serving_default"]["inputs"] == {"x": "float32"}
    assert [row[0] for row in result["outputs"]["y"]] == pytest.approx([2.5, 3.0, 4.5])
    assert result["error"] is None and result["latency_p50_ms"] > 0
    hc = run.host_config  # read back from the engine
    assert hc["NetworkMode"] == "none" and hc["ReadonlyRootfs"] is True
    assert hc["Memory"] == hc["MemorySwap"] == 2 * 1024**3
    assert hc["NanoCpus"] == 1_000_000_000 and hc["PidsLimit"] == 512
    assert hc["CapDrop"] == ["ALL"] and hc["SecurityOpt"] == ["no-new-privileges"]
    assert not run.user.startswith("0") and run.user not in ("", "root")
    assert leftovers(docker_client, "validation") == []
    assert (model / "saved_model.pb").read_bytes() == (HALF_PLUS_TWO / "saved_model.pb").read_bytes()


def test_a_missing_signature_is_reported_without_running_the_model(settings, image, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(HALF_PLUS_TWO, model)

    result, _ = sandbox(settings, image).validate(
        model, signature_name="nope", inputs=[[1.0]], latency_runs=0, work_dir=tmp_path
    )
    assert "serving_default" in result["signatures"] and result["outputs"] is None


def test_the_sandbox_has_no_network(settings, image, docker_client):
    ipam = docker_client.networks.get("bridge").attrs["IPAM"]["Config"][0]  # the host's address on the bridge
    gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
    with socket.create_server(("0.0.0.0", 0)) as server:  # listening on the host: loopback and the bridge
        port = server.getsockname()[1]
        server.settimeout(0.2)
        code = (
            "import json, socket\n"
            "out = {}\n"
            f"for host in ('127.0.0.1', {gateway!r}, 'example.com'):\n"
            "    try:\n"
            f"        socket.create_connection((host, {port}), timeout=3).close(); out[host] = 'connected'\n"
            "    except OSError as exc:\n"
            "        out[host] = f'{type(exc).__name__}: {exc}'\n"
            "print(json.dumps(out))\n"
        )
        run = sandbox(settings, image).run(python(code), what="network probe")
        with pytest.raises(TimeoutError):
            server.accept()  # nothing ever reached the host
    answers = json.loads(run.logs.splitlines()[-1])
    assert answers["127.0.0.1"].startswith("ConnectionRefusedError")  # its own loopback: nothing listens there
    assert "unreachable" in answers[gateway].lower()
    assert "connected" not in answers["example.com"]
    assert run.host_config["NetworkMode"] == "none"


def test_the_sandbox_cannot_write_its_inputs_or_its_image(settings, image, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(HALF_PLUS_TWO, model)
    for path in (model, *model.rglob("*")):
        path.chmod(0o777)  # writable to anyone: only the read-only mount stops the sandbox
    out = tmp_path / "out"
    out.mkdir()
    code = (
        "import json\n"
        "out = {}\n"
        "for path in ('/in/model/saved_model.pb', '/in/model/new', '/opt/tfdeploy_sandbox/x', '/etc/x', '/out/ok'):\n"
        "    try:\n"
        "        open(path, 'ab').write(b'tampered'); out[path] = 'written'\n"
        "    except OSError as exc:\n"
        "        out[path] = exc.strerror\n"
        "print(json.dumps(out))\n"
    )
    run = sandbox(settings, image).run(python(code), what="write probe", mounts={"/in/model": model}, out=out)
    answers = json.loads(run.logs.splitlines()[-1])
    assert answers.pop("/out/ok") == "written"
    assert set(answers.values()) == {"Read-only file system"}, answers
    assert (model / "saved_model.pb").read_bytes() == (HALF_PLUS_TWO / "saved_model.pb").read_bytes()
    assert not (model / "new").exists()
    assert (out / "ok").read_bytes() == b"tampered"


def test_the_sandbox_sees_no_secret_of_the_worker(settings, image, docker_client, monkeypatch):
    import os

    monkeypatch.setenv("TFDEPLOY_CANARY_SECRET", "worker-secret-" + uuid.uuid4().hex)
    secrets = {name: os.environ[name] for name in (*SECRET_VARIABLES, "TFDEPLOY_CANARY_SECRET") if os.environ.get(name)}
    assert len(secrets) >= 3, "the tests' environment is the workers' (tests/conftest.py): its secrets are set"
    run = sandbox(settings, image).run(
        python("import json, os; print(json.dumps(dict(os.environ)))"), what="environment probe"
    )
    env = json.loads(run.logs.splitlines()[-1])
    image_env = {item.split("=", 1)[0] for item in docker_client.images.get(image).attrs["Config"]["Env"] or []}
    assert set(env) <= set(SANDBOX_ENV) | image_env | {"HOSTNAME", "LC_CTYPE"}, set(env)
    for name, value in secrets.items():
        assert name not in env and value not in run.logs


def test_a_job_past_its_timeout_is_killed_and_removed(settings, image, docker_client):
    what = f"sleeper-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    with pytest.raises(SandboxTimeout) as err:
        sandbox(settings, image, timeout_s=3).run(
            python("import time; print('started', flush=True); time.sleep(600)"), what=what
        )
    assert time.monotonic() - started < 60  # killed at its limit, not after the sleep
    assert f"{what} ran in the sandbox" in str(err.value) and "past its limit of 3 s" in str(err.value)
    assert str(err.value).endswith("started")  # the log tail
    assert leftovers(docker_client, what) == []


def test_memory_is_limited(settings, image, docker_client):
    what = f"hog-{uuid.uuid4().hex[:6]}"
    hog = sandbox(settings, image, memory="256m")
    with pytest.raises(SandboxFailed, match=r"ran out of memory in the sandbox .*limit 256m"):
        hog.run(python("b = bytearray(1024 * 1024 * 1024); print('survived')"), what=what)
    assert leftovers(docker_client, what) == []
    run = hog.run(python("print('small')"), what="small")
    assert run.host_config["Memory"] == run.host_config["MemorySwap"] == 256 * 1024**2


def test_on_kill_removes_the_running_container(settings, image, docker_client):
    what = f"killed-{uuid.uuid4().hex[:6]}"
    hook = sandbox(settings, image, timeout_s=120)
    errors: list[BaseException] = []

    def job() -> None:
        try:
            hook.run(python("import time; time.sleep(600)"), what=what)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 30
    while not leftovers(docker_client, what) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert leftovers(docker_client, what), "the sandbox container never started"
    hook.kill()
    thread.join(30)
    assert not thread.is_alive()
    assert isinstance(errors[0], SandboxFailed) and "the task was killed" in str(errors[0])
    assert leftovers(docker_client, what) == []


def test_a_keras_file_with_code_in_it_is_refused_by_safe_mode(settings, image, tmp_path):
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input(shape=(2,)), tf.keras.layers.Lambda(lambda x: x * 2.0)])
    path = tmp_path / "lambda.keras"
    model.save(path)

    with pytest.raises(SandboxFailed, match="safe_mode"):
        sandbox(settings, image).export(work_dir=tmp_path, keras_file=path)
