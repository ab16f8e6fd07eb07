"""The model store's manifest, written once: its format, the relative-path rules, file hashing, checks.

A manifest (``tfdeploy_manifest.json``, stored inside each version directory) lists every directory and
every file of a SavedModel with its size and sha256. Its canonical bytes (:func:`encode_manifest`) are
what the store writes, and their sha256 (:func:`manifest_sha256`) identifies the content: the registry
records it, publishing compares it, fetching pins it.

Pure: no Airflow, no HDFS. Errors come from :mod:`tfdeploy.core.errors`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, TypeVar

from tfdeploy.core.errors import ModelStoreError, PublishError
from tfdeploy.core.names import parse_version_dir

MANIFEST_NAME = "tfdeploy_manifest.json"
MANIFEST_FORMAT = "tfdeploy-manifest/1"
CHUNK_SIZE = 1 << 20
# Temp dirs (local and on HDFS) start with this: never a version directory for TF Serving.
TEMP_PREFIX = ".tmp-"
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

_T = TypeVar("_T")
_R = TypeVar("_R")

Manifest = dict[str, Any]


class Mismatch(NamedTuple):
    """One difference between a manifest and a tree: ``path`` relative to the version dir."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


# --- paths and hashing ---------------------------------------------------------------------------------------


def check_rel_path(rel: str) -> str:
    """A manifest path: relative, '/'-separated, no empty/'.'/'..' parts, valid in HDFS (no ':'), UTF-8."""
    parts = rel.split("/") if isinstance(rel, str) else [""]
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


def hash_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, sha256 hex) of a file, read in CHUNK_SIZE chunks."""
    with open(path, "rb") as fh:
        return hash_stream(fh)


def hash_stream(fh: BinaryIO) -> tuple[int, str]:
    """(size, sha256 hex) of what is left to read in an open binary file, read in CHUNK_SIZE chunks."""
    digest = hashlib.sha256()
    size = 0
    while chunk := fh.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


def map_parallel(fn: Callable[[_T], _R], items: Sequence[_T], max_workers: int) -> list[_R]:
    """fn over items on up to max_workers threads, results in order; the first error is raised.

    Work not started yet is cancelled and in-flight work is waited for, so nothing still writes (into a
    temp dir, say) after this returns or raises.
    """
    if max_workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    pool = ThreadPoolExecutor(max_workers=min(max_workers, len(items)), thread_name_prefix="tfdeploy-model-store")
    try:
        futures = [pool.submit(fn, item) for item in items]
        for future in as_completed(futures):
            future.result()
        return [future.result() for future in futures]
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- building ------------------------------------------------------------------------------------------------


def scan_tree(local_dir: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(directories, files) under local_dir as sorted relative paths, checked to be publishable.

    Symbolic links: a link whose target resolves outside local_dir (directly or through other links, to a
    file, a directory or nothing) is refused before anything is read, so a model cannot carry a file of the
    machine that publishes it (``variables/x -> /etc/hostname``). A link to a file inside local_dir is followed:
    its content is published as a regular file, so the version is self-contained. Links to directories (inside
    too: they could loop), dangling links, special files, paths HDFS cannot hold, the reserved manifest name and
    a tree without files are refused. Every refusal is a PublishError naming the path.
    """
    root = Path(local_dir)
    if not root.is_dir():
        raise PublishError(f"{root} is not a directory: pass the SavedModel's directory (the one with saved_model.pb)")
    real_root = root.resolve()
    directories: list[str] = []
    files: list[str] = []

    def walk_error(err: OSError) -> None:
        raise PublishError(f"cannot list {err.filename}: {err.strerror}; make the export readable") from err

    for dirpath, dirnames, filenames in os.walk(root, onerror=walk_error):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                _check_link_target(real_root, here / name)
                raise PublishError(
                    f"{here / name} is a symlink to a directory; copy the real directory into the export "
                    "(cp -rL) so the published version is self-contained"
                )
            directories.append((here / name).relative_to(root).as_posix())
        for name in filenames:
            path = here / name
            if path.is_symlink():
                _check_link_target(real_root, path)
            if not path.is_file():
                kind = "a dangling symlink" if path.is_symlink() else "not a regular file"
                raise PublishError(f"{path} is {kind}; remove it from the export or replace it with a regular file")
            files.append(path.relative_to(root).as_posix())
    for rel in directories + files:
        try:
            check_rel_path(rel)
        except ValueError as exc:
            raise PublishError(f"cannot publish {root}: {exc}; rename it") from None
    if MANIFEST_NAME in files or MANIFEST_NAME in directories:
        raise PublishError(f"{root / MANIFEST_NAME} exists: that name is reserved for the store's manifest; remove it")
    if not files:
        raise PublishError(f"{root} contains no files: export the SavedModel into it first")
    return sorted(directories), sorted(files)


