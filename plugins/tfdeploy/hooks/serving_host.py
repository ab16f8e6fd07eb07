"""ServingHostHook: a TF Serving host on a Docker engine: its model store and its server containers.

The server containers read their models at ``/models``, from one of two places:

- a named Docker volume on the engine (``volume``; what the serving targets use): versions are staged through a
  short-lived helper container. The worker fetches and verifies a version locally, streams it to the engine as a
  tar (``put_archive`` into a created helper container that mounts the volume), and the helper, started, checks
  every file's sha256 against the manifest, inside the volume, then renames ``<model>/.tmp-<version>-<id>`` to
  ``<model>/<version>`` (atomic for the server's file-system poll). ``models.config`` and ``monitoring.config``
  go the same way (a temp file renamed into place). Nothing assumes the engine sees the worker's disk: the engine
  may be another machine (``tcp://``), or the worker a container with the engine's socket.
- ``model_root`` itself, bind-mounted read-only (``volume=None``): only where the worker and the engine share a
  disk (:meth:`ServingHostHook.check_shared_disk`): a ``unix://`` socket or loopback ``tcp://``, and the worker not
  in a container of its own.

Layout (in the volume, or in ``model_root``)::

    models.config          the server's --model_config_file (written atomically)
    monitoring.config      the server's --monitoring_config_file: Prometheus metrics enabled
    <model>/<version>/     SavedModel versions (staged atomically: temp dir, verified, then renamed)

``model_root`` is always on the worker: it holds ``.config.lock`` (config changes of one host never interleave
among the workers of this machine) and, in volume mode, nothing else for long (fetches are staged from a temp dir).

The container runs the serving image (``tensorflow/serving`` in production) with ``--model_config_file``; it
is a long-running server, so it is managed with the Docker SDK (create, compare, replace, stop), not with
``DockerOperator``, which runs a container to its exit. Its ports are published on the host's
``publish_address``, where the workers and the router reach it.

Connection (default ``serving_host_local``): ``host`` is the Docker engine's base URL
(``unix:///var/run/docker.sock``, ``tcp://host:2376``); ``extra`` may hold ``tls_verify`` (bool), the paths
``tls_ca_cert``, ``tls_client_cert``, ``tls_client_key``, and ``publish_address`` (default ``127.0.0.1``). The
Docker provider's own Connection (``docker_conn_id``) is only a registry login, used when an image has to be pulled.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import io
import ipaddress
import json
import os
import re
import shutil
import socket
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

from airflow.sdk.bases.hook import BaseHook

from tfdeploy.core.errors import (
    ChecksumMismatch,
    DockerEngineUnavailable,
    ServerNotFound,
    ServerStartError,
    ServingHostError,
    SharedDiskRequired,
    StagingConflict,
)
from tfdeploy.core.manifest import (
    MANIFEST_NAME,
    TEMP_PREFIX,
    build_manifest,
    check_links,
    fsync_dir,
    hash_file,
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
from tfdeploy.docker_engine import docker_client

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
LABEL_HELPER = "tfdeploy.serving.helper"  # the short-lived staging helpers (never started servers)
LABEL_VOLUME = "tfdeploy.serving.volume"
LABEL_LOCK_HOLDER = "tfdeploy.serving.lock-holder"
LABEL_LOCK_SINCE = "tfdeploy.serving.lock-since"
LOCK_STALE_S = 1800  # a config lock this old outlived its holder (a change takes minutes at most)
# Exit codes of HELPER_SCRIPT beyond 0 (done) and 1/2 (sh's own errors).
_HELPER_MISMATCH, _HELPER_CONFLICT, _HELPER_ALIAS, _HELPER_KEPT = 3, 4, 5, 10
# The staging helper: POSIX sh and coreutils only (sha256sum, find, mv -T, sync -f), which the serving image has
# (tensorflow/serving's too), so no other image need be on a serving host. ``$1`` is the volume's mount point,
# ``$2`` the operation:
#   stage MODEL VERSION TMP: the archive put TMP/ and TMP.sha256 (``sha256sum`` lines of every file) under MODEL/;
#     refuse another spelling of VERSION ('007'), keep an existing VERSION that matches the list (exit 10) or refuse
#     it (4), check TMP (3 naming the file: ``<path>: FAILED``; a file count that differs; a link or special file),
#     sync, rename TMP to VERSION (mv -T: never into an existing directory; a stager that lost a race re-checks).
#   remove MODEL VERSION TRASH: rename VERSION out of the server's sight, then delete it.
#   install TMP=NAME ...: rename each file put beside NAME over it (atomic replacement), then sync.
#   list: print MODEL/NAME for every directory two levels down (the caller keeps the version directories).
HELPER_SCRIPT = r"""set -eu
root=$1 op=$2
shift 2
cd "$root"
verify() {
  (cd "$1" && sha256sum --check --strict --quiet "$2") || return 3
  listed=$(wc -l < "$2")
  found=$(find "$1" -type f | wc -l)
  if [ "$listed" -ne "$found" ]; then echo "$1 holds $found files, the manifest lists $listed"; return 3; fi
  odd=$(find "$1" ! -type f ! -type d | head -n 1)
  if [ -n "$odd" ]; then echo "$odd: not a regular file or directory"; return 3; fi
  return 0
}
case "$op" in
stage)
  model=$1 version=$2 tmp=$3
  cd "$model"
  list="$PWD/$tmp.sha256"
  trap 'rm -rf "$tmp" "$list"' EXIT
  for d in *; do
    [ -d "$d" ] || continue
    case "$d" in ''|*[!0-9]*) continue ;; esac
    n=$(printf '%s' "$d" | sed 's/^0*//')
    if [ "${n:-0}" = "$version" ] && [ "$d" != "$version" ]; then echo "$model/$d"; exit 5; fi
  done
  if [ -e "$version" ]; then
    if verify "$version" "$list"; then echo kept; exit 10; fi
    exit 4
  fi
  verify "$tmp" "$list" || exit 3
  sync -f .
  if mv -T "$tmp" "$version" 2>/dev/null; then sync -f .; echo staged; exit 0; fi
  if [ -e "$version" ] && verify "$version" "$list"; then echo kept; exit 10; fi
  exit 4
  ;;
