"""The serving target service: one config change = one read, one write, one reload, one verification; the
two-phase label rule in one place; the previous config restored when a change fails."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tfdeploy.core.errors import ServingReloadError, VersionNotAvailable
from tfdeploy.core.models_config import ServedModel, served_models
from tfdeploy.hooks.serving_host import ServerInfo
from tfdeploy.services.serving_target import ServingTargetService, label_phases
from tfdeploy.services.targets import ServingTarget

BASE = "/models/m"


@dataclass
class CountingHost:
    """The serving host, counting models.config I/O; the 'disk' is a list of ServedModel."""

    on_disk: list[ServedModel] = field(default_factory=list)
    running: bool = False
    reads: int = 0
    writes: int = 0
    shared_disk_checks: int = 0
    servers_created: int = 0
    removed: list[tuple[str, int]] = field(default_factory=list)
    config_path: Path = Path("/srv/models/models.config")
    volume: str | None = None  # bind mode: model_root shared with the worker

    @contextlib.contextmanager
    def config_lock(self):
        yield

    def read_config(self) -> list[ServedModel]:
        self.reads += 1
        return list(self.on_disk)

    def write_config(self, config) -> str:
        self.writes += 1
        self.on_disk = served_models(config)
        return "/models/models.config"

    def ensure_server(self, **kwargs) -> ServerInfo:
        created = not self.running
        self.running = True
        self.servers_created += created
        return ServerInfo(container_id="c1", name=kwargs["name"], image=kwargs["image"], created=created)

    def check_shared_disk(self) -> None:
        self.shared_disk_checks += 1

    def model_dir(self, model: str) -> Path:
        return Path("/srv/models") / model

    def container_base_path(self, model: str) -> str:
        return f"/models/{model}"

    def remove_staged(self, model: str, version: int) -> None:
        self.removed.append((model, version))


@dataclass
class CountingServing:
    """The TF Serving server: applies reloads to its own 'served' state and counts them."""

    host: CountingHost
    served: list[ServedModel] = field(default_factory=list)
    reloads: int = 0
    fail_reload: Exception | None = None
    never_available: set[int] = field(default_factory=set)
    waits: list[tuple[str, int]] = field(default_factory=list)
    ports: tuple[int, int] = (8500, 8501)

    def is_ready(self) -> bool:
        return self.host.running

    def replicas(self) -> list[CountingServing]:
        return [self]

    def reload(self, config) -> None:
        self.reloads += 1
        if self.fail_reload is not None:
            error, self.fail_reload = self.fail_reload, None
            raise error
        self.served = served_models(config)

    def wait_until_available(self, model, version, **_kw) -> None:
        self.waits.append(("available", version))
        if version in self.never_available:
            raise VersionNotAvailable("never", model=model, version=version, state="END", error_message="boom")

    def wait_until_unloaded(self, model, version, **_kw) -> None:
        self.waits.append(("unloaded", version))


@pytest.fixture
def target(tmp_path) -> ServingTarget:
    return ServingTarget(
        "local", "img:1", "tfserving-local", tmp_path, "tfserving_local", "serving_host_local", "router_local"
    )


def make(target, on_disk=(), running=True):
    host = CountingHost(on_disk=list(on_disk), running=running)
    serving = CountingServing(host=host, served=list(on_disk))
    return ServingTargetService(target, host=host, serving=serving), host, serving  # type: ignore[arg-type]


def entry(versions, **labels) -> ServedModel:
    return ServedModel("m", BASE, tuple(versions), labels)


def test_a_label_only_change_reads_once_writes_once_reloads_once(target):
    service, host, serving = make(target, [entry([1, 2], stable=1, canary=2)])
    change = service.change("m", lambda e: entry(e.versions, stable=2))
    assert (host.reads, host.writes, serving.reloads, change.phases) == (1, 1, 1, 1)
    assert host.on_disk == serving.served == [entry([1, 2], stable=2)]


def test_adding_a_version_and_labelling_it_takes_two_changes_from_one_read(target):
    service, host, serving = make(target, [entry([1], stable=1)])
    change = service.change("m", lambda _e: entry([1, 2], stable=1, canary=2))
    assert (host.reads, host.writes, serving.reloads, change.phases) == (1, 2, 2, 2)
    assert host.on_disk == serving.served == [entry([1, 2], stable=1, canary=2)]
    # the new version was AVAILABLE before the label pointing at it was applied
    assert serving.waits.index(("available", 2)) < len(serving.waits)
    assert host.shared_disk_checks == 0  # staging checks it, not a config change


def test_label_phases_keep_an_old_label_while_its_new_version_loads():
    before, after = entry([2], stable=2), entry([1, 2], stable=1)
    first, second = label_phases(before, after)
    assert first == entry([1, 2], stable=2) and second == after
    assert label_phases(None, entry([1], canary=1)) == [entry([1]), entry([1], canary=1)]
    assert label_phases(entry([1, 2], stable=1, canary=2), entry([2], stable=2)) == [entry([2], stable=2)]
    assert label_phases(entry([1]), None) == [None]


def test_the_first_version_creates_the_server_which_reads_the_file_so_no_reload(target):
    service, host, serving = make(target, [], running=False)
    change = service.change("m", lambda _e: entry([1]))
    assert change.container_created and host.servers_created == 1
    assert (host.reads, host.writes, serving.reloads) == (1, 1, 0)


def test_dropped_versions_are_waited_for_and_their_staged_copies_removed(target):
    service, host, serving = make(target, [entry([1, 2, 3], stable=3)])
    change = service.change("m", lambda e: entry([2, 3], stable=3))
    assert change.dropped == [1]
    assert ("unloaded", 1) in serving.waits and host.removed == [("m", 1)]


def test_an_unchanged_entry_touches_nothing(target):
    service, host, serving = make(target, [entry([1], stable=1)])
    change = service.change("m", lambda e: e)
    assert (host.writes, serving.reloads, change.phases) == (0, 0, 0)


def test_other_models_entries_are_kept(target):
    other = ServedModel("other", "/models/other", (7,), {"stable": 7})
    service, host, _serving = make(target, [other, entry([1])])
    service.change("m", lambda _e: None)
    assert host.on_disk == [other]


def test_a_refused_reload_restores_the_previous_file_and_config(target):
    before = [entry([1], stable=1)]
    service, host, serving = make(target, before)
    serving.fail_reload = ServingReloadError("refused", code="INVALID_ARGUMENT", details="bad")
    with pytest.raises(ServingReloadError):
        service.change("m", lambda _e: entry([1], stable=1, canary=1))
    assert host.on_disk == before and serving.served == before


def test_a_version_that_never_loads_restores_the_previous_config(target):
    before = [entry([1], stable=1)]
    service, host, serving = make(target, before)
    serving.never_available = {2}
    with pytest.raises(VersionNotAvailable):
        service.change("m", lambda _e: entry([1, 2], stable=1, canary=2))
    assert host.on_disk == before and serving.served == before
    assert host.removed == []  # nothing of the previous config was removed


def test_an_edit_for_another_model_is_refused(target):
    service, host, _serving = make(target, [])
    with pytest.raises(ValueError, match="returned an entry for 'x'"):
        service.change("m", lambda _e: ServedModel("x", "/models/x", (1,)))
    assert host.writes == 0


def test_staging_checks_the_shared_disk_once_and_pins_the_manifest(target):
    service, host, _serving = make(target, [])
    calls = []

    class Store:
        def fetch(self, model, version, local_dir, **kwargs):
            calls.append((model, version, local_dir, kwargs))

    assert service.stage(Store(), "m", 3, manifest_sha256="abc") == "/models/m"  # type: ignore[arg-type]
    assert host.shared_disk_checks == 1
    assert calls == [("m", 3, Path("/srv/models/m"), {"expected_manifest_sha256": "abc", "durable": True})]


@dataclass
class Replica(CountingServing):
    """One replica of a pool: its own served config and reloads; the host's 'disk' is shared."""

    name: str = "r0"
    log: list = field(default_factory=list)

    def reload(self, config) -> None:
        self.log.append(("reload", self.name))
        super().reload(config)


