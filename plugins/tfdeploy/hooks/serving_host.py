"""ServingHostHook: a TF Serving host on a Docker engine: its model directory and its server container.

The model directory ``model_root`` lives on the machine that runs the task and is bind-mounted read-only
at ``/models`` in the server container, so the Docker daemon must run on this same machine
(:meth:`ServingHostHook.check_shared_disk`). Layout::

    model_root/models.config          the server's --model_config_file (written atomically)
    model_root/<model>/<version>/     SavedModel versions (staged atomically: temp dir, then rename)

The container runs the serving image (``tensorflow/serving`` in production) with ``--model_config_file``; it
is a long-running server, so it is managed with the Docker SDK (create, compare, replace, stop), not with
``DockerOperator``, which runs a container to its exit. The engine is reached through the Docker provider's
``DockerHook`` (its connection, if given, is a registry login used when the image has to be pulled).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import requests
from airflow.providers.docker.hooks.docker import DockerHook
from airflow.sdk.bases.hook import BaseHook
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.models.containers import Container

from tfdeploy.registry.errors import InvalidName
from tfdeploy.registry.names import validate_model_name
from tfdeploy.serving.errors import ServerNotFound, ServerStartError, SharedDiskRequired, StagingConflict
from tfdeploy.settings import get_settings

CONTAINER_ROOT = "/models"
CONFIG_NAME = "models.config"
MANIFEST_NAME = "tfdeploy_manifest.json"
GRPC_PORT = 8500  # inside the container, as in tensorflow/serving
REST_PORT = 8501
LABEL_MANAGED = "tfdeploy.serving.managed"
LABEL_SPEC_HASH = "tfdeploy.serving.spec-hash"
LABEL_MODEL_ROOT = "tfdeploy.serving.model-root"
_NUMERIC = re.compile(r"[+-]?[0-9]+")
_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


@dataclass(frozen=True)
class ServerInfo:
    """A running server container and where to reach it from this machine."""

    container_id: str
    name: str
    image: str
    created: bool  # True: (re)created by this call; False: an identical running container was reused
    grpc_target: str  # host:port for TFServingHook(grpc_target=...)
    rest_url: str  # http://host:port for TFServingHook(rest_url=...)


class ServingHostHook(BaseHook):
    """A serving host: ``model_root`` on this machine, and server containers on the Docker engine at ``base_url``.

    ``base_url`` defaults to ``DOCKER_HOST`` (else ``unix:///var/run/docker.sock``); ``docker_conn_id`` is the
    Docker provider's connection, a registry login used only to pull an image missing from the engine.
    """

    hook_name = "TensorFlow Serving host (Docker)"

    def __init__(
        self,
        *,
        model_root: str,
        base_url: str | None = None,
        docker_conn_id: str | None = None,
        docker_timeout: int = 60,
    ) -> None:
        super().__init__()
        self.base_url = base_url or get_settings().docker_host
        self.model_root = Path(model_root).expanduser().resolve()
        self.docker_conn_id = docker_conn_id
        self.docker_timeout = docker_timeout

    # ------------------------------------------------------------------ clients, built lazily

    @cached_property
    def docker_hook(self) -> DockerHook:
        return DockerHook(docker_conn_id=self.docker_conn_id, base_url=self.base_url, timeout=self.docker_timeout)

    @cached_property
    def docker_client(self) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.base_url, timeout=self.docker_timeout)

    def get_conn(self) -> docker.DockerClient:
        return self.docker_client

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
        return f"{CONTAINER_ROOT}/{_model_name(model)}"

    def version_dir(self, model: str, version: int) -> Path:
        """Host directory of a staged version: ``model_root/<model>/<version>``."""
        return self.model_root / _model_name(model) / str(_version(version))

    def stage_version(self, src_dir: str | os.PathLike[str], model: str, version: int) -> str:
        """Copy the SavedModel in ``src_dir`` to ``model_root/<model>/<version>`` atomically.

        The copy goes to a non-numeric temp directory (which TF Serving ignores) and is renamed into place,
        so the server never sees a half-written version. If the version is already staged with the same
        content (same ``tfdeploy_manifest.json`` if both have one, else same files, sizes and SHA-256) this is
        a no-op; different content raises :class:`StagingConflict` (a served version is never overwritten).
        Returns the model's base path in the container (``/models/<model>``).
        """
        self.check_shared_disk()
        src = Path(src_dir)
        if not src.is_dir():
            raise FileNotFoundError(f"cannot stage {src}: not a directory (expected a SavedModel version directory)")
        dest = self.version_dir(model, version)
        model_dir = dest.parent
        model_dir.mkdir(parents=True, exist_ok=True)
        self._check_aliases(model_dir, version)
        if dest.exists():
            self._check_same(src, dest, model, version)
            self.log.info("version %s of %s already staged at %s with the same content", version, model, dest)
            return self.container_base_path(model)
        tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex}"
        try:
            shutil.copytree(src, tmp, copy_function=_copy_synced)
            _fsync_dir(tmp)
            os.rename(tmp, dest)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if dest.exists():  # another task staged it meanwhile: fine if identical
                self._check_same(src, dest, model, version)
                return self.container_base_path(model)
            raise
        _fsync_dir(model_dir)
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

    def write_config(self, text: str) -> str:
        """Write ``model_root/models.config`` atomically (temp file, fsync, rename); returns its container path.

        ``text`` is checked to parse as a ``ModelServerConfig`` first: TF Serving only logs a bad config file.
        """
        from tfdeploy.serving.models_config import parse_text

        parse_text(text)
        self.model_root.mkdir(parents=True, exist_ok=True)
        target = self.model_root / CONFIG_NAME
        tmp = self.model_root / f".{CONFIG_NAME}.tmp-{uuid.uuid4().hex}"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        _fsync_dir(self.model_root)
        return f"{CONTAINER_ROOT}/{CONFIG_NAME}"

    def _check_aliases(self, model_dir: Path, version: int) -> None:
        # TF Serving reads '007' as version 7: another spelling of the same number would be a second copy.
        for child in model_dir.iterdir():
            if child.name != str(version) and _parse_version(child.name) == version:
                raise StagingConflict(
                    f"{child} is already version {version} of {model_dir.name} for TF Serving (it reads directory "
                    f"names as integers); remove it before staging {version} as {model_dir / str(version)}"
                )

    def _check_same(self, src: Path, dest: Path, model: str, version: int) -> None:
        src_manifest, dest_manifest = src / MANIFEST_NAME, dest / MANIFEST_NAME
        if src_manifest.is_file() and dest_manifest.is_file():
            same = _read_manifest(src_manifest) == _read_manifest(dest_manifest)
            how = f"their {MANIFEST_NAME} differ"
        else:
            same = _same_tree(src, dest)
            how = "their files (names, sizes or SHA-256) differ"
        if not same:
            raise StagingConflict(
                f"version {version} of model {model!r} is already staged at {dest} with different content than "
                f"{src} ({how}). A version number names one immutable model: register the new model as a new "
                "version, or remove the staged one (after unloading it) if it is known to be wrong."
            )

    # ------------------------------------------------------------------ server container

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
        self.check_shared_disk()
        config_path = self.model_root / CONFIG_NAME
        if not config_path.is_file():
            raise ServerStartError(
                f"no {config_path}: call write_config() with at least one staged model before ensure_server()"
            )
        client = self.docker_client
        image_id = self._image_id(image)
        args = [
            f"--model_config_file={CONTAINER_ROOT}/{CONFIG_NAME}",
            "--model_config_file_poll_wait_seconds=0",
            f"--file_system_poll_wait_seconds={int(poll_seconds)}",
            "--allow_version_labels_for_unavailable_models=false",
            *extra_args,
        ]
        ports = {f"{GRPC_PORT}/tcp": ("127.0.0.1", int(grpc_port)), f"{REST_PORT}/tcp": ("127.0.0.1", int(rest_port))}
        mount = {str(self.model_root): {"bind": CONTAINER_ROOT, "mode": "ro"}}
        spec = {"image_id": image_id, "args": args, "ports": ports, "mount": mount, "restart": "unless-stopped"}
        spec_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        rest_url = f"http://127.0.0.1:{int(rest_port)}"
        info = dict(name=name, image=image, grpc_target=f"127.0.0.1:{int(grpc_port)}", rest_url=rest_url)

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

    def stop_server(self, name: str, *, timeout: int = 30) -> None:
        """Stop and remove container ``name`` (no-op if there is none)."""
        container = self._find(name)
        if container is None:
            return
        with contextlib.suppress(NotFound):
            container.stop(timeout=timeout)
        with contextlib.suppress(NotFound):
            container.remove(force=True)
        self.log.info("stopped and removed server container %s", name)

    def server_logs(self, name: str, tail: int = 50) -> str:
        """The last ``tail`` lines of container ``name``'s output; raises :class:`ServerNotFound` if none."""
        container = self._find(name)
        if container is None:
            raise ServerNotFound(f"no container named {name!r} on the Docker engine at {self.base_url}")
        return _logs(container, tail)

    def _find(self, name: str) -> Container | None:
        try:
            return self.docker_client.containers.get(name)
        except NotFound:
            return None

    def _image_id(self, image: str) -> str:
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


def _model_name(model: str) -> str:
    try:
        return validate_model_name(model)
    except InvalidName as exc:
        raise ValueError(str(exc)) from None


def _version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version {version!r} is not a version number (a non-negative integer)")
    return version


def _parse_version(name: str) -> int | None:
    # As TF Serving's file-system source: a child whose name parses as int64 is a version.
    return int(name) if _NUMERIC.fullmatch(name) else None


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_manifest(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        return path.read_bytes()  # not JSON: compare bytes


def _same_tree(a: Path, b: Path) -> bool:
    """Same relative paths, file sizes and SHA-256 (hashes computed only when the listings match)."""
    listing_a, listing_b = _listing(a), _listing(b)
    if listing_a != listing_b:
        return False
    return all(size is None or _sha256(a / rel) == _sha256(b / rel) for rel, size in listing_a.items())


def _listing(root: Path) -> dict[str, int | None]:
    """relative path -> size for files, None for directories."""
    out: dict[str, int | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for d in dirnames:
            out[str((base / d).relative_to(root))] = None
        for f in filenames:
            out[str((base / f).relative_to(root))] = (base / f).stat().st_size
    return out


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _logs(container: Container, tail: int) -> str:
    try:
        return bytes(container.logs(tail=tail)).decode(errors="replace")
    except DockerException as exc:
        return f"(logs unavailable: {exc})"
