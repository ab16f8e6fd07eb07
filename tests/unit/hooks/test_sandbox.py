"""SandboxHook against a fake Docker client: how each container is confined (the options the engine gets), that
it is always removed, the wall-clock timeout, memory kills, what is taken from its output, leftovers. The real
engine runs the same cases in tests/integration/test_sandbox.py."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from tfdeploy.core.errors import SandboxFailed, SandboxTimeout
from tfdeploy.hooks import sandbox as sandbox_module
from tfdeploy.hooks.sandbox import LABEL, LABEL_DEADLINE, SANDBOX_ENV, SandboxHook, SandboxLimits

IMAGE = "local/tfdeploy-sandbox:latest"


class FakeContainer:
    def __init__(self, engine: FakeEngine, name: str, command: list[str], options: dict[str, Any]) -> None:
        self.engine, self.name, self.command, self.options = engine, name, command, options
        self.labels = dict(options.get("labels") or {})
        self.status = "created"
        self.exit_code = 0
        self.oom = False
        self.killed = False

    @property
    def attrs(self) -> dict[str, Any]:
        o = self.options
        return {
            "State": {"OOMKilled": self.oom, "ExitCode": self.exit_code},
            "Config": {"User": o.get("user")},
            "HostConfig": {
                "NetworkMode": o.get("network_mode"),
                "ReadonlyRootfs": o.get("read_only"),
                "Memory": o.get("mem_limit"),
                "NanoCpus": o.get("nano_cpus"),
                "PidsLimit": o.get("pids_limit"),
                "CapDrop": o.get("cap_drop"),
                "SecurityOpt": o.get("security_opt"),
            },
        }

    def host_dir(self, inside: str) -> Path:
        return next(Path(host) for host, bind in self.options["volumes"].items() if bind["bind"] == inside)

    def start(self) -> None:
        self.status = "running"
        self.engine.started.append(self)
        self.engine.job(self)

    def wait(self, timeout: float) -> dict[str, int]:
        if self.status == "running":
            time.sleep(min(timeout, 0.05))
            raise requests.exceptions.ReadTimeout("read timed out")
        return {"StatusCode": self.exit_code}

    def reload(self) -> None:
        pass

    def kill(self) -> None:
        self.killed = True
        self.status = "exited"

    def logs(self, tail: int) -> bytes:
        return b"loading the model\nlast words"

    def remove(self, force: bool = False) -> None:
        assert force
        self.engine.live.pop(self.name, None)
        self.engine.removed.append(self.name)


class FakeEngine:
    """``docker.DockerClient`` enough for the hook: ``job(container)`` plays the container's part at start
    (write into its /out, set ``exit_code``/``oom``, or leave it running)."""

    def __init__(self, job: Callable[[FakeContainer], None]) -> None:
        self.job = job
        self.live: dict[str, FakeContainer] = {}
        self.started: list[FakeContainer] = []
        self.removed: list[str] = []
        self.containers = self

    def create(self, image: str, command: list[str], *, name: str, **options: Any) -> FakeContainer:
        assert image == IMAGE
        container = FakeContainer(self, name, command, options)
        self.live[name] = container
        return container

    def list(self, *, all: bool, filters: dict[str, str]) -> list[FakeContainer]:
        assert all and filters == {"label": LABEL}
        return [c for c in self.live.values() if LABEL in c.labels]


def finished(result: dict[str, Any] | None = None, exit_code: int = 0) -> Callable[[FakeContainer], None]:
    def job(container: FakeContainer) -> None:
        if result is not None:
            (container.host_dir("/out") / "result.json").write_text(json.dumps(result))
        container.exit_code = exit_code
        container.status = "exited"

    return job


def hook(engine: FakeEngine, **limits: Any) -> SandboxHook:
    h = SandboxHook(None, image=IMAGE, base_url="unix:///var/run/docker.sock", limits=SandboxLimits(**limits))
    h.__dict__["docker_client"] = engine
    return h


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "work" / "model"
    (path / "variables").mkdir(parents=True)
    (path / "saved_model.pb").write_bytes(b"graph")
    path.chmod(0o700)
    return path


def test_each_job_runs_confined_and_its_container_is_removed(
    model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "s3cret")
    answer = {"ok": True, "signatures": {"serving_default": {}}, "outputs": None, "error": None}
    engine = FakeEngine(finished(answer))

    result, run = hook(engine, memory="1g", cpus=0.5, pids=64, timeout_s=30).validate(
        model, signature_name="serving_default", inputs=[[1.0]], latency_runs=0, work_dir=tmp_path / "work"
    )

    assert result == {"signatures": {"serving_default": {}}, "outputs": None, "error": None}
    [container] = engine.started
    o = container.options
    assert o["network_mode"] == "none"
    assert o["environment"] == SANDBOX_ENV  # the whole environment: nothing of the worker's
    assert "s3cret" not in json.dumps(o)
    assert o["read_only"] is True
    assert o["tmpfs"] == {"/tmp": "rw,nosuid,nodev,noexec,size=256m"}
    assert (o["mem_limit"], o["memswap_limit"], o["nano_cpus"], o["pids_limit"]) == ("1g", "1g", 500_000_000, 64)
    assert o["cap_drop"] == ["ALL"] and o["security_opt"] == ["no-new-privileges"]
    assert o["user"] == "65534:65534" or not o["user"].startswith("0:")
    binds = {bind["bind"]: (host, bind["mode"]) for host, bind in o["volumes"].items()}
    assert binds["/in/model"] == (str(model), "ro")
    assert binds["/job"][1] == "ro" and binds["/out"][1] == "rw"
    assert container.command[:4] == ["timeout", "-s", "KILL", "60"]  # kills itself should the worker die
    assert container.command[4:] == ["python", "-m", "tfdeploy_sandbox", "/job/job.json"]
    assert float(container.labels[LABEL_DEADLINE]) > time.time()
    assert engine.removed == [container.name] and engine.live == {}
    assert not Path(binds["/job"][0]).exists()  # the job file is gone too
    assert model.stat().st_mode & 0o005 == 0o005  # our copy was opened to the sandbox's user
    assert "network none" in run.describe() and "memory 1g" in run.describe()


def test_the_job_file_carries_the_protocol_and_the_rows(model: Path, tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    def job(container: FakeContainer) -> None:
        seen.update(json.loads((container.host_dir("/job") / "job.json").read_text()))
        finished({"ok": True, "signatures": {}})(container)

    hook(FakeEngine(job)).validate(
        model, signature_name="sig", inputs={"x": [[1]]}, latency_runs=50, work_dir=tmp_path / "work"
    )
    assert seen == {
        "kind": "validate",
        "model": "/in/model",
        "signature_name": "sig",
        "inputs": {"x": [[1]]},
        "latency_runs": 50,
        "protocol": sandbox_module.PROTOCOL,
        "result": "/out/result.json",
    }


def test_a_job_past_its_timeout_is_killed_removed_and_named(model: Path, tmp_path: Path) -> None:
    engine = FakeEngine(lambda container: None)  # runs forever
    t0 = time.monotonic()

    with pytest.raises(SandboxTimeout) as err:
        hook(engine, timeout_s=0.3).validate(
            model, signature_name="s", inputs=[], latency_runs=0, work_dir=tmp_path / "work"
        )

    assert time.monotonic() - t0 < 5
    [container] = engine.started
    assert container.killed and engine.removed == [container.name]
    message = str(err.value)
    assert message.startswith(f"validation ran in the sandbox ({container.name}, from {IMAGE}) for 0 s")
    assert "past its limit of 0.3 s: the container was killed and removed" in message
    assert message.endswith("loading the model\nlast words")


def test_out_of_memory_and_failures_say_so_with_the_log_tail(model: Path, tmp_path: Path) -> None:
    def oom(container: FakeContainer) -> None:
        finished(None, 137)(container)
        container.oom = True

    for name in ("w1", "w2", "w3"):
        (tmp_path / name).mkdir()
    engine = FakeEngine(oom)
    with pytest.raises(SandboxFailed, match=r"(?s)validation ran out of memory in the sandbox .*limit 2g.*last words"):
        hook(engine).validate(model, signature_name="s", inputs=[], latency_runs=0, work_dir=tmp_path / "w1")
    engine = FakeEngine(finished({"ok": False, "error": "JobError: unknown job kind"}, 1))
    with pytest.raises(SandboxFailed, match=r"(?s)validation failed in the sandbox .*JobError: unknown job kind.*last"):
        hook(engine).validate(model, signature_name="s", inputs=[], latency_runs=0, work_dir=tmp_path / "w2")
    engine = FakeEngine(finished(None, 1))
    with pytest.raises(SandboxFailed, match="ended with exit code 1 .* without writing its result"):
        hook(engine).validate(model, signature_name="s", inputs=[], latency_runs=0, work_dir=tmp_path / "w3")
    assert engine.live == {}


def test_only_regular_files_and_directories_are_taken_from_the_sandbox(model: Path, tmp_path: Path) -> None:
    def planted(container: FakeContainer) -> None:
        out = container.host_dir("/out")
        (out / "saved_model").mkdir()
        (out / "saved_model" / "variables").symlink_to("/etc")
        finished({"ok": True, "exported": True, "warmup": None})(container)

    with pytest.raises(SandboxFailed, match=r"wrote .*saved_model/variables, which is a symbolic link"):
        hook(FakeEngine(planted)).export(work_dir=tmp_path / "work", keras_file=model / "saved_model.pb")


def test_export_returns_what_the_sandbox_wrote(model: Path, tmp_path: Path) -> None:
    def exported(container: FakeContainer) -> None:
        (container.host_dir("/out") / "tf_serving_warmup_requests").write_bytes(b"records")
        finished({"ok": True, "exported": False, "warmup": {"written": 1}})(container)

    engine = FakeEngine(exported)
    result, out, _ = hook(engine).export(work_dir=tmp_path / "work", saved_model=model, warmup={"inputs": [[1]]})
    assert result == {"exported": False, "warmup": {"written": 1}}
    assert (out / "tf_serving_warmup_requests").read_bytes() == b"records"
    with pytest.raises(ValueError, match="exactly one"):
        hook(engine).export(work_dir=tmp_path / "work")


def test_kill_removes_the_running_container(model: Path, tmp_path: Path) -> None:
    h: SandboxHook

    def job(container: FakeContainer) -> None:
        h.kill()  # on_kill, arriving while the job runs
        finished({"ok": True, "signatures": {}})(container)

    engine = FakeEngine(job)
    h = hook(engine)
    with pytest.raises(SandboxFailed, match=r"was killed and removed after 0 s: the task was killed \(on_kill\)"):
        h.validate(model, signature_name="s", inputs=[], latency_runs=0, work_dir=tmp_path / "work")
    assert engine.removed[0] == engine.started[0].name
    h.kill()  # nothing running: a no-op


def test_leftovers_past_their_deadline_are_swept_before_a_new_job(model: Path, tmp_path: Path) -> None:
    engine = FakeEngine(finished({"ok": True, "signatures": {}}))
    stale = engine.create(IMAGE, [], name="tfdeploy-sandbox-stale", labels={LABEL: "true", LABEL_DEADLINE: "1"})
    current = engine.create(
        IMAGE, [], name="tfdeploy-sandbox-busy", labels={LABEL: "true", LABEL_DEADLINE: str(time.time() + 600)}
    )
    current.status = "running"

    hook(engine).validate(model, signature_name="s", inputs=[], latency_runs=0, work_dir=tmp_path / "work")

    assert stale.name in engine.removed
    assert current.name in engine.live  # another task's, within its time


def test_inputs_and_limits_are_checked(model: Path, tmp_path: Path) -> None:
    engine = FakeEngine(finished({"ok": True}))
    (tmp_path / "work").mkdir(exist_ok=True)
    with pytest.raises(ValueError, match="plain file name"):
        hook(engine).run_job({"kind": "x"}, what="x", inputs={"../etc": model}, work_dir=tmp_path / "work")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hook(engine).run_job({"kind": "x"}, what="x", inputs={"m": tmp_path / "nope"}, work_dir=tmp_path / "work")
    assert engine.started == []
    with pytest.raises(ValueError, match="pids"):
        SandboxLimits(pids=2)
    with pytest.raises(ValueError, match="cpus"):
        SandboxLimits(cpus=0)
    with pytest.raises(ValueError, match="sandbox image"):
        SandboxHook(None, image="", base_url="unix:///var/run/docker.sock")
