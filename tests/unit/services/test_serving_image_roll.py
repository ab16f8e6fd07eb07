"""A serving image change rolls a pool one replica at a time: replica 0 drained at the router, its container
replaced, waited for until it serves and the router has it UP again, then replica 1; never two replicas out of
rotation at once, and a replica that fails stops the roll with the others untouched."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tfdeploy.core.errors import RouterError, ServerStartError
from tfdeploy.core.models_config import ServedModel, served_models
from tfdeploy.hooks.serving_host import ServerInfo
from tfdeploy.services.serving_target import ServingTargetService
from tfdeploy.services.targets import ServingTarget

OLD, NEW = "tensorflow/serving:2.18.0", "tensorflow/serving:2.19.0"
BACKENDS = ("local_rest", "local_grpc")
SERVERS = {"tfserving-local": "replica1", "tfserving-local-1": "replica2"}


@dataclass
class World:
    """Both replicas' containers, the router's view of them, and one log of everything that happened, in order."""

    images: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SERVERS, OLD))
    log: list[tuple] = field(default_factory=list)
    on_disk: list[ServedModel] = field(default_factory=list)
    # router: admin state per server, and how many status polls a replaced replica stays DOWN (health checks)
    state: dict[str, str] = field(default_factory=lambda: dict.fromkeys(SERVERS.values(), "ready"))
    down_polls: dict[str, int] = field(default_factory=dict)
    fail_start: str | None = None
    never_up: str | None = None


class Host:
    """The serving host: ensure_server replaces a container whose image differs (as ServingHostHook does)."""

    config_path = Path("/srv/models/models.config")

    def __init__(self, world: World) -> None:
        self.world = world

    @contextlib.contextmanager
    def config_lock(self):
        yield

    def read_config(self) -> list[ServedModel]:
        return list(self.world.on_disk)

    def write_config(self, config) -> str:
        self.world.on_disk = served_models(config)
        return str(self.config_path)

    def ensure_server(self, *, name: str, image: str, **_kw) -> ServerInfo:
        world = self.world
        if world.images[name] == image:
            return ServerInfo(container_id=name, name=name, image=image, created=False)
        world.log.append(("replace", name, image))
        if world.fail_start == name:
            raise ServerStartError(f"server container {name} exited during start-up")
        world.images[name] = image
        world.down_polls[SERVERS[name]] = 3  # the router sees it DOWN for its first health checks
        return ServerInfo(container_id=name, name=name, image=image, created=True)

    def remove_staged(self, model: str, version: int) -> None:
        pass


@dataclass
class Replica:
    """One replica's TF Serving server (the first also lists the pool's replicas)."""

    world: World
    container: str
    pool: list[Replica] = field(default_factory=list)
    ports: tuple[int, int] = (8510, 8511)

    def replicas(self) -> list[Replica]:
        return self.pool

    def is_ready(self) -> bool:
        return True

    def reload(self, config) -> None:
        self.world.log.append(("reload", self.container))

    def wait_until_available(self, model, version, **_kw) -> None:
        self.world.log.append(("serves", self.container, version))

    def wait_until_unloaded(self, model, version, **_kw) -> None:
        self.world.log.append(("unloaded", self.container, version))


class Router:
    """HAProxy's runtime API. Logs when a server put back in rotation is first seen UP; a drain while another
    replica is out of rotation fails the test."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.back: set[str] = set()  # set ready, not yet seen UP

    def status(self, server: str) -> str:
        world = self.world
        if world.state[server] == "drain":
            return "DRAIN"
        if world.never_up == server or world.down_polls.get(server, 0) > 0:
            return "DOWN"
        return "UP"

    def drain(self, backends, server, *, timeout_s):
        others = {s: self.status(s) for s in self.world.state if s != server}
        assert all(status == "UP" for status in others.values()), f"draining {server} while {others}"
        self.world.state[server] = "drain"
        self.world.log.append(("drain", server))

    def set_state(self, backend, server, state):
        if self.world.state[server] != state:
            self.world.log.append((state, server))
            self.back.add(server)
        self.world.state[server] = state

    def server_stats(self, backend):
        rows = {server: {"status": self.status(server), "scur": "0", "qcur": "0"} for server in self.world.state}
        for server in self.world.state:
            if self.world.down_polls.get(server, 0) > 0:
                self.world.down_polls[server] -= 1  # a health check passes with each poll
            if server in self.back and rows[server]["status"] == "UP":
                self.back.discard(server)
                self.world.log.append(("up", server))
        return rows


