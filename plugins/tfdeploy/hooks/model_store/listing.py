"""The model store's base: its one HDFS client, paths, listings and manifest reads.

``publish.py`` and ``fetch.py`` build on this; ``hook.py`` puts them together as ``ModelStoreHook``.
"""

from __future__ import annotations

import functools
import posixpath
import threading
from collections.abc import Callable
from functools import cached_property
from typing import Any, Concatenate, ParamSpec, TypeVar
from urllib.parse import urlsplit

import requests
from airflow.sdk.bases.hook import BaseHook
from hdfs import HdfsError
from requests.adapters import DEFAULT_POOLSIZE

from tfdeploy.core import manifest as mf
from tfdeploy.core.errors import ModelNotFound
from tfdeploy.core.manifest import MANIFEST_NAME, Manifest, parse_manifest
from tfdeploy.core.names import check_version, parse_version_dir, validate_model_name
from tfdeploy.hooks.model_store.client import TimedWebHDFSHook, Timeout, parse_timeout, unavailable

# The provider's client shares one requests.Session, whose pool keeps DEFAULT_POOLSIZE connections per
# host: more threads than that would open and discard connections, and the pool is not ours to resize.
MAX_WORKERS = DEFAULT_POOLSIZE

Children = list[tuple[str, dict[str, Any]]]

_P = ParamSpec("_P")
_R = TypeVar("_R")
_Hook = TypeVar("_Hook", bound="ModelStoreBase")


