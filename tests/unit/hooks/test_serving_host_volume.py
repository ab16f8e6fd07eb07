"""ServingHostHook in volume mode, without a Docker engine: the engine is a fake whose helper containers run the real
helper script (HELPER_SCRIPT, /bin/sh and coreutils) on a directory standing in for the volume. Staging lands
verified and atomically, is idempotent, refuses conflicts and aliases, names a file corrupted on the way and leaves
nothing behind; models.config and monitoring.config go the same way; a host set up before volumes is seeded."""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from docker.errors import APIError, NotFound

from tfdeploy.core.errors import ChecksumMismatch, ServingHostError, StagingConflict
from tfdeploy.core.manifest import MANIFEST_NAME, build_manifest, encode_manifest, verify_tree
from tfdeploy.core.models_config import ServedModel, build_model_config
from tfdeploy.hooks import serving_host
from tfdeploy.hooks.serving_host import CONTAINER_ROOT, HELPER_SCRIPT, MONITORING_CONFIG, ServingHostHook

TESTDATA = Path(__file__).resolve().parents[2] / "data" / "tfserving-testdata"
HP_V1 = TESTDATA / "saved_model_half_plus_two_2_versions" / "00000123"
BAD = TESTDATA / "bad_half_plus_two" / "00000123"


class FakeContainer:
    def __init__(self, engine: FakeEngine, command: list[str], kwargs: dict) -> None:
        self.engine, self.command, self.kwargs = engine, command, kwargs
        self.name, self.labels = kwargs["name"], kwargs["labels"]
        self.exit_code, self.output = -1, b""
        if "mounts" in kwargs:  # a helper (a lock has no mount)
            [mount] = kwargs["mounts"]
            assert mount["Target"] == CONTAINER_ROOT and mount["Type"] == "volume" and not mount.get("ReadOnly")
            self.volume = engine.volume_dir(mount["Source"])

    def put_archive(self, path: str, data) -> bool:
        assert path == CONTAINER_ROOT
        blob = data.read()
        if self.engine.corrupt_in_transit:  # flip one byte of that member on the way to the engine
            blob = _corrupt_member(blob, self.engine.corrupt_in_transit)
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(self.volume, filter="data")
        return True

    def get_archive(self, path: str):
        target = self.volume / Path(path).relative_to(CONTAINER_ROOT)
        if not target.exists():
            raise NotFound(f"no {path}")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(target, arcname=target.name)
        return iter([buf.getvalue()]), {}

    def start(self) -> None:
        assert self.kwargs["entrypoint"][:3] == ["/bin/sh", "-c", HELPER_SCRIPT]
        assert self.kwargs["network_disabled"] is True
        args = [str(self.volume) if a == CONTAINER_ROOT else a for a in self.command]
        done = subprocess.run([*self.kwargs["entrypoint"], *args], capture_output=True)
        self.exit_code, self.output = done.returncode, done.stdout + done.stderr
        self.engine.runs.append(args[1])

    def wait(self, timeout: float) -> dict:
        return {"StatusCode": self.exit_code}

    def logs(self, stdout: bool = True, stderr: bool = True) -> bytes:
        return self.output

    def remove(self, force: bool = False) -> None:
        if self not in self.engine.live:
            raise NotFound(self.name)
        self.engine.live.remove(self)


