"""ModelStoreHook: the HDFS model store, ``<base_path>/<model>/<version>/`` = one TensorFlow SavedModel.

Publishing is atomic. Every file is uploaded (in parallel) into a non-numeric temp dir beside the target
(``<model_dir>/.tmp-<version>-<uuid8>``, which TF Serving ignores), a manifest
(``tfdeploy_manifest.json``: every directory, and every file's size and sha256) is written next to them,
the sizes are checked with one listing pass, and only then is the temp dir moved into place with WebHDFS
RENAME *with rename2 semantics* (``renameoptions=NONE``): the NameNode refuses when the target exists, so a
numeric version directory is never half-written, never overwritten and never nested into. (The ``hdfs``
client's ``rename`` uses the old semantics, which move the source INTO an existing directory and succeed.)

Publishing is idempotent: the sha256 of the manifest bytes identifies the content, so re-publishing the
same content to an existing version is a no-op (``created=False``) and different content is a
``VersionConflict``. A publisher that loses a race for the same version applies the same rule to the
winner's manifest.

Fetching downloads a version (in parallel) into a non-numeric local temp dir, verifies every file's size
and sha256 against the manifest, then renames it to ``<local_dir>/<version>``.

Connection: the HDFS provider's ``webhdfs_default`` (``webhdfs://airflow@127.0.0.1:9870`` locally), used
through ``WebHDFSHook(...).get_conn()``: one ``hdfs.InsecureClient``, built lazily.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple, TypeVar
from urllib.parse import urlsplit

from airflow.sdk.bases.hook import BaseHook
from hdfs.util import HdfsError

from tfdeploy.registry.names import validate_model_name

MANIFEST_NAME = "tfdeploy_manifest.json"
MANIFEST_FORMAT = "tfdeploy-manifest/1"
TEMP_PREFIX = ".tmp-"
CHUNK_SIZE = 1 << 20
_DIGITS = re.compile(r"[0-9]+")

_T = TypeVar("_T")


# --- errors -------------------------------------------------------------------------------------------------


class ModelStoreError(Exception):
    """Base of the model store's errors; each message says what failed and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ModelNotFound(ModelStoreError):
    """The model version (or its manifest) is not in the store."""

    def __init__(self, message: str, *, model: str, version: int | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.version = version


class VersionConflict(ModelStoreError):
    """The version already exists with different content; versions are immutable."""

    def __init__(self, *, model: str, version: int, path: str, existing_sha256: str | None, new_sha256: str) -> None:
        existing = f"manifest sha256 {existing_sha256}" if existing_sha256 else f"no readable {MANIFEST_NAME}"
        super().__init__(
            f"{model} version {version} already exists at {path} with different content ({existing}; the content "
            f"being published has manifest sha256 {new_sha256}). Versions are never overwritten: publish under a "
            f"new version (next_version()) or, if the existing one is garbage, delete it deliberately first"
        )
        self.model = model
        self.version = version
        self.path = path
        self.existing_sha256 = existing_sha256
        self.new_sha256 = new_sha256


class ChecksumMismatch(ModelStoreError):
    """A file's size or sha256 differs from the manifest (``path`` is relative to the version dir)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class PublishError(ModelStoreError):
    """Publishing failed; nothing was written under the version's numeric directory."""


# --- pure logic: manifests ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishResult:
    model: str
    version: int
    uri: str
    manifest_sha256: str
    files: int
    bytes: int
    created: bool


class Mismatch(NamedTuple):
    """One difference between a manifest and a tree: ``path`` relative to the version dir."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def _check_rel_path(rel: str) -> str:
    """A manifest path: relative, '/'-separated, no empty/'.'/'..' parts, valid in HDFS (no ':')."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{rel!r} is not a plain relative path")
    for part in parts:
        if ":" in part:
            raise ValueError(f"{rel!r}: HDFS does not allow ':' in a file or directory name")
        try:
            part.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{rel!r} is not valid UTF-8") from None
    return rel


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _map(fn: Callable[[_T], Any], items: Sequence[_T], max_workers: int) -> list[Any]:
    """Run fn over items on up to max_workers threads; the first error cancels the rest (after in-flight ones end)."""
    if not items:
        return []
    if max_workers <= 1 or len(items) == 1:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="tfdeploy-model-store")
    try:
        futures = [pool.submit(fn, item) for item in items]
        for future in as_completed(futures):
            future.result()
        return [future.result() for future in futures]
    finally:
        # Wait for in-flight work, so nothing writes into a temp dir after the caller deletes it.
        pool.shutdown(wait=True, cancel_futures=True)


