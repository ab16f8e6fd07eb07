"""Publishing a version: upload into a hidden temp dir, check, then rename2 into place (see hook's doc)."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import os
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from hdfs import HdfsError

from tfdeploy.core import manifest as mf
from tfdeploy.core.errors import ModelNotFound, ModelStoreError, PublishError, VersionConflict
from tfdeploy.core.manifest import CHUNK_SIZE, MANIFEST_NAME, TEMP_PREFIX, Manifest
from tfdeploy.hooks.model_store.client import retry_datanode_failures

if TYPE_CHECKING:
    from tfdeploy.hooks.model_store.listing import Children, ModelStoreBase

# A temp dir whose newest entry is older than this was left by a crashed publisher (keep it above the
# longest single-file upload: a file being uploaded shows its time only when it is closed).
STALE_AFTER = timedelta(hours=24)


@dataclass(frozen=True)
class PublishResult:
    model: str
    version: int
    uri: str
    manifest_sha256: str
    files: int
    bytes: int
    created: bool


def publish_version(
    hook: ModelStoreBase, local_dir: str | os.PathLike[str], model: str, version: int, *, manifest: Manifest | None
) -> PublishResult:
    model_dir = hook.model_dir(model)
    target = hook.version_dir(model, version)
    root = Path(local_dir)
    if manifest is None:
        manifest = mf.build_manifest(root, max_workers=hook.max_workers)
    else:
        _check_given_manifest(manifest, root)
    data = mf.encode_manifest(manifest)
    sha = mf.manifest_sha256(data)
    result = PublishResult(
        model, version, hook.uri_for(target), sha, manifest["file_count"], manifest["total_bytes"], True
    )
    hook.log.info(
        "Publishing %s (%d files, %d bytes, manifest sha256 %s) as %s", root, result.files, result.bytes, sha, target
    )
    try:
        children = hook.children(model_dir) or []
    except HdfsError as exc:
        raise PublishError(f"cannot list {model_dir}: {exc}; check that HDFS is up and the path readable") from exc
    existing = hook._existing_version_dir(model, version, children)
    if existing is not None:
        return _settle_existing(hook, result, existing, manifest)
    try:
        clean_stale_temp(hook, model, children=children)
    except Exception as exc:  # noqa: BLE001 - housekeeping must never fail a publish
        hook.log.warning("Could not clean stale temp dirs of %s: %s", model, exc)

    tmp = f"{model_dir}/{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"
    try:
        _stage(hook, root, tmp, manifest, data)
        moved = rename2(hook, tmp, target)
    except BaseException as exc:
        hook.remove_quietly(tmp)
        if isinstance(exc, HdfsError):
            raise PublishError(
                f"publishing {model} version {version} failed: {exc}; nothing was written to {target}, "
                "retry when HDFS is healthy"
            ) from exc
        raise
    if not moved:  # another publisher won the race for this version: same rule against its manifest
        hook.remove_quietly(tmp)
        hook.log.info("%s appeared while publishing; comparing with its manifest", target)
        return _settle_existing(hook, result, target, manifest)
    hook.log.info("Published %s", target)
    return result


def _check_given_manifest(manifest: Manifest, root: Path) -> None:
    """A caller's manifest must be a valid one of exactly this tree (contents are checked while uploading)."""
    try:
        mf.parse_manifest(mf.encode_manifest(manifest), where="the manifest passed to publish()")
    except ModelStoreError as exc:
        raise PublishError(exc.message) from None
    directories, files = mf.scan_tree(root)
    if directories != sorted(manifest["directories"]) or files != sorted(manifest["files"]):
        missing = sorted(set(directories + files) - set(manifest["directories"]) - manifest["files"].keys())
        extra = sorted((set(manifest["directories"]) | manifest["files"].keys()) - set(directories + files))
        raise PublishError(
            f"the manifest passed to publish() does not describe {root} (not in it: {missing[:5]}; not on disk: "
            f"{extra[:5]}); build it with build_manifest() once the export is complete"
        )