remove)
  model=$1 version=$2 trash=$3
  if [ ! -e "$model/$version" ]; then echo absent; exit 0; fi
  mv -T "$model/$version" "$model/$trash"
  rm -rf "$model/$trash"
  sync -f .
  echo removed
  ;;
install)
  for pair in "$@"; do mv -f "${pair%%=*}" "${pair#*=}"; done
  sync -f .
  echo installed
  ;;
list)
  for d in */*/; do if [ -d "$d" ]; then echo "${d%/}"; fi; done
  ;;
*)
  echo "unknown operation $op"; exit 2
  ;;
esac
"""
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
    """A serving host: server containers on a Docker engine, and the models they serve (see the module doc).

    :param serving_host_conn_id: Connection with the Docker engine's base URL (``host``), TLS settings and
        ``publish_address`` (``extra``); ``None`` uses ``base_url`` alone.
    :param model_root: a directory on this machine: the config lock, and (without ``volume``) the models
        themselves, bind-mounted at ``/models`` in the server containers.
    :param volume: the named Docker volume on the engine that holds the models (created if missing); ``None``:
        bind-mount ``model_root`` (the engine must see this machine's disk).
    :param helper_image: the image of the staging helper containers (volume mode): the serving image, which every
        serving host has.
    :param base_url: overrides the Connection's Docker base URL.
    :param publish_address: where the servers' ports are published (overrides the Connection's
        ``publish_address``; default ``127.0.0.1``): an address of the engine's host that the workers and the
        router reach.
    :param docker_conn_id: the Docker provider's Connection: a registry login, used only to pull an image
        missing from the engine.
    :param docker_timeout: seconds for each Docker API call; an engine that does not answer in time (or refuses
        the connection) raises :class:`DockerEngineUnavailable` naming it.
    :param helper_timeout_s: how long a staging helper may run (checking a large version's checksums).
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
        volume: str | None = None,
        helper_image: str | None = None,
        base_url: str | None = None,
        publish_address: str | None = None,
        docker_conn_id: str | None = None,
        docker_timeout: int = 60,
        helper_timeout_s: float = 600,
    ) -> None:
        super().__init__()
        if not base_url and not serving_host_conn_id:
            raise ValueError("give serving_host_conn_id (a Connection naming the Docker engine) or base_url")
        if volume is not None and not _VOLUME_NAME.fullmatch(volume):
            raise ValueError(f"{volume!r} is not a Docker volume name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)")
        self.serving_host_conn_id = serving_host_conn_id
        self._base_url = base_url
        self._publish_address = publish_address
        self.model_root = Path(model_root).expanduser().resolve()
        self.volume = volume
        self.helper_image = helper_image
        self.docker_conn_id = docker_conn_id
        self.docker_timeout = docker_timeout
        self.helper_timeout_s = helper_timeout_s
        self._volume_configured = False  # this hook wrote models.config and monitoring.config into the volume

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
    def publish_address(self) -> str:
        """The address the servers' ports are published on: ``publish_address``, else the Connection's
        ``extra.publish_address``, else ``127.0.0.1`` (an engine on this machine)."""
        address = self._publish_address or str(self._extra.get("publish_address") or "127.0.0.1")
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(
                f"publish_address {address!r} of {self.serving_host_conn_id or self.base_url} is not an IP address: "
                "give the address of the engine's host that the workers and the router reach"
            ) from None
        return address

    @property
    def where(self) -> str:
        """Where the models live, for messages: the volume and its engine, or ``model_root``."""
        return f"volume {self.volume} on {self.base_url}" if self.volume else str(self.model_root)

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
        return docker_client(self.base_url, tls=self.tls, timeout=self.docker_timeout)

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

    # ------------------------------------------------------------------ model store (volume or model_root)

    def container_base_path(self, model: str) -> str:
        """``base_path`` of ``model`` as the server container sees it (for models.config)."""
        return f"{CONTAINER_ROOT}/{validate_model_name(model)}"

    def model_dir(self, model: str) -> Path:
        """Directory of a model's versions in ``model_root`` (bind mode; in volume mode the worker's side only)."""
        return self.model_root / validate_model_name(model)

    def version_dir(self, model: str, version: int) -> Path:
        """``model_root/<model>/<version>`` (bind mode: the staged version the server reads)."""
        return self.model_dir(model) / str(check_version(version))

    def stage_version(self, src_dir: str | os.PathLike[str], model: str, version: int) -> str:
        """Copy the SavedModel in ``src_dir`` to ``<model>/<version>`` of the host's models, atomically, verified.

        The copy goes to a non-numeric temp directory (which TF Serving ignores), is verified file by file
        (sha256, and nothing else present) against the source's manifest (its ``tfdeploy_manifest.json`` when it
        has one, else one built from the source), and only then renamed into place (a source whose symlinks lead out
        of it is refused with :class:`PublishError` before anything is copied), so the server never sees a
        half-written or corrupt version; a mismatch raises :class:`ChecksumMismatch` naming the file and nothing is
        staged. A version already staged with the same content is a no-op; different content, or another spelling
        of the same number (``007``), raises :class:`StagingConflict`. Returns the model's base path in the container
        (``/models/<model>``).

        In volume mode the copy is a tar streamed into a helper container on the engine, which checks the files
        inside the volume (see the module doc); in bind mode it is a local copy into ``model_root``.
        """
        src = Path(src_dir)
        if not self.volume:
            self.check_shared_disk()
        if not src.is_dir():
            raise FileNotFoundError(f"cannot stage {src}: not a directory (expected a SavedModel version directory)")
        check_links(src)  # the copy below follows links: none may lead out of the SavedModel
        manifest = _manifest_of(src)
        if self.volume:
            self._stage_into_volume(src, manifest, validate_model_name(model), check_version(version))
            return self.container_base_path(model)
        dest = self.version_dir(model, version)
        model_dir = dest.parent
        model_dir.mkdir(parents=True, exist_ok=True)
        self._check_aliases(model_dir, version)
        if dest.exists():
            self._check_same(manifest, dest, model, version)
            self.log.info("version %s of %s already staged at %s with the same content", version, model, dest)
            return self.container_base_path(model)
        tmp = model_dir / f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex}"
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
        """Delete ``<model>/<version>`` of the host's models (no-op if absent).

        Remove a version only after a reload without it and ``wait_until_unloaded``. The directory is first
        renamed to a non-numeric name, so the server never sees a half-deleted version.
        """
        if self.volume:
            name, number = validate_model_name(model), str(check_version(version))
            trash = f"{TEMP_PREFIX}removing-{number}-{uuid.uuid4().hex}"
            code, output = self._run_helper("remove", name, number, trash)
            if code != 0:
                raise ServingHostError(
                    f"removing version {version} of {model} from {self.where} failed (exit {code}): {output.strip()}"
                )
            if "removed" in output:
                self.log.info("removed staged version %s of %s (%s)", version, model, self.where)
            return
        dest = self.version_dir(model, version)
        if not dest.exists():
            return
        trash_dir = dest.parent / f"{TEMP_PREFIX}removing-{version}-{uuid.uuid4().hex}"
        os.rename(dest, trash_dir)
        shutil.rmtree(trash_dir)
        self.log.info("removed staged version %s of %s (%s)", version, model, dest)

    def staged_versions(self) -> set[tuple[str, int]]:
        """Every (model, version) staged on this host (version directories, whatever serves them)."""
        if self.volume:
            code, output = self._run_helper("list")
            if code != 0:
                raise ServingHostError(f"listing {self.where} failed (exit {code}): {_last_lines(output)}")
            names = [line.split("/", 1) for line in output.splitlines() if line.count("/") == 1]
        else:
            names = (
                [[m.name, v.name] for m in self.model_root.iterdir() if m.is_dir() for v in m.iterdir() if v.is_dir()]
                if self.model_root.is_dir()
                else []
            )
        found = set()
        for model, name in names:
            version = parse_version_dir(name)
            if version is not None:
                found.add((model, version))
        return found

    def copy_version(self, model: str, version: int, dest_dir: str | os.PathLike[str]) -> Path:
        """Copy staged ``<model>/<version>`` of this host into ``dest_dir/<version>`` on this machine (to stage it on
        another host, which checks it against its manifest); returns that directory."""
        dest = Path(dest_dir) / str(check_version(version))
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not self.volume:
            shutil.copytree(self.version_dir(model, version), dest)
            return dest
        self._extract_from_volume(f"{validate_model_name(model)}/{version}", dest.parent)
        return dest

    @docker_call
    def _extract_from_volume(self, path: str, dest_dir: Path) -> None:
        with self._helper_container(["true"]) as container:
            chunks, _stat = container.get_archive(f"{CONTAINER_ROOT}/{path}")
            with tempfile.TemporaryFile(dir=self._scratch_dir()) as archive:
                for chunk in chunks:
                    archive.write(chunk)
                archive.seek(0)
                with tarfile.open(fileobj=archive) as tar:
                    tar.extractall(dest_dir, filter="data")

    # ------------------------------------------------------------------ models.config

    @property
    def config_path(self) -> Path:
        """``model_root/models.config``: the served config in bind mode (in volume mode, see :meth:`where`)."""
        return self.model_root / CONFIG_NAME

    @contextlib.contextmanager
    def config_lock(self, timeout_s: float = 600) -> Iterator[None]:
        """Config changes of this host never interleave: hold ``model_root/.config.lock`` (the workers of this
        machine) and, in volume mode, the engine's lock of the volume (workers anywhere: see :meth:`_engine_lock`)."""
        self.model_root.mkdir(parents=True, exist_ok=True)
        with open(self.model_root / LOCK_NAME, "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                if self.volume:
                    with self._engine_lock(timeout_s):
                        yield
                else:
                    yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _engine_lock(self, timeout_s: float) -> Iterator[None]:
        """The volume's lock on its engine: a container named ``<volume>-lock`` (created, never started), which the
        engine lets exist once; whoever created it holds the lock, and removes it (by id) when done. A lock older than
        LOCK_STALE_S (its holder died mid-change) is removed by the next worker that waits for it."""
        from docker.errors import APIError, NotFound

        name = f"{self.volume}-lock"
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        image_id = self._image_id(str(self.helper_image))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                lock = self.docker_client.containers.create(
                    image_id,
                    ["true"],
                    entrypoint=["/bin/true"],
                    name=name,
                    network_disabled=True,
                    labels={
                        LABEL_LOCK_HOLDER: holder,
                        LABEL_LOCK_SINCE: str(time.time()),
                        LABEL_VOLUME: str(self.volume),
                        LABEL_MODEL_ROOT: str(self.model_root),
                    },
                )
                break
            except APIError as exc:
                if exc.status_code != 409:  # not "the name is taken"
                    raise
            held = self._find(name)
            if held is None:
                continue
            since = float(held.labels.get(LABEL_LOCK_SINCE) or 0)
            if time.time() - since > LOCK_STALE_S:
                self.log.warning("removing the stale lock of %s (held by %s)", self.where, held.labels)
                with contextlib.suppress(NotFound):
                    held.remove(force=True)
                continue
            if time.monotonic() >= deadline:
                raise ServingHostError(
                    f"the config lock of {self.where} ({name}) is held by {held.labels.get(LABEL_LOCK_HOLDER)} since "
                    f"{time.ctime(since)}; it did not come free within {timeout_s:g}s. Another change runs on this "
                    f"host: retry after it; a lock older than {LOCK_STALE_S}s is taken over"
                )
            time.sleep(0.5)
        try:
            yield
        finally:
            with contextlib.suppress(NotFound):
                lock.remove(force=True)

    def read_config_text(self) -> str | None:
        """``models.config`` as the servers read it (``None`` if there is none yet)."""
        if self.volume:
            text = self._read_volume(CONFIG_NAME)[CONFIG_NAME]
            if text is None:
                text = self._seed_volume_from_model_root()
            return text
        try:
            return self.config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def read_config(self) -> list[ServedModel]:
        """The models ``models.config`` serves now (``[]`` if there is no file yet)."""
        text = self.read_config_text()
        return [] if text is None else served_models(parse_text(text))

    def write_config(self, config: ModelServerConfig) -> str:
        """Write ``models.config`` atomically (temp file, fsync, rename; in volume mode with ``monitoring.config``,
        through a helper container); returns its container path.

        ``config`` is a ``ModelServerConfig`` (``models_config.build_model_config`` validates it), so the file
        is always one TF Serving parses.
        """
        text = to_text(config)
        if self.volume:
            self._install({CONFIG_NAME: text, MONITORING_NAME: MONITORING_CONFIG})
            self._volume_configured = True  # ensure_server need not read them back
            return f"{CONTAINER_ROOT}/{CONFIG_NAME}"
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
            raise StagingConflict(_conflict_message(model, version, str(dest), str(problems[0])))

    # ------------------------------------------------------------------ the volume, through helper containers

    def _stage_into_volume(self, src: Path, manifest: dict[str, Any], model: str, version: int) -> None:
        tmp = f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex}"
        with tempfile.TemporaryFile(dir=self._scratch_dir()) as archive:
            _write_stage_archive(archive, src, manifest, model, tmp)
            code, output = self._run_helper("stage", model, str(version), tmp, archive=archive)
        where = f"{model}/{version} in {self.where}"
        if code == 0:
            self.log.info("staged version %s of %s into %s (checked there)", version, model, self.where)
        elif code == _HELPER_KEPT:
            self.log.info("version %s of %s already staged in %s with the same content", version, model, self.where)
        elif code == _HELPER_MISMATCH:
            path = _failed_path(output) or "?"
            raise ChecksumMismatch(
                f"staging {model} v{version} from {src} into {self.where}: {path} does not match the manifest as "
                f"written there ({_last_lines(output)}); nothing was staged. Check the source, the engine's disk, and "
                "stage again.",
                path=path,
            )
        elif code == _HELPER_CONFLICT:
            raise StagingConflict(_conflict_message(model, version, where, _last_lines(output)))
        elif code == _HELPER_ALIAS:
            raise StagingConflict(
                f"{output.strip()} in {self.where} is already version {version} of {model} for TF Serving (it reads "
                f"directory names as integers); remove it before staging {version}"
            )
        else:
            raise ServingHostError(
                f"the staging helper for {where} failed (exit {code}): {_last_lines(output)}. Check that the helper "
                f"image {self.helper_image} has /bin/sh and coreutils, and the engine's disk"
            )

    def _install(self, files: dict[str, str]) -> None:
        """Put each ``name: text`` at the volume's root, each file renamed over the old one (atomic)."""
        tag = uuid.uuid4().hex
        temps = {name: f".{name}.tmp-{tag}" for name in files}
        with tempfile.TemporaryFile(dir=self._scratch_dir()) as archive:
            with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for name, text in files.items():
                    _add_bytes(tar, temps[name], text.encode("utf-8"))
            code, output = self._run_helper("install", *(f"{temps[n]}={n}" for n in files), archive=archive)
        if code != 0:
            raise ServingHostError(f"writing {', '.join(files)} into {self.where} failed (exit {code}): {output}")

    def _seed_volume_from_model_root(self) -> str | None:
        """A volume without models.config, beside a ``model_root`` that has one (a host set up before volumes: its
        servers bind-mounted ``model_root``): copy what that config serves into the volume, each version checked
        as any staging is, then the config. Returns the config's text (``None``: nothing to seed)."""
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        for entry in served_models(parse_text(text)):
            for version in entry.versions:
                self.stage_version(self.version_dir(entry.name, version), entry.name, version)
        self._install({CONFIG_NAME: text, MONITORING_NAME: MONITORING_CONFIG})
        # seeded once: the local copy is history now (a volume removed later starts empty, not from it)
        self.config_path.replace(self.config_path.with_name(f"{CONFIG_NAME}.moved-to-volume"))
        self.log.info(
            "seeded %s from %s (models served before staging went through volumes)", self.where, self.model_root
        )
        return text

    def _scratch_dir(self) -> Path:
        self.model_root.mkdir(parents=True, exist_ok=True)
        return self.model_root

    @docker_call
    def _read_volume(self, *names: str) -> dict[str, str | None]:
        """Files at the volume's root (``None`` where absent), read through a created, never started, helper."""
        from docker.errors import NotFound

        found: dict[str, str | None] = {}
        with self._helper_container(["true"]) as container:
            for name in names:
                try:
                    chunks, _stat = container.get_archive(f"{CONTAINER_ROOT}/{name}")
                except NotFound:
                    found[name] = None
                    continue
                with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
                    member = tar.next()
                    data = tar.extractfile(member) if member is not None else None
                    found[name] = data.read().decode("utf-8") if data is not None else None
        return found

    @docker_call
    def _run_helper(self, op: str, *args: str, archive: IO[bytes] | None = None) -> tuple[int, str]:
        """Run HELPER_SCRIPT's ``op`` in a helper container on the volume (after putting ``archive`` at its root);
        returns its exit code and output. The container is removed, whatever happened."""
        with self._helper_container([CONTAINER_ROOT, op, *args]) as container:
            if archive is not None:
                archive.seek(0)
                if not container.put_archive(CONTAINER_ROOT, archive):
                    raise ServingHostError(f"the Docker engine at {self.base_url} refused the archive for {self.where}")
            container.start()
            status = container.wait(timeout=self.helper_timeout_s)
            output = bytes(container.logs(stdout=True, stderr=True)).decode(errors="replace")
        return int(status.get("StatusCode", -1)), output

    @contextlib.contextmanager
    def _helper_container(self, command: list[str]) -> Iterator[Container]:
        from docker.errors import DockerException, NotFound
        from docker.types import Mount

        if not self.helper_image:
            raise ValueError(f"staging into {self.where} needs helper_image (the serving image)")
        client = self.docker_client
        self._ensure_volume()
        container = client.containers.create(
            self._image_id(self.helper_image),
            command,
            entrypoint=["/bin/sh", "-c", HELPER_SCRIPT, "tfdeploy-helper"],
            name=f"{self.volume}-helper-{uuid.uuid4().hex[:8]}",
            # no_copy: an empty volume is not filled with what the image has at /models
            mounts=[Mount(CONTAINER_ROOT, str(self.volume), type="volume", no_copy=True)],
            network_disabled=True,
            user="0:0",
            labels={LABEL_HELPER: "true", LABEL_VOLUME: str(self.volume), LABEL_MODEL_ROOT: str(self.model_root)},
        )
        try:
            yield container
        finally:
            with contextlib.suppress(NotFound, DockerException):
                container.remove(force=True)

    def _ensure_volume(self) -> None:
        from docker.errors import NotFound

        if self.__dict__.get("_volume_ready"):
            return
        volumes = self.docker_client.volumes
        try:
            volumes.get(str(self.volume))
        except NotFound:
            volumes.create(name=self.volume, labels={LABEL_VOLUME: str(self.volume)})
            self.log.info("created volume %s on %s", self.volume, self.base_url)
        self.__dict__["_volume_ready"] = True

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
        """Make sure container ``name`` runs ``image`` serving the host's ``models.config``; wait until it answers.

        Ports 8500 (gRPC) and 8501 (REST) are published on ``publish_address``:``grpc_port`` / ``rest_port``. The
        models are the volume (or ``model_root``), mounted read-only at ``/models``. A running container with the
        same spec (image id, arguments, ports, mount) is reused (``created=False``); any other container of that
        name is replaced. Call :meth:`write_config` first: the server starts only with a config whose models all
        have an AVAILABLE version. Raises :class:`ServerStartError` with the container's last log lines if it exits
        or does not answer within ``start_timeout_s``.
        """
        from docker.errors import APIError, DockerException

        self._require_config()
        client = self.docker_client
        image_id = self._image_id(image)
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
        address = self.publish_address
        ports = {f"{GRPC_PORT}/tcp": (address, int(grpc_port)), f"{REST_PORT}/tcp": (address, int(rest_port))}
        mount = {str(self.volume or self.model_root): {"bind": CONTAINER_ROOT, "mode": "ro"}}
        spec = {"image_id": image_id, "args": args, "ports": ports, "mount": mount, "restart": "unless-stopped"}
        spec_hash = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        rest_url = f"http://{_url_host(address)}:{int(rest_port)}"
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

    def _require_config(self) -> None:
        """models.config is there (ServerStartError if not), and monitoring.config as MONITORING_CONFIG says."""
        if self.volume:
            if self._volume_configured:
                return
            files = self._read_volume(CONFIG_NAME, MONITORING_NAME)
            if files[CONFIG_NAME] is None and self._seed_volume_from_model_root() is None:
                raise ServerStartError(
                    f"no {CONFIG_NAME} in {self.where}: call write_config() with at least one staged model before "
                    "ensure_server()"
                )
            if files[MONITORING_NAME] != MONITORING_CONFIG:
                self._install({MONITORING_NAME: MONITORING_CONFIG})
            return
        if not self.config_path.is_file():
            raise ServerStartError(
                f"no {self.config_path}: call write_config() with at least one staged model before ensure_server()"
            )
        self._write_monitoring_config()

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


_VOLUME_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


def _write_stage_archive(archive: IO[bytes], src: Path, manifest: dict[str, Any], model: str, tmp: str) -> None:
    """The tar a staging helper gets: ``<model>/<tmp>/`` with the manifest's directories and files (read from
    ``src``; links inside it followed, as a copy would), the manifest itself when ``src`` has one, and
    ``<model>/<tmp>.sha256``: the sha256 the helper checks every file against (the manifest's; the manifest's own
    from its bytes here). Owned by root, directories 0755, files 0644."""
    files: dict[str, dict[str, Any]] = manifest["files"]
    sums = {rel: str(entry["sha256"]) for rel, entry in files.items()}
    if (src / MANIFEST_NAME).is_file():
        sums[MANIFEST_NAME] = hash_file(src / MANIFEST_NAME)[1]
    for rel in sums:
        if "\n" in rel or "\\" in rel:
            raise ValueError(f"cannot stage {src}: the file name {rel!r} has a newline or a backslash")
    with tarfile.open(fileobj=archive, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_dir(tar, model)
        _add_dir(tar, f"{model}/{tmp}")
        for rel in sorted(manifest["directories"], key=lambda r: (r.count("/"), r)):
            _add_dir(tar, f"{model}/{tmp}/{rel}")
        for rel in sorted(sums):
            path = src / rel
            info = tarfile.TarInfo(f"{model}/{tmp}/{rel}")
            info.size, info.mode, info.mtime = path.stat().st_size, 0o644, int(time.time())
            with open(path, "rb") as fh:
                tar.addfile(info, fh)
        _add_bytes(tar, f"{model}/{tmp}.sha256", "".join(f"{sums[rel]}  {rel}\n" for rel in sorted(sums)).encode())
    archive.flush()


def _add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, int(time.time())
    tar.addfile(info)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def _failed_path(output: str) -> str | None:
    """The first file sha256sum named as FAILED (``<path>: FAILED`` or ``<path>: FAILED open or read``)."""
    for line in output.splitlines():
        match = re.fullmatch(r"(.+): FAILED( open or read)?", line.strip())
        if match:
            return match.group(1)
    return None


def _last_lines(output: str, count: int = 5) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return "; ".join(lines[-count:]) or "no output"


def _conflict_message(model: str, version: int, where: str, problem: str) -> str:
    return (
        f"version {version} of model {model!r} is already staged at {where} with different content "
        f"({problem}). A version number names one immutable model: register the new model as a new "
        "version, or remove the staged one (after unloading it) if it is known to be wrong."
    )


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
