"""A serving target's config, changed as one transaction per change.

TF Serving has no API to read its config back and a reload is a full replacement, so the pipeline owns the
config: ``<model_root>/models.config``, which each deployment edits for its own model only. A change is:
take the host's config lock, read the file ONCE, compute the model's new entry, validate it (building the
``ModelServerConfig``), write the file atomically ONCE, reload the running server ONCE (or create the
server container, which reads the file at start), and verify ONCE (the entry's versions AVAILABLE, the
dropped ones unloaded, their staged copies removed). If applying or verifying fails, the previous file is
written back and re-applied, so the file on disk and the served config agree.

The two-phase label rule lives here and only here: TF Serving may only label a version that is already
AVAILABLE, so an edit that adds a version AND points a label at it is applied as two changes: first the
versions with the labels it can keep, then (once the new version is AVAILABLE) the labels.

A pool of several replicas changes one replica at a time, whatever the change: a reload, or a container replaced
because its spec changed (another serving image, say). Each replica is drained at the router first, changed,
verified, put back in rotation, and (if its container was new) waited for until the router has it UP again, before
the next one is touched; a failure stops there, the other replicas untouched.

A pool may span several Docker hosts (replica ``i`` on host ``i % hosts``, ``core.placement``): every host that runs
one of its replicas gets each staged version and each models.config write; the first host's models.config is the
one read back, and its config lock serializes changes.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from tfdeploy.core.errors import RouterError
from tfdeploy.core.models_config import ServedModel, build_model_config
from tfdeploy.core.placement import hosts_in_use, replica_host
from tfdeploy.hooks.router import RouterHook
from tfdeploy.hooks.serving_host import ServerInfo, ServingHostHook
from tfdeploy.hooks.tfserving import TFServingHook
from tfdeploy.services.targets import ServingTarget

if TYPE_CHECKING:
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

    from tfdeploy.hooks.model_store import ModelStoreHook

log = logging.getLogger(__name__)

Edit = Callable[[ServedModel | None], ServedModel | None]


@dataclass(frozen=True)
class ConfigChange:
    """What one transaction did to a model's entry: before, after, how many reloads, container created."""

    model: str
    before: ServedModel | None
    after: ServedModel | None
    phases: int
    container_created: bool

    @property
    def dropped(self) -> list[int]:
        kept = set(self.after.versions) if self.after else set()
        return sorted(set(self.before.versions if self.before else ()) - kept)


def with_entry(models: Sequence[ServedModel], entry: ServedModel | None, name: str) -> list[ServedModel]:
    """The config's models with ``name``'s entry replaced by ``entry`` (or removed when None), sorted by name."""
    out = [m for m in models if m.name != name]
    if entry is not None:
        out.append(entry)
    return sorted(out, key=lambda m: m.name)


def label_phases(before: ServedModel | None, after: ServedModel | None) -> list[ServedModel | None]:
    """The changes that take ``before`` to ``after`` under TF Serving's label rule (one or two).

    A label pointing at a version that ``before`` does not serve waits for a second change; meanwhile it
    keeps its old version if that stays served, else it is left out.
    """
    if after is None:
        return [None]
    new = set(after.versions) - set(before.versions if before else ())
    if not any(version in new for version in after.labels.values()):
        return [after]
    first: dict[str, int] = {}
    for label, version in after.labels.items():
        if version not in new:
            first[label] = version
        elif before is not None and before.labels.get(label) in after.versions:
            first[label] = before.labels[label]
    return [replace(after, labels=first), after]


