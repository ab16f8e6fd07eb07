"""ServingHostHook: a TF Serving host on a Docker engine: its model directory and its server container.

The model directory ``model_root`` lives on the machine that runs the task and is bind-mounted read-only
at ``/models`` in the server container, so the Docker daemon must run on this same machine
(:meth:`ServingHostHook.check_shared_disk`). Layout::

    model_root/models.config          the server's --model_config_file (written atomically)
    model_root/.config.lock           serializes config changes on this host (config_lock())
    model_root/monitoring.config      the server's --monitoring_config_file: Prometheus metrics enabled
    model_root/<model>/<version>/     SavedModel versions (staged atomically: temp dir, then rename)

The container runs the serving image (``tensorflow/serving`` in production) with ``--model_config_file``; it
is a long-running server, so it is managed with the Docker SDK (create, compare, replace, stop), not with
``DockerOperator``, which runs a container to its exit.

Connection (default ``serving_host_local``): ``host`` is the Docker engine's base URL
(``unix:///var/run/docker.sock``, ``tcp://host:2376``); ``extra`` may hold ``tls_verify`` (bool) and the
paths ``tls_ca_cert``, ``tls_client_cert``, ``tls_client_key``. The Docker provider's own Connection
(``docker_conn_id``) is only a registry login, used when an image has to be pulled.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import ipaddress
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

from airflow.sdk.bases.hook import BaseHook

from tfdeploy.core.errors import (
    ChecksumMismatch,
    DockerEngineUnavailable,
    ServerNotFound,
    ServerStartError,
    SharedDiskRequired,
    StagingConflict,
)
from tfdeploy.core.manifest import (
    MANIFEST_NAME,
    build_manifest,
    check_links,
    fsync_dir,
    parse_manifest,
    verify_tree,
)
from tfdeploy.core.models_config import ServedModel, parse_text, served_models, to_text
from tfdeploy.core.names import (
    SERVING_CONFIG_NAME,
    SERVING_LOCK_NAME,
    SERVING_MONITORING_NAME,
    check_version,
    parse_version_dir,
    validate_model_name,
)

if TYPE_CHECKING:
    import docker
    from airflow.providers.docker.hooks.docker import DockerHook
    from docker.models.containers import Container
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

CONTAINER_ROOT = "/models"
# The host's own files beside the model directories: named in core/names.py, whose model-name rule refuses them.
CONFIG_NAME = SERVING_CONFIG_NAME
MONITORING_NAME = SERVING_MONITORING_NAME
# TF Serving's MonitoringConfig (text proto): its Prometheus page at the path the pipeline's gray release reads
MONITORING_CONFIG = 'prometheus_config {\n  enable: true\n  path: "/monitoring/prometheus/metrics"\n}\n'
LOCK_NAME = SERVING_LOCK_NAME
GRPC_PORT = 8500  # inside the container, as in tensorflow/serving
REST_PORT = 8501
LABEL_MANAGED = "tfdeploy.serving.managed"
LABEL_SPEC_HASH = "tfdeploy.serving.spec-hash"
LABEL_MODEL_ROOT = "tfdeploy.serving.model-root"
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


_P = ParamSpec("_P")
_R = TypeVar("_R")


def docker_call(
    method: Callable[Concatenate[ServingHostHook, _P], _R],
) -> Callable[Concatenate[ServingHostHook, _P], _R]:
    """A method that talks to the Docker engine: an engine that refuses the connection or does not answer within
    ``docker_timeout`` raises :class:`DockerEngineUnavailable` naming it (the original error is its cause)."""

    @functools.wraps(method)
    def call(self: ServingHostHook, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        import requests
        from docker.errors import DockerException

        try:
            return method(self, *args, **kwargs)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise self._engine_unavailable(method.__name__, exc) from exc
        except DockerException as exc:  # the client's first call (the API version) wraps the requests error
            if isinstance(exc.__cause__, requests.ConnectionError | requests.Timeout):
                raise self._engine_unavailable(method.__name__, exc.__cause__) from exc
            raise

    return call


@dataclass(frozen=True)
class ServerInfo:
    """A running server container."""

    container_id: str
    name: str
    image: str
    created: bool  # True: (re)created by this call; False: an identical running container was reused


class ServingHostHook(BaseHook):
    """A serving host: ``model_root`` on this machine, and server containers on its Docker engine.

    :param serving_host_conn_id: Connection with the Docker engine's base URL (``host``) and TLS settings
        (``extra``); ``None`` uses ``base_url`` alone.
    :param model_root: the host directory bind-mounted at ``/models`` in the server containers.
    :param base_url: overrides the Connection's Docker base URL.
    :param docker_conn_id: the Docker provider's Connection: a registry login, used only to pull an image
        missing from the engine.
    :param docker_timeout: seconds for each Docker API call; an engine that does not answer in time (or refuses
        the connection) raises :class:`DockerEngineUnavailable` naming it.
    """

    conn_name_attr = "serving_host_conn_id"
    default_conn_name = "serving_host_local"
    conn_type = "tfdeploy_serving_host"
    hook_name = "TensorFlow Serving host (Docker)"

    def __init__(
        self,
        serving_host_conn_id: str | None = default_conn_name,
        *,
        model_root: str | os.PathLike[str],
        base_url: str | None = None,
        docker_conn_id: str | None = None,
        docker_timeout: int = 60,
    ) -> None:
        super().__init__()
        if not base_url and not serving_host_conn_id:
            raise ValueError("give serving_host_conn_id (a Connection naming the Docker engine) or base_url")
        self.serving_host_conn_id = serving_host_conn_id
        self._base_url = base_url
        self.model_root = Path(model_root).expanduser().resolve()
        self.docker_conn_id = docker_conn_id
        self.docker_timeout = docker_timeout

    # ------------------------------------------------------------------ clients, built lazily

    @cached_property
    def _extra(self) -> dict[str, Any]:
        if not self.serving_host_conn_id:
            return {}
        return dict(self.get_connection(self.serving_host_conn_id).extra_dejson)

    @cached_property
    def base_url(self) -> str:
        """The Docker engine's URL: ``base_url`` if given, else the Connection's host."""
        if self._base_url:
            return self._base_url
        assert self.serving_host_conn_id is not None
        host = self.get_connection(self.serving_host_conn_id).host
        if not host:
            raise ValueError(
                f"Connection {self.serving_host_conn_id!r} has no host: set it to the Docker engine's URL, "
                "e.g. unix:///var/run/docker.sock"
            )
        return str(host)

    @cached_property
    def tls(self) -> Any:
        """A ``docker.tls.TLSConfig`` from the Connection's extra, or None for a plain socket."""
        extra = self._extra
        if not any(extra.get(k) for k in ("tls_ca_cert", "tls_client_cert", "tls_client_key", "tls_verify")):
            return None
        from docker.tls import TLSConfig

        cert = extra.get("tls_client_cert"), extra.get("tls_client_key")
        return TLSConfig(
            client_cert=cert if all(cert) else None,
            ca_cert=extra.get("tls_ca_cert") or None,
            verify=extra.get("tls_ca_cert") or bool(extra.get("tls_verify")),
        )

    @cached_property
    def docker_hook(self) -> DockerHook:
        from airflow.providers.docker.hooks.docker import DockerHook

        return DockerHook(
            docker_conn_id=self.docker_conn_id, base_url=self.base_url, tls=self.tls, timeout=self.docker_timeout
        )

    @cached_property
    def docker_client(self) -> docker.DockerClient:
        import docker

        return docker.DockerClient(base_url=self.base_url, tls=self.tls or False, timeout=self.docker_timeout)

    def get_conn(self) -> docker.DockerClient:
        return self.docker_client

    def _engine_unavailable(self, doing: str, exc: BaseException) -> DockerEngineUnavailable:
        return DockerEngineUnavailable(
            f"the Docker engine at {self.base_url} did not answer ({doing.strip('_').replace('_', ' ')}, timeout "
            f"{self.docker_timeout}s per call): {type(exc).__name__}: {exc}. Is it running and responsive "
            "(`make status`, `docker info`)? Retry once it answers"
        )

    def close(self) -> None:
        if "docker_client" in self.__dict__:
            self.__dict__.pop("docker_client").close()

    # ------------------------------------------------------------------ shared disk

    def check_shared_disk(self) -> None:
        """Raise :class:`SharedDiskRequired` unless the Docker daemon runs on this machine.

        Versions are staged into ``model_root`` here and bind-mounted into the container: that only works
        when the daemon sees this machine's disk (a ``unix://`` socket, or ``tcp://`` to a loopback address).
        """
        url = self.base_url if "://" in self.base_url else f"tcp://{self.base_url}"
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("unix", "npipe"):
            return
        if scheme in ("tcp", "http", "https"):
            host = (parts.hostname or "").lower()
            if host in _LOOPBACK_NAMES or _is_loopback_ip(host):
                return
            where = f"on {host or '?'}"
        elif scheme == "ssh":
            where = f"reached over ssh ({parts.hostname})"
        else:
            where = f"at an address of unknown kind ({scheme}://)"
        raise SharedDiskRequired(
            f"the Docker daemon at {self.base_url} is remote ({where}): model versions are staged into "
            f"{self.model_root} on this machine and bind-mounted into the server container, which a remote "
            "daemon cannot see. Run the task on the serving host (with DOCKER_HOST=unix:///var/run/docker.sock), "
            "or stage the models through a volume the daemon's host can read."
        )

    # ------------------------------------------------------------------ model directory

    def container_base_path(self, model: str) -> str:
        """``base_path`` of ``model`` as the server container sees it (for models.config)."""
        return f"{CONTAINER_ROOT}/{validate_model_name(model)}"

    def model_dir(self, model: str) -> Path:
        """Host directory of a model's versions: ``model_root/<model>``."""
        return self.model_root / validate_model_name(model)

    def version_dir(self, model: str, version: int) -> Path:
        """Host directory of a staged version: ``model_root/<model>/<version>``."""
        return self.model_dir(model) / str(check_version(version))

    def stage_version(self, src_dir: str | os.PathLike[str], model: str, version: int) -> str:
        """Copy the SavedModel in ``src_dir`` to ``model_root/<model>/<version>`` atomically, verified.

        The copy goes to a non-numeric temp directory (which TF Serving ignores), is verified file by file
        (size and sha256) against the source's manifest (its ``tfdeploy_manifest.json`` when it has one,
        else one built from the source), and only then renamed into place (a source whose symlinks lead out of
        it is refused with :class:`PublishError` before anything is copied), so the server never sees a
        half-written or corrupt version; a mismatch raises :class:`ChecksumMismatch` naming the file and
        nothing is staged. A version already staged with the same content is a no-op; different content
        raises :class:`StagingConflict`. Returns the model's base path in the container (``/models/<model>``).

        (The pipeline stages from HDFS with ``ModelStoreHook.fetch`` straight into :meth:`model_dir`; this is
        for a SavedModel already on this machine.)
        """
        self.check_shared_disk()
        src = Path(src_dir)
        if not src.is_dir():
            raise FileNotFoundError(f"cannot stage {src}: not a directory (expected a SavedModel version directory)")
        check_links(src)  # the copy below follows links: none may lead out of the SavedModel
        manifest = _manifest_of(src)
        dest = self.version_dir(model, version)
        model_dir = dest.parent
        model_dir.mkdir(parents=True, exist_ok=True)
        self._check_aliases(model_dir, version)
        if dest.exists():
            self._check_same(manifest, dest, model, version)
            self.log.info("version %s of %s already staged at %s with the same content", version, model, dest)
            return self.container_base_path(model)
        tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex}"
        try:
            shutil.copytree(src, tmp, copy_function=_copy_synced)
            problems = verify_tree(manifest, tmp)
            if problems:
                raise ChecksumMismatch(
                    f"staging {model} v{version} from {src}: {problems[0]}"
                    + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else "")
                    + "; nothing was staged. Check the source and stage again.",
                    path=problems[0].path,
                )
            fsync_dir(tmp)
            os.rename(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if dest.exists():  # another task staged it meanwhile: fine if identical
                self._check_same(manifest, dest, model, version)
                return self.container_base_path(model)
            raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_dir(model_dir)
        self.log.info("staged version %s of %s at %s", version, model, dest)
        return self.container_base_path(model)

    def remove_staged(self, model: str, version: int) -> None:
        """Delete ``model_root/<model>/<version>`` (no-op if absent).

        Remove a version only after a reload without it and ``wait_until_unloaded``. The directory is first
        renamed to a non-numeric name, so the server never sees a half-deleted version.
        """
        dest = self.version_dir(model, version)
        if not dest.exists():
            return
        trash = dest.parent / f".tmp-removing-{version}-{uuid.uuid4().hex}"
        os.rename(dest, trash)
        shutil.rmtree(trash)
        self.log.info("removed staged version %s of %s (%s)", version, model, dest)

    # ------------------------------------------------------------------ models.config

    @property
    def config_path(self) -> Path:
        return self.model_root / CONFIG_NAME

    @contextlib.contextmanager
    def config_lock(self) -> Iterator[None]:
        """Hold ``model_root/.config.lock`` exclusively: config changes on this host never interleave."""
        self.model_root.mkdir(parents=True, exist_ok=True)
        with open(self.model_root / LOCK_NAME, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def read_config(self) -> list[ServedModel]:
        """The models ``models.config`` serves now (``[]`` if there is no file yet)."""
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return served_models(parse_text(text))

    def write_config(self, config: ModelServerConfig) -> str:
        """Write ``model_root/models.config`` atomically (temp file, fsync, rename); returns its container path.

        ``config`` is a ``ModelServerConfig`` (``models_config.build_model_config`` validates it), so the file
        is always one TF Serving parses.
        """
        text = to_text(config)
        self.model_root.mkdir(parents=True, exist_ok=True)
        tmp = self.model_root / f".{CONFIG_NAME}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.config_path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        fsync_dir(self.model_root)
        return f"{CONTAINER_ROOT}/{CONFIG_NAME}"

    def _check_aliases(self, model_dir: Path, version: int) -> None:
        # TF Serving reads '007' as version 7: another spelling of the same number would be a second copy.
        for child in model_dir.iterdir():
            if child.name != str(version) and parse_version_dir(child.name) == version:
                raise StagingConflict(
                    f"{child} is already version {version} of {model_dir.name} for TF Serving (it reads directory "
                    f"names as integers); remove it before staging {version} as {model_dir / str(version)}"
                )

    def _check_same(self, manifest: dict[str, Any], dest: Path, model: str, version: int) -> None:
        problems = verify_tree(manifest, dest)
        if problems:
            raise StagingConflict(
                f"version {version} of model {model!r} is already staged at {dest} with different content "
                f"({problems[0]}). A version number names one immutable model: register the new model as a new "
                "version, or remove the staged one (after unloading it) if it is known to be wrong."
            )

    # ------------------------------------------------------------------ server container

    @docker_call
    def ensure_server(
        self,
        *,
        name: str,
        image: str,
        grpc_port: int,
        rest_port: int,
        extra_args: tuple[str, ...] | list[str] = (),
        poll_seconds: int = 1,
        start_timeout_s: float = 180.0,
    ) -> ServerInfo:
        """Make sure container ``name`` runs ``image`` serving ``model_root/models.config``; wait until it answers.

        Ports 8500 (gRPC) and 8501 (REST) are published on 127.0.0.1:``grpc_port`` / ``rest_port``. A running
        container with the same spec (image id, arguments, ports, mount) is reused (``created=False``); any
        other container of that name is replaced. Call :meth:`write_config` first: the server starts only
        with a config whose models all have an AVAILABLE version. Raises :class:`ServerStartError` with the
        container's last log lines if it exits or does not answer within ``start_timeout_s``.
        """
        from docker.errors import APIError, DockerException

        config_path = self.config_path
        if not config_path.is_file():
            raise ServerStartError(
                f"no {config_path}: call write_config() with at least one staged model before ensure_server()"
            )
        client = self.docker_client
        image_id = self._image_id(image)
        self._write_monitoring_config()
        args = [
            f"--model_config_file={CONTAINER_ROOT}/{CONFIG_NAME}",
            f"--monitoring_config_file={CONTAINER_ROOT}/{MONITORING_NAME}",
            "--model_config_file_poll_wait_seconds=0",
            f"--file_system_poll_wait_seconds={int(poll_seconds)}",
            # labels in models.config are assigned before versions load at start-up (ServerCore::ReloadConfig):
            # the flag lets a restarted container come back with the file's labels
            "--allow_version_labels_for_unavailable_models=true",
            *extra_args,
        ]
        ports = {f"{GRPC_PORT}/tcp": ("127.0.0.1", int(grpc_port)), f"{REST_PORT}/tcp": ("127.0.0.1", int(rest_port))}
        mount = {str(self.model_root): {"bind": CONTAINER_ROOT, "mode": "ro"}}
        spec = {"image_id": image_id, "args": args, "ports": ports, "mount": mount, "restart": "unless-stopped"}
        spec_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        rest_url = f"http://127.0.0.1:{int(rest_port)}"
        info = {"name": name, "image": image}

        existing = self._find(name)
        if existing is not None:
            if existing.status == "running" and existing.labels.get(LABEL_SPEC_HASH) == spec_hash:
                self.log.info("reusing server container %s (%s): same spec", name, existing.short_id)
                self._wait_ready(existing, rest_url, start_timeout_s)
                return ServerInfo(container_id=str(existing.id), created=False, **info)
            self.log.info(
                "replacing server container %s (%s): %s",
                name,
                existing.short_id,
                "spec changed" if existing.status == "running" else f"status {existing.status}",
            )
            existing.remove(force=True)
        try:
            container = client.containers.run(
                image_id,
                args,
                name=name,
                detach=True,
                ports=ports,
                volumes=mount,
                restart_policy={"Name": "unless-stopped"},
                labels={
                    LABEL_MANAGED: "true",
                    LABEL_SPEC_HASH: spec_hash,
                    LABEL_MODEL_ROOT: str(self.model_root),
                    "tfdeploy.serving.image": image,
                },
            )
        except APIError as exc:
            leftover = self._find(name)
            if leftover is not None and leftover.status == "running":
                if leftover.labels.get(LABEL_SPEC_HASH) == spec_hash:  # another task created it just now
                    self._wait_ready(leftover, rest_url, start_timeout_s)
                    return ServerInfo(container_id=str(leftover.id), created=False, **info)
            elif leftover is not None:  # created but not started (e.g. a port is taken): don't leave it
                with contextlib.suppress(DockerException):
                    leftover.remove(force=True)
            raise ServerStartError(
                f"could not start server container {name!r} from {image}: {exc.explanation or exc}. "
                f"If a port is taken, choose free ports (gRPC {grpc_port}, REST {rest_port})."
            ) from exc
        self.log.info("created server container %s (%s) from %s", name, container.short_id, image)
        self._wait_ready(container, rest_url, start_timeout_s)
        return ServerInfo(container_id=str(container.id), created=True, **info)

    def _write_monitoring_config(self) -> None:
        """``model_root/monitoring.config`` (atomically, only when it differs): the servers' Prometheus page."""
        path = self.model_root / MONITORING_NAME
        if path.is_file() and path.read_text() == MONITORING_CONFIG:
            return
        tmp = path.with_name(f".{MONITORING_NAME}.{os.getpid()}")
        tmp.write_text(MONITORING_CONFIG)
        os.replace(tmp, path)

    @docker_call
    def stop_server(self, name: str, *, timeout: int = 30) -> None:
        """Stop and remove container ``name`` (no-op if there is none)."""
        from docker.errors import NotFound

        container = self._find(name)
        if container is None:
            return
        with contextlib.suppress(NotFound):
            container.stop(timeout=timeout)
        with contextlib.suppress(NotFound):
            container.remove(force=True)
        self.log.info("stopped and removed server container %s", name)

    @docker_call
    def server_logs(self, name: str, tail: int = 50) -> str:
        """The last ``tail`` lines of container ``name``'s output; raises :class:`ServerNotFound` if none."""
        container = self._find(name)
        if container is None:
            raise ServerNotFound(f"no container named {name!r} on the Docker engine at {self.base_url}")
        return _logs(container, tail)

    @docker_call
    def inspect_server(self, name: str) -> dict[str, Any]:
        """``docker inspect`` of container ``name`` (the engine's whole answer, environment values included: redact
        before it leaves the machine); raises :class:`ServerNotFound` if there is none."""
        container = self._find(name)
        if container is None:
            raise ServerNotFound(f"no container named {name!r} on the Docker engine at {self.base_url}")
        return dict(container.attrs)

    def _find(self, name: str) -> Container | None:
        from docker.errors import NotFound

        try:
            return self.docker_client.containers.get(name)
        except NotFound:
            return None

    def _image_id(self, image: str) -> str:
        from docker.errors import ImageNotFound

        try:
            return str(self.docker_client.images.get(image).id)
        except ImageNotFound:
            pass
        self.log.info("image %s is not on the engine: pulling it", image)
        repository, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "latest")
        try:
            self.docker_hook.get_conn().pull(repository, tag=tag)  # the hook's client carries the registry login
            return str(self.docker_client.images.get(image).id)
        except Exception as exc:  # noqa: BLE001 - docker's errors, and the provider's AirflowException
            raise ServerStartError(
                f"image {image} is not on the Docker engine at {self.base_url} and pulling it failed: {exc}. "
                "Build or load the image on the serving host, or set docker_conn_id to a registry login."
            ) from exc

    def _wait_ready(self, container: Container, rest_url: str, timeout_s: float) -> None:
        import requests
        from docker.errors import DockerException

        # A published port accepts TCP before the server listens (docker-proxy), and TF Serving opens its
        # ports only once every model is AVAILABLE: ready = an HTTP answer, any status.
        deadline = time.monotonic() + timeout_s
        probe = f"{rest_url}/v1/models/tfdeploy-readiness-probe"
        restarts_before: int | None = None
        with requests.Session() as session:
            session.trust_env = False
            while True:
                try:
                    session.get(probe, timeout=2)
                    return
                except requests.RequestException:
                    pass
                container.reload()
                restarts = int(container.attrs.get("RestartCount", 0))
                restarts_before = restarts if restarts_before is None else restarts_before
                if container.status in ("exited", "dead", "restarting") or restarts > restarts_before:
                    logs = _logs(container, 50)
                    how = (
                        f"exit code {container.attrs.get('State', {}).get('ExitCode')}"
                        if container.status in ("exited", "dead")
                        else f"restarted {restarts - restarts_before} time(s) by its restart policy"
                    )
                    with contextlib.suppress(DockerException):
                        container.stop(timeout=5)  # no crash loop under the restart policy; kept for inspection
                    raise ServerStartError(
                        f"server container {container.name} ({container.short_id}) exited during start-up ({how}); "
                        "it is now stopped and kept for inspection (stop_server removes it). Check the models in "
                        f"models.config and the server's arguments. Its last log lines:\n{logs}"
                    )
                if time.monotonic() >= deadline:
                    raise ServerStartError(
                        f"server container {container.name} ({container.short_id}) did not answer at {rest_url} "
                        f"within {timeout_s:g}s (TF Serving opens its ports only once every model in models.config "
                        "is AVAILABLE); the container is left for inspection (stop_server removes it). "
                        f"Its last log lines:\n{_logs(container, 50)}"
                    )
                time.sleep(0.5)


# --------------------------------------------------------------------------- helpers


def _manifest_of(src: Path) -> dict[str, Any]:
    """The manifest a local SavedModel directory is checked against: its own, or one built from it."""
    own = src / MANIFEST_NAME
    if own.is_file():
        return parse_manifest(own.read_bytes(), where=str(own))
    return build_manifest(src)


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _copy_synced(src: str, dst: str) -> str:
    shutil.copy2(src, dst)
    with open(dst, "rb") as fh:
        os.fsync(fh.fileno())
    return dst


def _logs(container: Container, tail: int) -> str:
    from docker.errors import DockerException

    try:
        return bytes(container.logs(tail=tail)).decode(errors="replace")
    except DockerException as exc:
        return f"(logs unavailable: {exc})"