def _check_link_target(real_root: Path, link: Path) -> Path:
    """The real path a symlink under real_root leads to; PublishError if that is outside real_root."""
    try:
        target = link.resolve()  # follows every link on the way; a dangling one resolves as far as it can
    except (OSError, RuntimeError) as exc:  # a loop of links (RuntimeError before Python 3.13)
        raise PublishError(f"{link} cannot be resolved ({exc}); remove the link from the export") from None
    if not target.is_relative_to(real_root):
        via = f"a symlink to {os.readlink(link)}" if link.is_symlink() else "reached through a symlink"
        raise PublishError(
            f"{link} is {via} ({target}), outside the model directory {real_root}: "
            "refused, nothing was uploaded. A published model holds only its own files: copy what it needs into "
            "the export as regular files, or remove the link"
        )
    return target


def check_links(local_dir: str | os.PathLike[str]) -> None:
    """PublishError naming the first symlink under local_dir whose target resolves outside it (for copies of a
    tree made with a tool that follows links, such as shutil.copytree)."""
    root = Path(local_dir)
    real_root = root.resolve()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            if (Path(dirpath) / name).is_symlink():
                _check_link_target(real_root, Path(dirpath) / name)


def open_in_tree(root: str | os.PathLike[str], rel: str) -> BinaryIO:
    """Open root/rel for reading, refusing (PublishError) if it resolves outside root: a link swapped for one
    that leaves the tree after :func:`scan_tree` checked it is not read either."""
    real_root = Path(root).resolve()
    return open(_check_link_target(real_root, real_root / rel), "rb")


def build_manifest(local_dir: str | os.PathLike[str], *, max_workers: int = 1) -> Manifest:
    """The manifest of every directory and file under local_dir (relative paths, sizes, sha256)."""
    root = Path(local_dir)
    directories, file_paths = scan_tree(root)

    def hash_one(rel: str) -> tuple[int, str]:
        try:
            with open_in_tree(root, rel) as fh:
                return hash_stream(fh)
        except OSError as exc:
            raise PublishError(f"cannot read {root / rel}: {exc.strerror or exc}; make the export readable") from exc

    hashed = map_parallel(hash_one, file_paths, max_workers)
    files = {rel: {"size": size, "sha256": sha} for rel, (size, sha) in zip(file_paths, hashed, strict=True)}
    return {
        "format": MANIFEST_FORMAT,
        "directories": directories,
        "files": files,
        "file_count": len(files),
        "total_bytes": sum(entry["size"] for entry in files.values()),
    }


def encode_manifest(manifest: Manifest) -> bytes:
    """Canonical bytes of a manifest (sorted keys, fixed layout), so their sha256 identifies the content."""
    return (json.dumps(manifest, sort_keys=True, indent=2, ensure_ascii=True) + "\n").encode("ascii")


def manifest_sha256(data: bytes) -> str:
    """The content's identity: the sha256 of the manifest's bytes (as stored, i.e. encode_manifest's)."""
    return hashlib.sha256(data).hexdigest()