class ServingTargetService:
    """What the pipeline does to one serving target: stage versions, change the config, check labels.

    :param target: the target (its Connections, image, container name, hosts and volume).
    :param host: the serving host's hook, for a pool on one host (default: ``target.serving_host()``).
    :param hosts: the hooks of the pool's hosts, replica ``i`` on ``hosts[i % len(hosts)]`` (default: one per
        host of the target that runs a replica of the pool).
    :param serving: the TF Serving hook of the pool's first replica (default: from ``target.tfserving_conn_id``,
        whose ``extra.replicas`` says how many replicas the pool has).
    :param router: the router's hook (default: from ``target.router_conn_id``), used to drain a replica
        while it changes when the pool has more than one.
    :param poll_seconds: the server's file-system poll (``--file_system_poll_wait_seconds``).
    :param available_timeout_s: how long a version may take to become AVAILABLE (or unload).
    :param drain_timeout_s: how long a replica's in-flight requests may take to finish when it is drained, and a
        new replica container to be UP at the router again.
    """

    def __init__(
        self,
        target: ServingTarget,
        *,
        host: ServingHostHook | None = None,
        hosts: Sequence[ServingHostHook] | None = None,
        serving: TFServingHook | None = None,
        router: RouterHook | None = None,
        poll_seconds: int = 1,
        available_timeout_s: float = 300,
        drain_timeout_s: float = 30,
    ) -> None:
        self.target = target
        if host is not None and hosts is not None:
            raise ValueError("give host or hosts, not both")
        self._hosts = list(hosts) if hosts is not None else [host] if host is not None else None
        self.serving = serving or TFServingHook(target.tfserving_conn_id)
        self._router = router
        self.poll_seconds = poll_seconds
        self.available_timeout_s = available_timeout_s
        self.drain_timeout_s = drain_timeout_s

    @cached_property
    def replicas(self) -> list[TFServingHook]:
        """One TF Serving hook per replica of the pool (the first is ``serving``)."""
        return self.serving.replicas()

    @cached_property
    def hosts(self) -> list[ServingHostHook]:
        """The pool's Docker hosts, the primary first: those of the target that run at least one replica."""
        if self._hosts is not None:
            return self._hosts
        return [self.target.serving_host(conn) for conn in hosts_in_use(len(self.replicas), self.target.hosts)]

    @property
    def host(self) -> ServingHostHook:
        """The primary host: its models.config is read back, its lock serializes changes."""
        return self.hosts[0]

    def host_of(self, replica: int) -> ServingHostHook:
        """The host that runs replica ``replica``."""
        return replica_host(replica, self.hosts)

    @cached_property
    def router(self) -> RouterHook:
        return self._router or RouterHook(self.target.router_conn_id)

    @property
    def name(self) -> str:
        return self.target.name

    # ------------------------------------------------------------------ model directory

    def stage(self, store: ModelStoreHook, model: str, version: int, *, manifest_sha256: str) -> str:
        """Put ``version`` of ``model`` from the model store onto every host of the pool; returns its base path.

        The worker fetches it, every file checked against the manifest, the manifest pinned to ``manifest_sha256``
        (what the registry recorded): a corrupt or swapped file fails naming it, and nothing is staged. Then each
        host stages it (``ServingHostHook.stage_version``: into its volume through a helper container that checks
        every file's sha256 there before the atomic rename). A pool on one host that bind-mounts ``model_root``
        (no volume) fetches straight into it instead. Already staged and identical: kept.
        """
        hosts = self.hosts
        if len(hosts) == 1 and not hosts[0].volume:
            hosts[0].check_shared_disk()
            store.fetch(
                model, version, hosts[0].model_dir(model), expected_manifest_sha256=manifest_sha256, durable=True
            )
            return hosts[0].container_base_path(model)
        scratch = tempfile.mkdtemp(prefix=".fetch-", dir=_mkdir(self.target.model_root))
        try:
            local = store.fetch(model, version, scratch, expected_manifest_sha256=manifest_sha256)
            for host in hosts:
                host.stage_version(local, model, version)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return hosts[0].container_base_path(model)

    def discard(self, model: str, version: int) -> None:
        """Remove a staged version that no config serves (a candidate that never reached the server)."""
        with self.host.config_lock():
            entry = _find(self.host.read_config(), model)
            if entry is None or version not in entry.versions:
                for host in self.hosts:
                    host.remove_staged(model, version)

    # ------------------------------------------------------------------ config

    def entry(self, model: str) -> ServedModel | None:
        """The model's entry in models.config as it is now."""
        return _find(self.host.read_config(), model)

    def change(self, model: str, edit: Edit) -> ConfigChange:
        """Change ``model``'s entry to ``edit(current entry)`` (None: stop serving it), as one transaction.

        See the module docstring. Raises what the hooks raise (``ServingReloadError``,
        ``VersionNotAvailable``, ``ServerStartError`` ...) after restoring the previous config.
        """
        with self.host.config_lock():
            models = self.host.read_config()
            self._sync_hosts(models)
            before = _find(models, model)
            after = edit(before)
            if after is not None and after.name != model:
                raise ValueError(f"an edit of {model!r} returned an entry for {after.name!r}")
            if after == before:  # nothing to change, but what the file says must be served: its containers run
                created = bool(models) and self._ensure_running(model, after)
                return ConfigChange(model, before, after, phases=0, container_created=created)
            steps = label_phases(before, after)
            configs = [build_model_config(with_entry(models, step, model)) for step in steps]  # validates
            created = False
            current = before
            try:
                for config, step in zip(configs, steps, strict=True):
                    created = self._apply(config, model, current, step) or created
                    current = step
            except BaseException:
                self._restore(models, model, before)
                raise
            change = ConfigChange(model, before, after, phases=len(configs), container_created=created)
            for version in change.dropped:
                for host in self.hosts:
                    host.remove_staged(model, version)
        log.info(
            "%s on %s: %s -> %s (%d reload(s)%s)",
            model,
            self.name,
            _describe(before),
            _describe(after),
            change.phases,
            ", container created" if created else "",
        )
        return change

    def describe(self, change: ConfigChange) -> dict[str, object]:
        """Which replicas of which pool serve what after ``change``: the registry's ``serving`` event."""
        after = change.after
        return {
            "target": self.name,
            "pool": self.target.pool,
            "replicas": [self.target.container(i) for i in range(len(self.replicas))],
            "versions": list(after.versions) if after else [],
            "labels": dict(after.labels) if after else {},
            "unloaded": change.dropped,
            "reloads": change.phases,
        }

    def label_version(self, model: str, label: str) -> int:
        """The version that ``/labels/<label>`` of ``model`` answers from (asks the server)."""
        return int(self.serving.metadata(model, label=label)["model_spec"]["version"])

    # ------------------------------------------------------------------ internals

    def _apply(
        self, config: ModelServerConfig, model: str, before: ServedModel | None, after: ServedModel | None
    ) -> bool:
        """Write the config once on each host, then each replica in turn, out of rotation (see
        :meth:`_out_of_rotation`): reload it once, or create (replace) its container, which reads the file at start;
        verify it. True if a container was created."""
        for host in self.hosts:
            host.write_config(config)
        serves_models = bool(config.model_config_list.config)
        created_any = False
        for index, serving in enumerate(self.replicas):
            if not serves_models:  # nothing left to serve: unload everything, but start no server for nothing
                if serving.is_ready():
                    serving.reload(config)
                    self._verify(serving, model, before, after)
                continue
            with self._out_of_rotation(index) as replica:
                replica.created = self._ensure_replica(index).created
                created_any = created_any or replica.created
                if not replica.created:
                    serving.reload(config)
                self._verify(serving, model, before, after)
        return created_any

    @contextlib.contextmanager
    def _out_of_rotation(self, index: int) -> Iterator[_Replica]:
        """Replica ``index`` drained at the router while the block changes it, when the pool has others to carry
        the traffic; back in rotation after, whatever happened. When the block (re)created its container
        (``replica.created``), wait until the router has it UP before going on, so that no two replicas are ever out
        of rotation at once: raises :class:`RouterError` if it is not UP within ``drain_timeout_s``."""
        replica = _Replica()
        if len(self.replicas) < 2:
            yield replica
            return
        server = self.target.router_server(index)
        self.router.drain(self.target.router_backends, server, timeout_s=self.drain_timeout_s)
        try:
            yield replica
        finally:
            for backend in self.target.router_backends:
                self.router.set_state(backend, server, "ready")
        if replica.created:
            self._wait_in_rotation(server)

    def _wait_in_rotation(self, server: str) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while True:
            states = {
                backend: (self.router.server_stats(backend).get(server) or {}).get("status", "missing")
                for backend in self.target.router_backends
            }
            if all(state == "UP" for state in states.values()):
                return
            if time.monotonic() >= deadline:
                raise RouterError(
                    f"{server} of {self.name}'s {self.target.pool} pool, its container just (re)created, is not UP at "
                    f"the router within {self.drain_timeout_s:g}s ({states}); the replicas after it were left "
                    "untouched. Check its health checks and logs (`make status`, docker logs), then run the change "
                    "again"
                )
            time.sleep(0.1)

    def _ensure_replica(self, index: int) -> ServerInfo:
        """Replica ``index``'s container running the pool's image from models.config (created if it is not)."""
        grpc_port, rest_port = self.serving.ports
        return self.host_of(index).ensure_server(
            name=self.target.container(index),
            image=self.target.image,
            grpc_port=grpc_port + 2 * index,
            rest_port=rest_port + 2 * index,
            poll_seconds=self.poll_seconds,
        )

    def _sync_hosts(self, models: list[ServedModel]) -> None:
        """Every host of the pool has every version ``models`` (the primary's config) serves, and that config: a
        version a host lacks (a host new to the pool) is copied from the primary, checked as any staging."""
        if len(self.hosts) < 2:
            return
        wanted = {(m.name, v) for m in models for v in m.versions}
        config = build_model_config(models)
        for host in self.hosts[1:]:
            missing = sorted(wanted - host.staged_versions())
            if missing:
                log.info("%s: copying %s from %s to %s", self.name, missing, self.host.where, host.where)
                scratch = Path(tempfile.mkdtemp(prefix=".copy-", dir=_mkdir(self.target.model_root)))
                try:
                    for name, version in missing:
                        host.stage_version(self.host.copy_version(name, version, scratch / name), name, version)
                finally:
                    shutil.rmtree(scratch, ignore_errors=True)
            if models and host.read_config() != models:
                host.write_config(config)

    def _ensure_running(self, model: str, entry: ServedModel | None) -> bool:
        """Create any replica whose container is gone or differs (another image: replaced), one replica at a time
        out of rotation (it reads the file at start), and verify it; True if any was.

        So the serving side catches up with the file and the pool's spec, e.g. after `make down` removed the
        containers, or when a run chose another serving image."""
        created = False
        for index, serving in enumerate(self.replicas):
            with self._out_of_rotation(index) as replica:  # a container replaced for a new spec: drained first
                replica.created = self._ensure_replica(index).created
                if replica.created:
                    self._verify(serving, model, None, entry)
            created = created or replica.created
        return created

    def _verify(
        self, serving: TFServingHook, model: str, before: ServedModel | None, after: ServedModel | None
    ) -> None:
        for version in after.versions if after else ():
            serving.wait_until_available(model, version, deadline_s=self.available_timeout_s, poll_interval_s=0.1)
        for version in sorted(set(before.versions if before else ()) - set(after.versions if after else ())):
            serving.wait_until_unloaded(model, version, deadline_s=self.available_timeout_s, poll_interval_s=0.1)

    def _restore(self, models: list[ServedModel], model: str, before: ServedModel | None) -> None:
        """Best effort after a failed change: the previous config back on disk and on the server."""
        try:
            config = build_model_config(models)
            for host in self.hosts:
                host.write_config(config)
            for serving in self.replicas:
                if serving.is_ready():
                    serving.reload(config)
            log.warning("%s on %s: change failed; previous config restored (%s)", model, self.name, _describe(before))
        except Exception as exc:  # noqa: BLE001 - the original error matters more; say what is left
            log.error(
                "%s on %s: change failed AND restoring the previous config failed (%s); make %s serve %s and "
                "reload the server by hand",
                model,
                self.name,
                exc,
                self.host.where,
                _describe(before),
            )


@dataclass
class _Replica:
    """What changing one replica did: whether its container was (re)created."""

    created: bool = False


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _find(models: Sequence[ServedModel], name: str) -> ServedModel | None:
    return next((m for m in models if m.name == name), None)


def _describe(entry: ServedModel | None) -> str:
    if entry is None:
        return "not served"
    labels = ", ".join(f"{k}={v}" for k, v in sorted(entry.labels.items()))
    return f"versions {list(entry.versions)}" + (f" ({labels})" if labels else "")