def build_manifest(local_dir: str | os.PathLike[str], *, max_workers: int = 1) -> dict[str, Any]:
    """The manifest of every directory and file under local_dir (relative paths, sizes, sha256).

    Symlinks to files are followed; symlinked directories and special files are refused. Raises
    PublishError when the tree cannot be published as it is.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise PublishError(f"{root} is not a directory: pass the SavedModel's directory (the one with saved_model.pb)")
    directories: list[str] = []
    file_paths: list[str] = []

    def walk_error(err: OSError) -> None:
        raise PublishError(f"cannot list {err.filename}: {err.strerror}; make the export readable") from err

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                raise PublishError(
                    f"{here / name} is a symlink to a directory; copy the real directory into the export "
                    "(cp -rL) so the published version is self-contained"
                )
            directories.append((here / name).relative_to(root).as_posix())
        for name in filenames:
            path = here / name
            if not path.is_file():
                kind = "a dangling symlink" if path.is_symlink() else "not a regular file"
                raise PublishError(f"{path} is {kind}; remove it from the export or replace it with a regular file")
            file_paths.append(path.relative_to(root).as_posix())
    for rel in directories + file_paths:
        try:
            _check_rel_path(rel)
        except ValueError as exc:
            raise PublishError(f"cannot publish {root}: {exc}; rename it") from None
    if MANIFEST_NAME in file_paths or MANIFEST_NAME in directories:
        raise PublishError(f"{root / MANIFEST_NAME} exists: that name is reserved for the store's manifest; remove it")
    if not file_paths:
        raise PublishError(f"{root} contains no files: export the SavedModel into it first")

    def hash_one(rel: str) -> tuple[int, str]:
        try:
            return _hash_file(root / rel)
        except OSError as exc:
            raise PublishError(f"cannot read {root / rel}: {exc.strerror or exc}; make the export readable") from exc

    file_paths.sort()
    hashed = _map(hash_one, file_paths, max_workers)
    files = {rel: {"size": size, "sha256": sha} for rel, (size, sha) in zip(file_paths, hashed, strict=True)}
    return {
        "format": MANIFEST_FORMAT,
        "directories": sorted(directories),
        "files": files,
        "file_count": len(files),
        "total_bytes": sum(entry["size"] for entry in files.values()),
    }


def encode_manifest(manifest: dict[str, Any]) -> bytes:
    """Canonical bytes of a manifest (sorted keys, fixed layout), so their sha256 identifies the content."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def manifest_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_manifest(data: bytes, *, where: str) -> dict[str, Any]:
    """Parse and validate manifest bytes read from `where`; raises ModelStoreError if it is not one."""
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format is not {MANIFEST_FORMAT!r}")
        directories, files = manifest["directories"], manifest["files"]
        if not isinstance(directories, list) or not isinstance(files, dict):
            raise ValueError("'directories' must be a list and 'files' an object")
        for rel in directories:
            _check_rel_path(rel)
        for rel, entry in files.items():
            _check_rel_path(rel)
            if not isinstance(entry.get("size"), int) or not re.fullmatch(r"[0-9a-f]{64}", str(entry.get("sha256"))):
                raise ValueError(f"entry {rel!r} needs an integer 'size' and a hex 'sha256'")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelStoreError(
            f"{where} is not a valid tfdeploy manifest ({exc}); the version was not published by this store "
            "or was tampered with: re-publish it under a new version"
        ) from None
    return manifest


def check_listing(manifest: dict[str, Any], listing: dict[str, tuple[str, int]], manifest_size: int) -> list[Mismatch]:
    """Compare a remote listing {relpath: (FILE|DIRECTORY, length)} of a version dir with its manifest."""
    expected: dict[str, tuple[str, int]] = {rel: ("DIRECTORY", 0) for rel in manifest["directories"]}
    expected.update({rel: ("FILE", entry["size"]) for rel, entry in manifest["files"].items()})
    expected[MANIFEST_NAME] = ("FILE", manifest_size)
    problems = []
    for rel in sorted(expected.keys() | listing.keys()):
        want, got = expected.get(rel), listing.get(rel)
        if got is None:
            problems.append(Mismatch(rel, "missing"))
        elif want is None:
            problems.append(Mismatch(rel, "not in the manifest"))
        elif want[0] != got[0]:
            problems.append(Mismatch(rel, f"is a {got[0].lower()}, expected a {want[0].lower()}"))
        elif want[0] == "FILE" and want[1] != got[1]:
            problems.append(Mismatch(rel, f"size {got[1]}, expected {want[1]}"))
    return problems