@dataclass
class FakeRouter:
    log: list
    busy: dict = field(default_factory=dict)

    def drain(self, backends, server, *, timeout_s):
        self.log.append(("drain", server, tuple(backends)))

    def set_state(self, backend, server, state):
        self.log.append(("state", server, backend, state))


def test_a_pool_of_replicas_is_changed_one_replica_at_a_time_from_one_write(target):
    host = CountingHost(on_disk=[entry([1], stable=1)], running=True)
    log: list = []
    first = Replica(host=host, served=[entry([1], stable=1)], name="r0", log=log)
    second = Replica(host=host, served=[entry([1], stable=1)], name="r1", log=log)
    first.replicas = lambda: [first, second]  # type: ignore[method-assign]
    router = FakeRouter(log)
    service = ServingTargetService(target, host=host, serving=first, router=router)  # type: ignore[arg-type]
    service.change("m", lambda e: entry([1], stable=1, canary=1))
    assert (host.reads, host.writes) == (1, 1)
    assert first.served == second.served == host.on_disk == [entry([1], stable=1, canary=1)]
    backends = ("local_rest", "local_grpc")
    assert log == [
        ("drain", "replica1", backends),
        ("reload", "r0"),
        ("state", "replica1", "local_rest", "ready"),
        ("state", "replica1", "local_grpc", "ready"),
        ("drain", "replica2", backends),
        ("reload", "r1"),
        ("state", "replica2", "local_rest", "ready"),
        ("state", "replica2", "local_grpc", "ready"),
    ]


def test_a_replica_that_fails_goes_back_in_rotation_and_every_replica_gets_the_old_config(target):
    before = [entry([1], stable=1)]
    host = CountingHost(on_disk=list(before), running=True)
    log: list = []
    first = Replica(host=host, served=list(before), name="r0", log=log)
    second = Replica(host=host, served=list(before), name="r1", log=log, never_available={2})
    first.replicas = lambda: [first, second]  # type: ignore[method-assign]
    service = ServingTargetService(target, host=host, serving=first, router=FakeRouter(log))  # type: ignore[arg-type]
    with pytest.raises(VersionNotAvailable):
        service.change("m", lambda _e: entry([1, 2], stable=1))
    assert ("state", "replica2", "local_grpc", "ready") in log  # never left drained
    assert host.on_disk == first.served == second.served == before


def test_a_drain_that_times_out_restores_the_previous_config_everywhere(target):
    from tfdeploy.core.errors import RouterError

    before = [entry([1], stable=1)]
    host = CountingHost(on_disk=list(before), running=True)
    log: list = []
    first = Replica(host=host, served=list(before), name="r0", log=log)
    second = Replica(host=host, served=list(before), name="r1", log=log)
    first.replicas = lambda: [first, second]  # type: ignore[method-assign]

    class StuckRouter(FakeRouter):
        def drain(self, backends, server, *, timeout_s):
            if server == "replica2":
                raise RouterError("draining replica2 did not finish within 30s; it is back in rotation")
            super().drain(backends, server, timeout_s=timeout_s)

    service = ServingTargetService(target, host=host, serving=first, router=StuckRouter(log))  # type: ignore[arg-type]
    with pytest.raises(RouterError, match="did not finish"):
        service.change("m", lambda e: entry([1], stable=1, canary=1))
    assert host.on_disk == first.served == second.served == before  # the first replica's change undone too