def is_sha256(value: object) -> bool:
    """Whether ``value`` is a sha256 as the store writes it (64 lower-case hex digits)."""
    return isinstance(value, str) and _SHA256_HEX.fullmatch(value) is not None


# --- reading and checking ------------------------------------------------------------------------------------


def parse_manifest(data: bytes, *, where: str) -> Manifest:
    """Parse and validate manifest bytes read from ``where``; raises ModelStoreError if it is not one."""
    try:
        manifest = json.loads(data)
        if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"format is not {MANIFEST_FORMAT!r}")
        directories, files = manifest["directories"], manifest["files"]
        if not isinstance(directories, list) or not isinstance(files, dict):
            raise ValueError("'directories' must be a list and 'files' an object")
        for rel in directories:
            check_rel_path(rel)
        for rel, entry in files.items():
            check_rel_path(rel)
            size, sha = entry.get("size"), entry.get("sha256")
            if isinstance(size, bool) or not isinstance(size, int) or size < 0 or not _SHA256_HEX.fullmatch(str(sha)):
                raise ValueError(f"entry {rel!r} needs a non-negative integer 'size' and a hex 'sha256'")
        if MANIFEST_NAME in files or MANIFEST_NAME in directories:
            raise ValueError(f"it lists {MANIFEST_NAME} itself")
        if manifest.get("file_count") != len(files):
            raise ValueError(f"'file_count' is not the number of files ({len(files)})")
        if manifest.get("total_bytes") != sum(entry["size"] for entry in files.values()):
            raise ValueError("'total_bytes' is not the sum of the file sizes")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ModelStoreError(
            f"{where} is not a valid tfdeploy manifest ({exc}); the version was not published by this store "
            "or was tampered with: re-publish it under a new version"
        ) from None
    return manifest


def check_listing(manifest: Manifest, listing: dict[str, tuple[str, int]], manifest_size: int) -> list[Mismatch]:
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


def verify_tree(manifest: Manifest, root: str | os.PathLike[str]) -> list[Mismatch]:
    """Compare a local version dir with its manifest: every file's size and sha256, missing and extra entries.

    The manifest file itself (``MANIFEST_NAME``) is not compared; callers that need it compare its bytes.
    Problems are sorted by path.
    """
    base = Path(root)
    present_dirs: set[str] = set()
    present_files: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(base):
        here = Path(dirpath)
        present_dirs.update((here / name).relative_to(base).as_posix() for name in dirnames)
        present_files.update((here / name).relative_to(base).as_posix() for name in filenames)
    present_files.discard(MANIFEST_NAME)
    problems = [Mismatch(rel, "directory missing") for rel in manifest["directories"] if rel not in present_dirs]
    problems += [Mismatch(rel, "not in the manifest") for rel in present_dirs - set(manifest["directories"])]
    problems += [Mismatch(rel, "not in the manifest") for rel in present_files - manifest["files"].keys()]
    for rel, entry in manifest["files"].items():
        if rel not in present_files:
            problems.append(Mismatch(rel, "missing"))
            continue
        path = base / rel
        size = path.stat().st_size
        if size != entry["size"]:
            problems.append(Mismatch(rel, f"size {size}, expected size {entry['size']}"))
            continue
        _, sha = hash_file(path)
        if sha != entry["sha256"]:
            problems.append(Mismatch(rel, f"sha256 {sha}, expected size {entry['size']} sha256 {entry['sha256']}"))
    return sorted(problems)


def numeric_versions(children: Iterable[tuple[str, dict[str, Any]]]) -> list[int]:
    """Versions among a model dir's children (name, FileStatus): directories TF Serving reads as a version."""
    versions = {parse_version_dir(name) for name, status in children if status["type"] == "DIRECTORY"}
    return sorted(v for v in versions if v is not None)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (a rename into it) durable, as the last step of placing a version tree."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