def verify_tree(manifest: dict[str, Any], root: str | os.PathLike[str]) -> list[Mismatch]:
    """Compare a local version dir with its manifest: every file's size and sha256, dirs, no extra entries."""
    base = Path(root)
    problems = []
    for rel in manifest["directories"]:
        if not (base / rel).is_dir():
            problems.append(Mismatch(rel, "directory missing"))
    present = {
        (Path(dirpath) / name).relative_to(base).as_posix() for dirpath, _dirs, names in os.walk(base) for name in names
    }
    for rel in sorted(present - manifest["files"].keys() - {MANIFEST_NAME}):
        problems.append(Mismatch(rel, "not in the manifest"))
    for rel, entry in sorted(manifest["files"].items()):
        if rel not in present:
            problems.append(Mismatch(rel, "missing"))
            continue
        size, sha = _hash_file(base / rel)
        if size != entry["size"] or sha != entry["sha256"]:
            problems.append(Mismatch(rel, f"size {size} sha256 {sha}, expected size {entry['size']} {entry['sha256']}"))
    return problems


def numeric_versions(children: Iterable[tuple[str, dict[str, Any]]]) -> list[int]:
    """Versions among a model dir's children (name, FileStatus): directories named by ASCII digits only."""
    return sorted({int(name) for name, status in children if _DIGITS.fullmatch(name) and status["type"] == "DIRECTORY"})


def _check_version(version: int) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be a non-negative int (TF Serving version directories), got {version!r}")
    return version


# --- the hook -----------------------------------------------------------------------------------------------