def entry(*versions: int) -> ServedModel:
    return ServedModel("m", "/models/m", tuple(versions), {})


def pool(tmp_path: Path, world: World, image: str = NEW) -> ServingTargetService:
    target = ServingTarget(
        "local", image, "tfserving-local", tmp_path, "tfserving_local", "serving_host_local", "router_local"
    )
    first = Replica(world, "tfserving-local")
    first.pool = [first, Replica(world, "tfserving-local-1")]
    return ServingTargetService(
        target,
        host=Host(world),  # type: ignore[arg-type]
        serving=first,  # type: ignore[arg-type]
        router=Router(world),  # type: ignore[arg-type]
        drain_timeout_s=2,
    )


ROLL = [
    ("drain", "replica1"),
    ("replace", "tfserving-local", NEW),
    ("serves", "tfserving-local", 1),
    ("ready", "replica1"),
    ("up", "replica1"),
    ("drain", "replica2"),
    ("replace", "tfserving-local-1", NEW),
    ("serves", "tfserving-local-1", 1),
    ("ready", "replica2"),
    ("up", "replica2"),
]


def test_an_image_change_alone_replaces_replica_0_waits_then_replica_1(tmp_path):
    world = World(on_disk=[entry(1)])
    change = pool(tmp_path, world).change("m", lambda e: e)  # the same entry, another image
    assert change.container_created and change.phases == 0
    assert world.log == ROLL
    assert world.images == dict.fromkeys(SERVERS, NEW)


def test_an_image_change_with_a_new_version_rolls_the_same_way(tmp_path):
    world = World(on_disk=[entry(1)])
    pool(tmp_path, world).change("m", lambda _e: entry(1, 2))
    assert [e for e in world.log if e[0] != "serves"] == [e for e in ROLL if e[0] != "serves"]
    assert ("reload", "tfserving-local") not in world.log  # a new container reads the file at start
    assert world.log.index(("serves", "tfserving-local", 2)) < world.log.index(("drain", "replica2"))


def test_the_same_image_reloads_each_replica_in_turn_and_replaces_nothing(tmp_path):
    world = World(on_disk=[entry(1)])
    pool(tmp_path, world, image=OLD).change("m", lambda _e: entry(1, 2))
    assert [e for e in world.log if e[0] in ("drain", "reload", "replace", "ready")] == [
        ("drain", "replica1"),
        ("reload", "tfserving-local"),
        ("ready", "replica1"),
        ("drain", "replica2"),
        ("reload", "tfserving-local-1"),
        ("ready", "replica2"),
    ]


def test_an_image_that_does_not_start_stops_the_roll_at_replica_0(tmp_path):
    world = World(on_disk=[entry(1)], fail_start="tfserving-local")
    with pytest.raises(ServerStartError):
        pool(tmp_path, world).change("m", lambda e: e)
    assert world.log == [("drain", "replica1"), ("replace", "tfserving-local", NEW), ("ready", "replica1")]
    assert world.images["tfserving-local-1"] == OLD and world.state["replica2"] == "ready"  # untouched, serving


def test_a_replaced_replica_the_router_never_sees_up_stops_the_roll(tmp_path):
    world = World(on_disk=[entry(1)], never_up="replica1")
    with pytest.raises(RouterError, match=r"replica1 .* is not UP at the router within 2s.*left untouched"):
        pool(tmp_path, world).change("m", lambda e: e)
    assert ("drain", "replica2") not in world.log and world.images["tfserving-local-1"] == OLD