def hdfs_call(method: Callable[Concatenate[_Hook, _P], _R]) -> Callable[Concatenate[_Hook, _P], _R]:
    """A public method of the store: an HDFS server that refuses, resets or does not answer within the timeout
    raises :class:`ModelStoreUnavailable` naming it (the requests error is its cause)."""

    @functools.wraps(method)
    def call(self: _Hook, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        depth = getattr(_calls, "depth", 0)  # the outermost call names what was being done
        _calls.depth = depth + 1
        try:
            return method(self, *args, **kwargs)
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            if depth:
                raise
            doing = method.__name__.strip("_").replace("_", " ")
            raise unavailable(exc, conn_id=self.webhdfs_conn_id, timeout=self.timeout, doing=doing) from exc
        finally:
            _calls.depth = depth

    return call


_calls = threading.local()


class ModelStoreBase(BaseHook):
    """The model store's client, paths, listings and manifest reads (see ModelStoreHook for the whole)."""

    conn_name_attr = "webhdfs_conn_id"
    default_conn_name = "webhdfs_default"
    conn_type = "webhdfs"
    hook_name = "tfdeploy model store (HDFS)"

    def __init__(
        self,
        webhdfs_conn_id: str = default_conn_name,
        *,
        base_path: str = "/models",
        max_workers: int = 8,
        timeout: float | Timeout | None = None,
    ) -> None:
        super().__init__()
        if not base_path.startswith("/"):
            raise ValueError(f"base_path must be an absolute HDFS path such as '/models', got {base_path!r}")
        if not 1 <= max_workers <= MAX_WORKERS:
            raise ValueError(
                f"max_workers must be between 1 and {MAX_WORKERS} (the HDFS client's connection pool per host), "
                f"got {max_workers}"
            )
        self.webhdfs_conn_id = webhdfs_conn_id
        self.base_path = base_path.rstrip("/") or "/"
        self.max_workers = max_workers
        self._timeout = None if timeout is None else parse_timeout(timeout, conn_id=webhdfs_conn_id)

    # The one client ----------------------------------------------------------------------------------------

    @cached_property
    def timeout(self) -> Timeout:
        """(connect, read) seconds of every WebHDFS request: the hook's, else the Connection's, else the default."""
        if self._timeout is not None:
            return self._timeout
        return parse_timeout(self.connection.extra_dejson.get("timeout"), conn_id=self.webhdfs_conn_id)

    @cached_property
    def client(self) -> Any:
        """The HDFS provider's client (``hdfs.InsecureClient``, or ``KerberosClient``) with :attr:`timeout` on every
        request, built on first use (``client.TimedWebHDFSHook``); ModelStoreUnavailable if no NameNode answers."""
        return TimedWebHDFSHook(self.webhdfs_conn_id, timeout=self.timeout).get_conn()

    def get_conn(self) -> Any:
        return self.client

    @cached_property
    def connection(self) -> Any:
        return self.get_connection(self.webhdfs_conn_id)

    # Paths -------------------------------------------------------------------------------------------------

    def model_dir(self, model: str) -> str:
        validate_model_name(model)
        return posixpath.join(self.base_path, model)

    def version_dir(self, model: str, version: int) -> str:
        return f"{self.model_dir(model)}/{check_version(version)}"

    def uri(self, model: str, version: int) -> str:
        """``webhdfs://<host>:<port><version_dir>``: what the registry records."""
        return self.uri_for(self.version_dir(model, version))

    def uri_for(self, path: str) -> str:
        host = self.connection.host or ""
        if "," in host:  # several NameNodes (HA): name the one the client uses
            authority = urlsplit(self.client.url).netloc
        else:
            authority = f"{host}:{self.connection.port}" if self.connection.port else host
        return f"webhdfs://{authority}{path}"

    # Listing -----------------------------------------------------------------------------------------------

    @hdfs_call
    def children(self, path: str) -> Children | None:
        """(name, FileStatus) of a directory's children; None if it does not exist."""
        try:
            return list(self.client.list(path, status=True))
        except HdfsError as exc:
            if exc.exception == "FileNotFoundException":
                return None
            raise

    def _version_dirs(self, model: str, children: Children | None = None) -> dict[int, str]:
        """{version: its directory} among the model dir's children, read as TF Serving reads them.

        ``007`` holds version 7 like ``7``; if several names hold one version, the canonical one wins.
        """
        model_dir = self.model_dir(model)
        if children is None:
            children = self.children(model_dir) or []
        found: dict[int, str] = {}
        for name, status in sorted(children, key=lambda child: child[0]):
            version = parse_version_dir(name)
            if version is None or status["type"] != "DIRECTORY":
                continue
            if version not in found or name == str(version):
                found[version] = f"{model_dir}/{name}"
        return found

    @hdfs_call
    def versions(self, model: str) -> list[int]:
        return sorted(self._version_dirs(model))

    @hdfs_call
    def next_version(self, model: str) -> int:
        versions = self.versions(model)
        return versions[-1] + 1 if versions else 1

    def _existing_version_dir(self, model: str, version: int, children: Children | None = None) -> str | None:
        """The directory holding ``version`` (its canonical name, or a zero-padded one like 00000123), if any."""
        return self._version_dirs(model, children).get(check_version(version))

    def _require_version_dir(self, model: str, version: int) -> str:
        path = self._existing_version_dir(model, version)
        if path is None:
            raise ModelNotFound(
                f"{model} version {version} is not in the model store ({self.version_dir(model, version)} does not "
                f"exist; versions present: {self.versions(model) or 'none'}): publish it first or pick another",
                model=model,
                version=version,
            )
        return path

    @hdfs_call
    def walk_listing(self, root: str) -> dict[str, tuple[str, int]]:
        """{relpath: (FILE|DIRECTORY, length)} of everything under root, one LISTSTATUS per directory."""
        listing: dict[str, tuple[str, int]] = {}
        for (path, _status), dir_infos, file_infos in self.client.walk(root, status=True):
            rel_dir = posixpath.relpath(path, root)
            for name, st in [*dir_infos, *file_infos]:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                listing[rel] = (st["type"], st["length"])
        return listing

    # Manifests ---------------------------------------------------------------------------------------------

    @hdfs_call
    def read_manifest_bytes(self, version_path: str, model: str, version: int) -> bytes:
        """The stored manifest of the version in ``version_path``, as bytes; ModelNotFound if it has none."""
        path = f"{version_path}/{MANIFEST_NAME}"
        try:
            with self.client.read(path) as reader:
                data: bytes = reader.read()
        except HdfsError as exc:
            if exc.exception == "FileNotFoundException":
                raise ModelNotFound(
                    f"{path} does not exist: {model} version {version} was not published by the model store "
                    "(or is incomplete); re-publish it under a new version",
                    model=model,
                    version=version,
                ) from None
            raise
        return data

    @hdfs_call
    def read_manifest(self, model: str, version: int) -> Manifest:
        path = self._require_version_dir(model, version)
        data = self.read_manifest_bytes(path, model, version)
        return parse_manifest(data, where=f"{path}/{MANIFEST_NAME}")

    @hdfs_call
    def find_version(self, model: str, manifest_sha256: str) -> int | None:
        """The version whose stored manifest has this sha256 (newest first), or None.

        Versions without a manifest (not written by the store) are no match; HDFS errors propagate.
        """
        for version, path in sorted(self._version_dirs(model).items(), reverse=True):
            try:
                data = self.read_manifest_bytes(path, model, version)
            except ModelNotFound:
                continue
            if mf.manifest_sha256(data) == manifest_sha256:
                self.log.info(
                    "%s version %s holds the content with manifest sha256 %s", model, version, manifest_sha256
                )
                return version
        return None

    @hdfs_call
    def delete_version(self, model: str, version: int) -> bool:
        """Delete a version recursively (tests and cleanup only: versions are otherwise immutable)."""
        path = self._existing_version_dir(model, version)
        if path is None:
            return False
        self.log.warning("Deleting %s", path)
        return bool(self.client.delete(path, recursive=True))

    def remove_quietly(self, path: str) -> None:
        """Best-effort recursive delete (of a temp dir, after a failure that matters more)."""
        try:
            self.client.delete(path, recursive=True)
        except Exception as exc:  # noqa: BLE001 - best effort: the caller's error matters more
            self.log.warning("Could not delete %s (%s); a later publish removes it once stale", path, exc)