class FakeEngine:
    """The parts of docker.DockerClient the volume mode uses: images, volumes, helper and lock containers (a name
    taken is a 409, as the engine answers)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.runs: list[str] = []
        self.live: list[FakeContainer] = []
        self.corrupt_in_transit = ""
        self.volume_names: set[str] = set()
        engine = self

        class Images:
            def get(self, name: str):
                return SimpleNamespace(id=f"sha256:{name}")

        class Volumes:
            def get(self, name: str):
                if name not in engine.volume_names:
                    raise NotFound(name)
                return name

            def create(self, name: str, labels: dict):
                engine.volume_names.add(name)
                (engine.root / name).mkdir(parents=True)
                return name

        class Containers:
            def create(self, image, command, *, name, labels, **kwargs):
                if any(c.name == name for c in engine.live):
                    raise APIError("Conflict", response=SimpleNamespace(status_code=409, reason="Conflict"))
                container = FakeContainer(engine, command, {**kwargs, "name": name, "labels": labels})
                engine.live.append(container)
                return container

            def get(self, name: str):
                for container in engine.live:
                    if container.name == name:
                        return container
                raise NotFound(name)

        self.images, self.volumes, self.containers = Images(), Volumes(), Containers()

    def volume_dir(self, name: str) -> Path:
        assert name in self.volume_names, "the hook creates its volume before mounting it"
        return self.root / name


def _corrupt_member(blob: bytes, suffix: str) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(blob)) as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else None
            if data is not None and member.name.endswith(suffix):
                data = bytes([data[0] ^ 1]) + data[1:]
            dst.addfile(member, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


VOLUME = "tfdeploy-models-unit-local"


@pytest.fixture
def engine(tmp_path) -> FakeEngine:
    return FakeEngine(tmp_path / "engine")


def host_on(engine: FakeEngine, root: Path) -> ServingHostHook:
    hook = ServingHostHook(None, model_root=root, volume=VOLUME, helper_image="img:1", base_url="tcp://10.217.0.2:2376")
    hook.__dict__["docker_client"] = engine
    return hook


def with_manifest(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / MANIFEST_NAME).write_bytes(encode_manifest(build_manifest(dst)))
    return dst


def test_a_version_is_staged_into_the_volume_checked_there_and_renamed_into_place(engine, tmp_path):
    host = host_on(engine, tmp_path / "worker")
    src = with_manifest(HP_V1, tmp_path / "fetched")
    assert host.stage_version(src, "m", 5) == "/models/m"
    staged = engine.root / VOLUME / "m" / "5"
    assert verify_tree(build_manifest(HP_V1), staged) == []
    assert (staged / MANIFEST_NAME).read_bytes() == (src / MANIFEST_NAME).read_bytes()
    assert sorted(p.name for p in (engine.root / VOLUME / "m").iterdir()) == ["5"]  # no temp dir, no list
    assert engine.live == [] and engine.runs == ["stage"]  # the helper is gone
    assert not (tmp_path / "worker" / "m").exists()  # nothing of the model on the worker's side
    host.stage_version(src, "m", 5)  # same content: kept
    assert host.staged_versions() == {("m", 5)}
    copy = host.copy_version("m", 5, tmp_path / "copy")  # to stage on another host
    assert copy == tmp_path / "copy" / "5" and verify_tree(build_manifest(HP_V1), copy) == []
    with pytest.raises(StagingConflict, match=r"already staged at m/5 in volume .* with different content"):
        host.stage_version(BAD, "m", 5)
    (engine.root / VOLUME / "m" / "005").mkdir()
    with pytest.raises(StagingConflict, match="m/005"):
        host.stage_version(src, "m", 5)
    (engine.root / VOLUME / "m" / "005").rmdir()
    host.remove_staged("m", 5)
    host.remove_staged("m", 5)  # absent: no-op
    assert list((engine.root / VOLUME / "m").iterdir()) == []
    assert engine.live == []


def test_a_file_corrupted_on_the_way_is_named_and_nothing_is_staged(engine, tmp_path):
    host = host_on(engine, tmp_path / "worker")
    engine.corrupt_in_transit = "variables/variables.data-00000-of-00001"
    with pytest.raises(ChecksumMismatch) as err:
        host.stage_version(with_manifest(HP_V1, tmp_path / "fetched"), "m", 7)
    assert err.value.path == "variables/variables.data-00000-of-00001"
    assert list((engine.root / VOLUME / "m").iterdir()) == []  # no version, no temp dir
    assert engine.live == []


def test_models_config_and_monitoring_config_go_through_the_volume(engine, tmp_path):
    host = host_on(engine, tmp_path / "worker")
    assert host.read_config() == [] and host.read_config_text() is None
    models = [ServedModel("m", "/models/m", (1, 2), {"stable": 1})]
    assert host.write_config(build_model_config(models)) == "/models/models.config"
    assert host.read_config() == models
    assert (engine.root / VOLUME / "monitoring.config").read_text() == MONITORING_CONFIG
    assert sorted(p.name for p in (engine.root / VOLUME).iterdir()) == ["models.config", "monitoring.config"]
    assert not (tmp_path / "worker" / "models.config").exists()  # the served config lives on the engine only


def test_a_host_set_up_before_volumes_is_seeded_from_its_model_root(engine, tmp_path):
    legacy = ServingHostHook(None, model_root=tmp_path / "worker", base_url="unix:///var/run/docker.sock")
    legacy.stage_version(HP_V1, "m", 3)
    models = [ServedModel("m", "/models/m", (3,), {"stable": 3})]
    legacy.write_config(build_model_config(models))
    host = host_on(engine, tmp_path / "worker")
    assert host.read_config() == models  # read from the volume, after seeding it
    assert verify_tree(build_manifest(HP_V1), engine.root / VOLUME / "m" / "3") == []
    assert (engine.root / VOLUME / "models.config").is_file()
    assert not legacy.config_path.exists()  # seeded once
    assert host.read_config() == models


def test_the_publish_address_comes_from_the_connection(monkeypatch, tmp_path):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SERVING_HOST_TWO",
        '{"conn_type": "x", "host": "tcp://10.217.0.2:2376", "extra": {"publish_address": "10.217.0.2"}}',
    )
    assert ServingHostHook("serving_host_two", model_root=tmp_path).publish_address == "10.217.0.2"
    assert ServingHostHook(None, model_root=tmp_path, base_url="unix:///x").publish_address == "127.0.0.1"
    monkeypatch.setenv(
        "AIRFLOW_CONN_SERVING_HOST_BAD", '{"conn_type": "x", "host": "tcp://h:1", "extra": {"publish_address": "h"}}'
    )
    with pytest.raises(ValueError, match="not an IP address"):
        _ = ServingHostHook("serving_host_bad", model_root=tmp_path).publish_address
    with pytest.raises(ValueError, match="not a Docker volume name"):
        ServingHostHook(None, model_root=tmp_path, base_url="unix:///x", volume="../x")


def test_the_config_lock_is_the_engines_so_workers_anywhere_take_turns(engine, tmp_path, monkeypatch):
    first = host_on(engine, tmp_path / "worker-a")  # two workers: their own model_root (no shared flock)
    second = host_on(engine, tmp_path / "worker-b")
    order: list[str] = []
    with first.config_lock():
        assert [c.name for c in engine.live] == [f"{VOLUME}-lock"]

        def other() -> None:
            with second.config_lock():
                order.append("second")

        waiter = threading.Thread(target=other)
        waiter.start()
        time.sleep(0.8)
        order.append("first done")
    waiter.join(10)
    assert order == ["first done", "second"] and engine.live == []
    held = pytest.raises(ServingHostError, match="held by .* did not come free within 1s")
    with first.config_lock(), held, second.config_lock(timeout_s=1):
        pass
    # a lock whose holder died long ago is taken over
    with first.config_lock():
        [stale] = engine.live
        monkeypatch.setattr(serving_host, "LOCK_STALE_S", -1)
        with second.config_lock(timeout_s=5):
            [lock] = engine.live
            assert lock is not stale and lock.labels != stale.labels
    assert engine.live == []  # the first holder found its lock gone, and left the second's alone