def _settle_existing(hook: ModelStoreBase, result: PublishResult, path: str, manifest: Manifest) -> PublishResult:
    try:
        existing_sha: str | None = mf.manifest_sha256(hook.read_manifest_bytes(path, result.model, result.version))
    except ModelNotFound:
        existing_sha = None
    except HdfsError as exc:
        raise PublishError(
            f"{path} exists but its manifest cannot be read ({exc}); retry when HDFS is healthy"
        ) from exc
    if existing_sha != result.manifest_sha256:
        raise VersionConflict(
            model=result.model,
            version=result.version,
            path=path,
            existing_sha256=existing_sha,
            new_sha256=result.manifest_sha256,
        )
    hook.log.info("%s already holds this content (manifest sha256 %s); nothing to do", path, result.manifest_sha256)
    return PublishResult(
        result.model, result.version, hook.uri_for(path), result.manifest_sha256, result.files, result.bytes, False
    )


def _stage(hook: ModelStoreBase, root: Path, tmp: str, manifest: Manifest, data: bytes) -> None:
    """Upload every file (checking it against the manifest) and the manifest into tmp, then list and compare."""
    client = hook.client
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

        @contextlib.contextmanager
        def contents() -> Iterator[Iterator[bytes]]:  # each attempt reads (and hashes) the file afresh
            nonlocal digest, size
            digest, size = hashlib.sha256(), 0
            with mf.open_in_tree(root, rel) as fh:
                yield chunks(fh)

        def chunks(fh: Any) -> Iterator[bytes]:
            nonlocal size
            while chunk := fh.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
                yield chunk

        try:
            write_file(hook, f"{tmp}/{rel}", contents)
        except requests.RequestException:  # an OSError too, but HDFS's: hdfs_call names the server
            raise
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
                f"{src} changed while it was published (size {entry['size']} -> {size}, sha256 {entry['sha256']} "
                f"-> {digest.hexdigest()}); do not change the export while it is published, then retry"
            )

    mf.map_parallel(upload, sorted(files), hook.max_workers)
    write_file(hook, f"{tmp}/{MANIFEST_NAME}", lambda: contextlib.nullcontext(data))
    problems = mf.check_listing(manifest, hook.walk_listing(tmp), len(data))
    if problems:
        shown = "; ".join(str(p) for p in problems[:5])
        raise PublishError(f"the upload to {tmp} is incomplete ({len(problems)} problems: {shown}); retry")


def write_file(hook: ModelStoreBase, path: str, contents: Callable[[], contextlib.AbstractContextManager[Any]]) -> None:
    """Create the HDFS file ``path`` (in a temp dir of ours) from ``contents()`` (bytes or an iterator of
    them), written again whole after a DataNode failure (``client.retry_datanode_failures``). The first attempt
    never overwrites; a retry replaces what a broken attempt left (a partial file, or a whole one whose answer
    was lost)."""

    def attempt(n: int) -> None:
        with contents() as data:
            hook.client.write(path, data=data, overwrite=n > 0)

    retry_datanode_failures(hook.client, hook.log, f"Writing {path}", attempt)


