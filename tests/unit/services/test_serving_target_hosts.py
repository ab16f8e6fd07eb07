"""A pool spread over two Docker hosts: replica i runs on host i % 2, every host of the pool gets each staged version
and each models.config, the primary host's config is the one read back, and staging goes through the worker's
scratch space (fetched and verified once) to every host; the TF Serving hook and the target place replicas alike."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tfdeploy.core.models_config import ServedModel, served_models
from tfdeploy.core.placement import hosts_in_use, replica_host
from tfdeploy.hooks.serving_host import ServerInfo
from tfdeploy.hooks.tfserving import TFServingHook
from tfdeploy.services.serving_target import ServingTargetService
from tfdeploy.services.targets import ServingTarget, get_target, serving_host_conn_id


@dataclass
class Host:
    name: str
    log: list
    on_disk: list[ServedModel] = field(default_factory=list)
    staged: list[tuple[str, int, str]] = field(default_factory=list)
    volume: str | None = "tfdeploy-models-unit-local"
    where: str = "volume"

    @contextlib.contextmanager
    def config_lock(self):
        self.log.append(("lock", self.name))
        yield

    def read_config(self) -> list[ServedModel]:
        self.log.append(("read", self.name))
        return list(self.on_disk)

    def write_config(self, config) -> str:
        self.log.append(("write", self.name))
        self.on_disk = served_models(config)
        return "/models/models.config"

    def ensure_server(self, **kwargs) -> ServerInfo:
        self.log.append(("ensure", self.name, kwargs["name"], kwargs["rest_port"]))
        return ServerInfo(container_id=kwargs["name"], name=kwargs["name"], image=kwargs["image"], created=False)

    def stage_version(self, src, model, version) -> str:
        files = sorted(p.name for p in Path(src).iterdir())
        self.staged.append((model, version, ",".join(files)))
        return f"/models/{model}"

    def staged_versions(self) -> set[tuple[str, int]]:
        return {(model, version) for model, version, _files in self.staged}

    def copy_version(self, model, version, dest_dir) -> Path:
        self.log.append(("copy", self.name, model, version))
        out = Path(dest_dir) / str(version)
        out.mkdir(parents=True)
        (out / "saved_model.pb").write_bytes(b"pb")
        return out

    def remove_staged(self, model, version) -> None:
        self.log.append(("remove", self.name, model, version))

    def container_base_path(self, model: str) -> str:
        return f"/models/{model}"


@dataclass
class Replica:
    name: str
    log: list
    ports: tuple[int, int] = (8510, 8511)
    pool: list = field(default_factory=list)

    def replicas(self):
        return self.pool

    def is_ready(self) -> bool:
        return True

    def reload(self, config) -> None:
        self.log.append(("reload", self.name))

    def wait_until_available(self, model, version, **_kw) -> None:
        pass

    def wait_until_unloaded(self, model, version, **_kw) -> None:
        pass


class Router:
    def drain(self, backends, server, *, timeout_s):
        pass

    def set_state(self, backend, server, state):
        pass


def pool_of(tmp_path, replicas: int = 3):
    log: list = []
    hosts = [Host("h1", log), Host("h2", log)]
    first = Replica("r0", log)
    first.pool = [first] + [Replica(f"r{i}", log) for i in range(1, replicas)]
    target = ServingTarget(
        "local",
        "img:1",
        "tfserving-local",
        tmp_path / "worker",
        "tfserving_local",
        "serving_host_local",
        "router_local",
        serving_host_conn_ids=("serving_host_local", "serving_host_local_2"),
        volume=hosts[0].volume,
    )
    service = ServingTargetService(target, hosts=hosts, serving=first, router=Router())  # type: ignore[arg-type]
    return service, hosts, log


def test_replicas_run_on_host_i_mod_2_and_every_host_gets_the_config(tmp_path):
    service, hosts, log = pool_of(tmp_path)
    service.change("m", lambda _e: ServedModel("m", "/models/m", (1,), {}))
    assert [e for e in log if e[0] in ("lock", "read")] == [("lock", "h1"), ("read", "h1")]  # the primary's
    assert [e for e in log if e[0] == "write"] == [("write", "h1"), ("write", "h2")]  # before any replica changes
    assert [e[1:] for e in log if e[0] == "ensure"] == [
        ("h1", "tfserving-local", 8511),
        ("h2", "tfserving-local-1", 8513),
        ("h1", "tfserving-local-2", 8515),
    ]
    assert hosts[0].on_disk == hosts[1].on_disk == [ServedModel("m", "/models/m", (1,), {})]
    service.change("m", lambda _e: ServedModel("m", "/models/m", (2,), {}))
    assert ("remove", "h1", "m", 1) in log and ("remove", "h2", "m", 1) in log  # dropped everywhere


def test_staging_fetches_once_into_scratch_space_and_stages_on_every_host(tmp_path):
    service, hosts, _log = pool_of(tmp_path)
    fetched: list = []

    class Store:
        def fetch(self, model, version, local_dir, **kwargs):
            fetched.append((model, version, kwargs))
            out = Path(local_dir) / str(version)
            out.mkdir(parents=True)
            (out / "saved_model.pb").write_bytes(b"pb")
            return out

    assert service.stage(Store(), "m", 3, manifest_sha256="abc") == "/models/m"  # type: ignore[arg-type]
    assert fetched == [("m", 3, {"expected_manifest_sha256": "abc"})]
    assert hosts[0].staged == hosts[1].staged == [("m", 3, "saved_model.pb")]
    assert list((tmp_path / "worker").iterdir()) == []  # the scratch copy is gone


def test_a_pool_with_fewer_replicas_than_hosts_uses_the_first_hosts_only():
    assert hosts_in_use(1, ["a", "b"]) == ["a"] and hosts_in_use(5, ["a", "b"]) == ["a", "b"]
    assert [replica_host(i, ["a", "b"]) for i in range(5)] == ["a", "b", "a", "b", "a"]
    with pytest.raises(ValueError):
        replica_host(0, [])


def test_the_tfserving_hook_places_replicas_as_the_target_does(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_TFSERVING_TWO",
        json.dumps(
            {
                "conn_type": "tfserving",
                "host": "127.0.0.1",
                "port": 8511,
                "extra": {"grpc_port": 8510, "replicas": 3, "replica_hosts": ["127.0.0.1", "10.217.0.2"]},
            }
        ),
    )
    replicas = TFServingHook("tfserving_two").replicas()
    assert [r.rest_url for r in replicas] == [
        "http://127.0.0.1:8511",
        "http://10.217.0.2:8513",
        "http://127.0.0.1:8515",
    ]
    assert [r.grpc_target for r in replicas] == ["127.0.0.1:8510", "10.217.0.2:8512", "127.0.0.1:8514"]


def test_get_target_lists_serving_hosts_and_a_volume_per_pool_and_stack(monkeypatch):
    monkeypatch.setenv("SERVING_HOSTS", "2")
    stable, canary = get_target("local"), get_target("local", pool="canary")
    assert stable.hosts == canary.hosts == ("serving_host_local", "serving_host_local_2")
    assert [stable.host_conn_id(i) for i in range(3)] == [
        "serving_host_local",
        "serving_host_local_2",
        "serving_host_local",
    ]
    assert stable.volume != canary.volume and stable.volume.startswith("tfdeploy-models-")
    assert stable.serving_host().volume == stable.volume and stable.serving_host().helper_image == stable.image
    monkeypatch.setenv("SERVING_HOSTS", "1")
    assert get_target("local").hosts == (serving_host_conn_id("local", 0),) == ("serving_host_local",)


def test_a_host_new_to_the_pool_gets_the_versions_and_config_it_lacks_from_the_primary(tmp_path):
    service, hosts, log = pool_of(tmp_path)
    other = ServedModel("other", "/models/other", (7,), {"stable": 7})
    hosts[0].on_disk = [other]
    hosts[0].staged = [("other", 7, "saved_model.pb")]  # the second host has nothing: it just joined the pool
    for host in hosts:  # the new version, staged on both by the rollout (service.stage)
        host.staged.append(("m", 1, "saved_model.pb"))
    service.change("m", lambda _e: ServedModel("m", "/models/m", (1,), {}))
    assert [e for e in log if e[0] == "copy"] == [("copy", "h1", "other", 7)]
    assert ("other", 7, "saved_model.pb") in hosts[1].staged  # copied from the primary, staged (checked) there
    assert hosts[1].on_disk == hosts[0].on_disk == [ServedModel("m", "/models/m", (1,), {}), other]
    log.clear()
    service.change("m", lambda e: e)  # in sync: nothing copied
    assert not [e for e in log if e[0] == "copy"]