class ModelStoreHook(BaseHook):
    conn_name_attr = "webhdfs_conn_id"
    default_conn_name = "webhdfs_default"
    conn_type = "webhdfs"
    hook_name = "tfdeploy model store (HDFS)"

    def __init__(
        self, webhdfs_conn_id: str = default_conn_name, *, base_path: str = "/models", max_workers: int = 8
    ) -> None:
        super().__init__()
        if not base_path.startswith("/"):
            raise ValueError(f"base_path must be an absolute HDFS path such as '/models', got {base_path!r}")
        if max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, got {max_workers}")
        self.webhdfs_conn_id = webhdfs_conn_id
        self.base_path = base_path.rstrip("/") or "/"
        self.max_workers = max_workers

    # The one client ----------------------------------------------------------------------------------------

    @cached_property
    def client(self) -> Any:
        """The HDFS provider's client (``hdfs.InsecureClient``), with a connection pool for max_workers threads."""
        from airflow.providers.apache.hdfs.hooks.webhdfs import WebHDFSHook
        from requests.adapters import DEFAULT_POOLSIZE, HTTPAdapter

        client = WebHDFSHook(webhdfs_conn_id=self.webhdfs_conn_id).get_conn()
        if self.max_workers > DEFAULT_POOLSIZE:
            for prefix in ("http://", "https://"):
                client._session.mount(prefix, HTTPAdapter(pool_maxsize=self.max_workers))
        return client

    def get_conn(self) -> Any:
        return self.client

    # Paths -------------------------------------------------------------------------------------------------

    def model_dir(self, model: str) -> str:
        validate_model_name(model)
        return posixpath.join(self.base_path, model)

    def version_dir(self, model: str, version: int) -> str:
        return f"{self.model_dir(model)}/{_check_version(version)}"

    def uri(self, model: str, version: int) -> str:
        """``webhdfs://<host>:<port><version_dir>``: what the registry records."""
        return self._uri_for(self.version_dir(model, version))

    @cached_property
    def _authority(self) -> str:
        conn = self.get_connection(self.webhdfs_conn_id)
        host = conn.host or ""
        if "," in host:  # several NameNodes (HA): name the one the client uses
            return urlsplit(self.client.url).netloc
        return f"{host}:{conn.port}" if conn.port else host

    def _uri_for(self, path: str) -> str:
        return f"webhdfs://{self._authority}{path}"

    # Listing -----------------------------------------------------------------------------------------------

    def _children(self, path: str) -> list[tuple[str, dict[str, Any]]] | None:
        """(name, FileStatus) of a directory's children; None if it does not exist."""
        try:
            return list(self.client.list(path, status=True))
        except HdfsError as exc:
            if exc.exception == "FileNotFoundException":
                return None
            raise

    def versions(self, model: str) -> list[int]:
        children = self._children(self.model_dir(model))
        return numeric_versions(children) if children else []

    def next_version(self, model: str) -> int:
        versions = self.versions(model)
        return versions[-1] + 1 if versions else 1

    def _existing_version_dir(self, model: str, version: int) -> str | None:
        """The directory holding `version` (its canonical name, or a zero-padded one like 00000123), if any."""
        children = self._children(self.model_dir(model)) or []
        names = [n for n, st in children if st["type"] == "DIRECTORY" and _DIGITS.fullmatch(n) and int(n) == version]
        if not names:
            return None
        name = str(version) if str(version) in names else sorted(names)[0]
        return f"{self.model_dir(model)}/{name}"

    def _require_version_dir(self, model: str, version: int) -> str:
        path = self._existing_version_dir(model, _check_version(version))
        if path is None:
            raise ModelNotFound(
                f"{model} version {version} is not in the model store ({self.version_dir(model, version)} does not "
                f"exist; versions present: {self.versions(model) or 'none'}): publish it first or pick another",
                model=model,
                version=version,
            )
        return path

    def _walk_listing(self, root: str) -> dict[str, tuple[str, int]]:
        """{relpath: (type, length)} of everything under root, one LISTSTATUS per directory."""
        listing: dict[str, tuple[str, int]] = {}
        for (path, _status), dir_infos, file_infos in self.client.walk(root, status=True):
            rel_dir = posixpath.relpath(path, root)
            for name, st in [*dir_infos, *file_infos]:
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                listing[rel] = (st["type"], st["length"])
        return listing

    # Manifests ---------------------------------------------------------------------------------------------

    def _read_manifest_bytes(self, version_path: str, model: str, version: int) -> bytes:
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

    def read_manifest(self, model: str, version: int) -> dict[str, Any]:
        path = self._require_version_dir(model, version)
        data = self._read_manifest_bytes(path, model, version)
        return parse_manifest(data, where=f"{path}/{MANIFEST_NAME}")

    # Publish -----------------------------------------------------------------------------------------------

    def publish(self, local_dir: str | os.PathLike[str], model: str, version: int) -> PublishResult:
        """Publish the SavedModel in local_dir as model/version, atomically and idempotently (see module doc)."""
        model_dir = self.model_dir(model)
        target = self.version_dir(model, version)
        manifest = build_manifest(local_dir, max_workers=self.max_workers)
        data = encode_manifest(manifest)
        sha = manifest_sha256(data)
        self.log.info(
            "Publishing %s (%d files, %d bytes, manifest sha256 %s) as %s",
            local_dir,
            manifest["file_count"],
            manifest["total_bytes"],
            sha,
            target,
        )
        try:
            existing = self._existing_version_dir(model, version)
        except HdfsError as exc:
            raise PublishError(f"cannot list {model_dir}: {exc}; check that HDFS is up and the path readable") from exc
        if existing is not None:
            return self._settle_existing(model, version, existing, sha, manifest)

        tmp = f"{model_dir}/{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        try:
            self._stage(Path(local_dir), tmp, manifest, data)
            moved = self._rename2(tmp, target)
        except BaseException as exc:
            self._remove_quietly(tmp)
            if isinstance(exc, HdfsError):
                raise PublishError(
                    f"publishing {model} version {version} failed: {exc}; nothing was written to {target}, "
                    "retry when HDFS is healthy"
                ) from exc
            raise
        if not moved:  # another publisher won the race for this version: same rule against its manifest
            self._remove_quietly(tmp)
            self.log.info("%s appeared while publishing; comparing with its manifest", target)
            return self._settle_existing(model, version, target, sha, manifest)
        self.log.info("Published %s", target)
        return PublishResult(
            model=model,
            version=version,
            uri=self._uri_for(target),
            manifest_sha256=sha,
            files=manifest["file_count"],
            bytes=manifest["total_bytes"],
            created=True,
        )

    def _settle_existing(
        self, model: str, version: int, path: str, sha: str, manifest: dict[str, Any]
    ) -> PublishResult:
        try:
            existing_sha: str | None = manifest_sha256(self._read_manifest_bytes(path, model, version))
        except ModelNotFound:
            existing_sha = None
        except HdfsError as exc:
            raise PublishError(
                f"{path} exists but its manifest cannot be read ({exc}); retry when HDFS is healthy"
            ) from exc
        if existing_sha != sha:
            raise VersionConflict(model=model, version=version, path=path, existing_sha256=existing_sha, new_sha256=sha)
        self.log.info("%s already holds this content (manifest sha256 %s); nothing to do", path, sha)
        return PublishResult(
            model=model,
            version=version,
            uri=self._uri_for(path),
            manifest_sha256=sha,
            files=manifest["file_count"],
            bytes=manifest["total_bytes"],
            created=False,
        )

    def _stage(self, root: Path, tmp: str, manifest: dict[str, Any], data: bytes) -> None:
        """Upload every file and the manifest into tmp, then check every size with one listing pass."""
        client = self.client
        client.makedirs(tmp)
        files: dict[str, dict[str, Any]] = manifest["files"]
        # Directories holding files are created by CREATE; make only those that would otherwise be missing.
        for rel in manifest["directories"]:
            if not any(f.startswith(f"{rel}/") for f in files):
                client.makedirs(f"{tmp}/{rel}")

        def upload(rel: str) -> None:
            src = root / rel
            digest = hashlib.sha256()
            size = 0

            def chunks(fh: Any) -> Iterator[bytes]:
                nonlocal size
                while chunk := fh.read(CHUNK_SIZE):
                    digest.update(chunk)
                    size += len(chunk)
                    yield chunk

            try:
                with open(src, "rb") as fh:
                    client.write(f"{tmp}/{rel}", data=chunks(fh), overwrite=False)
            except OSError as exc:
                raise PublishError(
                    f"cannot read {src} while publishing: {exc.strerror or exc}; do not change the export while it "
                    "is published"
                ) from exc
            except HdfsError as exc:
                raise PublishError(f"uploading {src} to {tmp}/{rel} failed: {exc}") from exc
            entry = files[rel]
            if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
                raise PublishError(
                    f"{src} changed while it was published (size {entry['size']} -> {size}); do not change the "
                    "export while it is published, then retry"
                )

        _map(upload, sorted(files), self.max_workers)
        client.write(f"{tmp}/{MANIFEST_NAME}", data=data, overwrite=False)
        problems = check_listing(manifest, self._walk_listing(tmp), len(data))
        if problems:
            shown = "; ".join(str(p) for p in problems[:5])
            raise PublishError(f"the upload to {tmp} is incomplete ({len(problems)} problems: {shown}); retry")

    def _rename2(self, src: str, dst: str) -> bool:
        """WebHDFS RENAME with rename2 semantics (renameoptions=NONE): True if moved, False if dst exists.

        Hadoop answers 200 with an empty body on success and 403 FileAlreadyExistsException when dst exists.
        A ``{"boolean": ...}`` body means the server ignored renameoptions and applied the old rename, which
        moves src INTO an existing dst: then that is undone and treated as "dst exists".
        """
        client = self.client
        try:
            response = client._rename(src, destination=dst, renameoptions="NONE")
        except HdfsError as exc:
            if exc.exception == "FileAlreadyExistsException":
                return False
            raise
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
        if not (isinstance(body, dict) and "boolean" in body):
            return True
        nested = f"{dst}/{posixpath.basename(src)}"
        if client.status(nested, strict=False) is not None:
            self.log.warning("The NameNode ignored renameoptions=NONE and nested %s into %s; undoing", src, nested)
            client._rename(nested, destination=src)
            return False
        if body["boolean"] is not True:
            raise PublishError(f"the NameNode refused to rename {src} to {dst}; check that {dst}'s parent exists")
        self.log.warning("The NameNode ignored renameoptions=NONE (old rename semantics); %s was moved anyway", dst)
        return True

    def _remove_quietly(self, path: str) -> None:
        try:
            self.client.delete(path, recursive=True)
        except Exception as exc:  # noqa: BLE001 - best effort: the publish error matters more
            self.log.warning("Could not delete the temp dir %s (%s); clean_stale_temp() removes it later", path, exc)

    def clean_stale_temp(self, model: str, *, older_than: timedelta = timedelta(hours=1)) -> list[str]:
        """Delete the model's leftover ``.tmp-*`` dirs whose newest entry is older than older_than.

        A dir still being uploaded to keeps changing, but one file uploading for longer than older_than
        looks stale: keep older_than above the longest single-file upload.
        """
        cutoff_ms = (time.time() - older_than.total_seconds()) * 1000
        model_dir = self.model_dir(model)
        removed = []
        for name, status in self._children(model_dir) or []:
            if not name.startswith(TEMP_PREFIX) or status["type"] != "DIRECTORY":
                continue
            path = f"{model_dir}/{name}"
            try:
                newest = max(
                    [status["modificationTime"]]
                    + [
                        st["modificationTime"]
                        for _root, dirs, files in self.client.walk(path, status=True, ignore_missing=True)
                        for _name, st in [*dirs, *files]
                    ]
                )
            except HdfsError as exc:
                if exc.exception == "FileNotFoundException":
                    continue
                raise
            if newest < cutoff_ms:
                self.log.info("Deleting stale temp dir %s", path)
                self.client.delete(path, recursive=True)
                removed.append(path)
        return removed

    # Fetch -------------------------------------------------------------------------------------------------

    def fetch(
        self,
        model: str,
        version: int,
        local_dir: str | os.PathLike[str],
        *,
        expected_manifest_sha256: str | None = None,
    ) -> Path:
        """Download model/version into ``local_dir/<version>`` and verify it; returns that directory.

        The download goes to a non-numeric temp dir first, so a TF Serving watching local_dir never sees a
        partial version. If ``local_dir/<version>`` already exists and matches the manifest it is kept.
        ``expected_manifest_sha256`` (what the registry recorded) pins the exact content.
        """
        src = self._require_version_dir(model, version)
        data = self._read_manifest_bytes(src, model, version)
        sha = manifest_sha256(data)
        if expected_manifest_sha256 is not None and sha != expected_manifest_sha256:
            raise ChecksumMismatch(
                f"{src}/{MANIFEST_NAME} has sha256 {sha}, expected {expected_manifest_sha256}: the stored version "
                "is not the one recorded; do not deploy it, check the registry and the store",
                path=MANIFEST_NAME,
            )
        manifest = parse_manifest(data, where=f"{src}/{MANIFEST_NAME}")
        parent = Path(local_dir)
        parent.mkdir(parents=True, exist_ok=True)
        final = parent / str(version)
        if final.exists():
            return self._check_local(final, manifest)

        tmp = parent / f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
        self.log.info("Fetching %s (%d files) into %s", src, manifest["file_count"], final)
        files: dict[str, dict[str, Any]] = manifest["files"]
        try:
            tmp.mkdir()
            for rel in manifest["directories"]:
                (tmp / rel).mkdir(parents=True, exist_ok=True)
            _map(lambda rel: self._download(src, tmp, rel, files[rel]), sorted(files), self.max_workers)
            (tmp / MANIFEST_NAME).write_bytes(data)
            try:
                os.rename(tmp, final)
            except OSError:
                if final.exists():  # fetched by someone else meanwhile
                    shutil.rmtree(tmp, ignore_errors=True)
                    return self._check_local(final, manifest)
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def _download(self, src: str, dst_root: Path, rel: str, entry: dict[str, Any]) -> None:
        dst = dst_root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        size = 0
        try:
            with self.client.read(f"{src}/{rel}", chunk_size=CHUNK_SIZE) as chunks, open(dst, "wb") as fh:
                for chunk in chunks:
                    digest.update(chunk)
                    size += len(chunk)
                    fh.write(chunk)
        except HdfsError as exc:
            if exc.exception == "FileNotFoundException":
                raise ChecksumMismatch(
                    f"{src}/{rel} is listed in the manifest but missing from HDFS: the stored version is damaged; "
                    "do not deploy it, re-publish the model under a new version",
                    path=rel,
                ) from None
            raise ModelStoreError(f"downloading {src}/{rel} failed: {exc}; retry when HDFS is healthy") from exc
        if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
            raise ChecksumMismatch(
                f"{src}/{rel} does not match the manifest (got size {size} sha256 {digest.hexdigest()}, expected "
                f"size {entry['size']} sha256 {entry['sha256']}): the stored version is corrupt; do not deploy it, "
                "re-publish the model under a new version",
                path=rel,
            )

    def _check_local(self, path: Path, manifest: dict[str, Any]) -> Path:
        problems = verify_tree(manifest, path)
        if problems:
            raise ChecksumMismatch(
                f"{path} already exists and differs from the store ({problems[0]}"
                f"{f' and {len(problems) - 1} more' if len(problems) > 1 else ''}); delete it and fetch again",
                path=problems[0].path,
            )
        self.log.info("%s already holds this version (verified); not downloading again", path)
        return path

    # Cleanup -----------------------------------------------------------------------------------------------

    def delete_version(self, model: str, version: int) -> bool:
        """Delete a version recursively (tests and cleanup only: versions are otherwise immutable)."""
        path = self._existing_version_dir(model, _check_version(version))
        if path is None:
            return False
        self.log.warning("Deleting %s", path)
        return bool(self.client.delete(path, recursive=True))