def rename2(hook: ModelStoreBase, src: str, dst: str) -> bool:
    """WebHDFS RENAME with rename2 semantics (``renameoptions=NONE``): True if moved, False if dst exists.

    The documented REST call, made with requests (the ``hdfs`` client's ``rename`` has no renameoptions):
    Hadoop answers 200 with an empty body on success and 403 (409 through some gateways)
    FileAlreadyExistsException when dst exists. A ``{"boolean": ...}`` body means the server ignored
    renameoptions and applied the old rename, which moves src INTO an existing dst: that is undone and
    treated as "dst exists".
    """
    conn = hook.connection
    base = hook.client.url.split(";")[0].rstrip("/")
    response = requests.put(
        f"{base}/webhdfs/v1{src}",
        params={
            "op": "RENAME",
            "destination": dst,
            "renameoptions": "NONE",
            "user.name": conn.login or getpass.getuser(),
        },
        auth=(conn.login, conn.password) if conn.password else None,
        verify=conn.extra_dejson.get("verify", False) if base.startswith("https:") else True,
        timeout=hook.timeout,
    )
    body: Any = None
    if response.content:
        try:
            body = response.json()
        except ValueError:
            body = None
    if response.status_code != 200:
        remote = body.get("RemoteException", {}) if isinstance(body, dict) else {}
        exception = remote.get("exception", "")
        if response.status_code in (403, 409) and exception == "FileAlreadyExistsException":
            return False
        detail = remote.get("message") or response.text[:200]
        raise HdfsError(f"RENAME {src} -> {dst}: HTTP {response.status_code} {detail}", exception=exception)
    if not (isinstance(body, dict) and "boolean" in body):
        return True
    nested = f"{dst}/{posixpath.basename(src)}"
    if hook.client.status(nested, strict=False) is not None:
        hook.log.warning("The NameNode ignored renameoptions=NONE and nested %s into %s; undoing", src, nested)
        hook.client.rename(nested, src)
        return False
    if body["boolean"] is not True:
        raise PublishError(f"the NameNode refused to rename {src} to {dst}; check that {dst}'s parent exists")
    hook.log.warning("The NameNode ignored renameoptions=NONE (old rename semantics); %s was moved anyway", dst)
    return True


def put_file(hook: ModelStoreBase, path: str, data: bytes) -> str:
    """Write ``data`` as the HDFS file ``path`` atomically: uploaded to a hidden temp name beside it
    (``.tmp-<name>-<uuid8>``), its length checked, then moved into place with rename2, so a reader never sees
    a partial file and an existing file is never overwritten. The parent directory is created if missing.
    Returns the file's ``webhdfs://`` URI; raises :class:`PublishError` (nothing left behind) otherwise."""
    parent, name = posixpath.split(path)
    if not parent.startswith("/") or not name:
        raise ValueError(f"an absolute HDFS file path is needed, got {path!r}")
    tmp = f"{parent}/{TEMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
    try:
        hook.client.makedirs(parent)
        write_file(hook, tmp, lambda: contextlib.nullcontext(data))
        length = (hook.client.status(tmp, strict=False) or {}).get("length")
        if length != len(data):
            raise PublishError(f"{tmp} holds {length} bytes after writing {len(data)}; retry")
        moved = rename2(hook, tmp, path)
    except BaseException as exc:
        hook.remove_quietly(tmp)
        if isinstance(exc, HdfsError):
            raise PublishError(
                f"writing {path} failed: {exc}; nothing was written (is HDFS up, and {parent}'s parent owned by the "
                "user of the webhdfs Connection?)"
            ) from exc
        raise
    if not moved:
        hook.remove_quietly(tmp)
        raise PublishError(f"{path} exists already: a file is never overwritten; write it under another name")
    hook.log.info("Wrote %s (%d bytes)", path, len(data))
    return hook.uri_for(path)


def clean_stale_temp(
    hook: ModelStoreBase, model: str, *, older_than: timedelta = STALE_AFTER, children: Children | None = None
) -> list[str]:
    """Delete the model's ``.tmp-*`` dirs whose newest entry is older than older_than; returns their paths.

    ``children``: the model dir's listing if the caller has it (publish does). A dir still being uploaded
    to keeps changing, but a single file uploading for longer than older_than would look stale.
    """
    cutoff_ms = (time.time() - older_than.total_seconds()) * 1000
    model_dir = hook.model_dir(model)
    if children is None:
        children = hook.children(model_dir) or []
    removed = []
    for name, status in children:
        if not name.startswith(TEMP_PREFIX) or status["type"] != "DIRECTORY" or status["modificationTime"] >= cutoff_ms:
            continue
        path = f"{model_dir}/{name}"
        walked = hook.client.walk(path, status=True, ignore_missing=True)
        times = [st["modificationTime"] for _root, dirs, files in walked for _name, st in [*dirs, *files]]
        if max(times, default=status["modificationTime"]) < cutoff_ms:
            hook.log.info("Deleting stale temp dir %s", path)
            hook.client.delete(path, recursive=True)
            removed.append(path)
    return removed
