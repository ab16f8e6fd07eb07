"""Fetching: a version into ``<local_dir>/<version>``, verified while downloading; any HDFS tree as it is."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hdfs import HdfsError

from tfdeploy.core import manifest as mf
from tfdeploy.core.errors import ChecksumMismatch, ModelStoreError
from tfdeploy.core.manifest import CHUNK_SIZE, MANIFEST_NAME, TEMP_PREFIX, Manifest, Mismatch, fsync_dir
from tfdeploy.core.names import check_version, parse_version_dir
from tfdeploy.hooks.model_store.client import retry_datanode_failures

if TYPE_CHECKING:
    from tfdeploy.hooks.model_store.listing import ModelStoreBase


def fetch_version(
    hook: ModelStoreBase,
    model: str,
    version: int,
    local_dir: str | os.PathLike[str],
    *,
    expected_manifest_sha256: str | None,
    durable: bool,
) -> Path:
    if expected_manifest_sha256 is not None and not mf.is_sha256(expected_manifest_sha256):
        raise ChecksumMismatch(
            f"cannot verify {model} version {version}: the recorded manifest checksum is "
            f"{expected_manifest_sha256!r}, not a sha256 (a registry record without one?). Nothing was fetched; "
            "register the version with the manifest_sha256 its export reported, then retry",
            path=MANIFEST_NAME,
        )
    src = hook._require_version_dir(model, check_version(version))
    where = f"{src}/{MANIFEST_NAME}"
    data = hook.read_manifest_bytes(src, model, version)
    sha = mf.manifest_sha256(data)
    if expected_manifest_sha256 is not None and sha != expected_manifest_sha256:
        raise ChecksumMismatch(
            f"{where} has sha256 {sha}, expected {expected_manifest_sha256} (the recorded checksum): the stored "
            "version is not the one recorded; do not deploy it, check the registry and the store",
            path=MANIFEST_NAME,
        )
    manifest = mf.parse_manifest(data, where=where)
    parent = Path(local_dir)
    parent.mkdir(parents=True, exist_ok=True)
    _refuse_aliases(parent, version)
    final = parent / str(version)
    if final.exists():
        return _keep_verified(hook, final, manifest, data)

    tmp = parent / f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}"  # not a version for TF Serving
    files: dict[str, dict[str, Any]] = manifest["files"]
    hook.log.info("Fetching %s (%d files, %d bytes) into %s", src, len(files), manifest["total_bytes"], final)
    try:
        tmp.mkdir()
        for rel in manifest["directories"]:
            (tmp / rel).mkdir(parents=True, exist_ok=True)

        def download(rel: str) -> None:
            retry_datanode_failures(
                hook.client,
                hook.log,
                f"Downloading {src}/{rel}",
                lambda _attempt: _download_verified(hook, f"{src}/{rel}", tmp / rel, rel, files[rel], durable=durable),
            )

        mf.map_parallel(download, sorted(files), hook.max_workers)
        _write(tmp / MANIFEST_NAME, data, durable=durable)
        if durable:
            for rel in sorted(manifest["directories"], key=lambda r: r.count("/"), reverse=True):
                fsync_dir(tmp / rel)
            fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # fetched by someone else meanwhile
            return _keep_verified(hook, final, manifest, data)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if durable:
        fsync_dir(parent)
    return final


def _refuse_aliases(parent: Path, version: int) -> None:
    """TF Serving reads ``007`` as version 7: another spelling of the same number would be a second copy."""
    for child in sorted(parent.iterdir()):
        if child.name != str(version) and parse_version_dir(child.name) == version:
            raise ModelStoreError(
                f"{child} already is version {version} for TF Serving (it reads directory names as integers); "
                f"remove it (after unloading it) before fetching version {version} into {parent}"
            )


def _keep_verified(hook: ModelStoreBase, final: Path, manifest: Manifest, data: bytes) -> Path:
    """An existing ``<version>`` dir is kept only if it matches the manifest in full."""
    problems = mf.verify_tree(manifest, final)
    local_manifest = final / MANIFEST_NAME
    if not local_manifest.is_file():
        problems.insert(0, Mismatch(MANIFEST_NAME, "missing"))
    elif local_manifest.read_bytes() != data:
        problems.insert(0, Mismatch(MANIFEST_NAME, "differs from the store's"))
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise ChecksumMismatch(
            f"{final} already exists and differs from the store ({problems[0]}{more}); delete it (unload it "
            "first if it is served) and fetch again",
            path=problems[0].path,
        )
    hook.log.info("%s already holds this version (verified); not downloading again", final)
    return final


def _download_verified(
    hook: ModelStoreBase, remote: str, dst: Path, rel: str, entry: dict[str, Any], *, durable: bool
) -> None:
    """Download one file, hashing it on the way; ChecksumMismatch (naming rel) if it is not the manifest's."""
    digest = hashlib.sha256()
    size = 0
    try:
        with hook.client.read(remote, chunk_size=CHUNK_SIZE) as chunks, open(dst, "wb") as fh:
            for chunk in chunks:
                size += len(chunk)
                if size > entry["size"]:
                    break  # bigger than the manifest says: no need to read the rest
                digest.update(chunk)
                fh.write(chunk)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
    except HdfsError as exc:
        if exc.exception == "FileNotFoundException":
            raise ChecksumMismatch(
                f"{rel} is listed in the manifest but {remote} is missing from HDFS: the stored version is "
                "damaged; do not deploy it, re-publish the model under a new version",
                path=rel,
            ) from None
        raise ModelStoreError(f"downloading {remote} failed: {exc}; retry when HDFS is healthy") from exc
    if size != entry["size"] or digest.hexdigest() != entry["sha256"]:
        got = f"size over {entry['size']}" if size > entry["size"] else f"size {size} sha256 {digest.hexdigest()}"
        raise ChecksumMismatch(
            f"{remote} does not match the manifest (got {got}, expected size {entry['size']} sha256 "
            f"{entry['sha256']}): {rel} is corrupt in the store; do not deploy it, re-publish the model under "
            "a new version",
            path=rel,
        )


def download_tree(hook: ModelStoreBase, hdfs_path: str, local_dir: str | os.PathLike[str]) -> Path:
    """Download the HDFS directory hdfs_path's contents into local_dir (or the file, as local_dir/<name>).

    local_dir must be absent or empty; on failure it is emptied again. Every file's size is checked
    against the listing (there is no manifest to check contents against).
    """
    dest = Path(local_dir)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ModelStoreError(f"cannot download {hdfs_path} into {dest}: it exists and is not an empty directory")
    root = hdfs_path.rstrip("/") or "/"
    status = hook.client.status(root, strict=False)
    if status is None:
        raise ModelStoreError(f"{root} does not exist on HDFS ({hook.uri_for(root)}): check the source path")
    if status["type"] == "FILE":
        name = root.rsplit("/", 1)[-1]
        listing, base = {name: ("FILE", status["length"])}, root.rsplit("/", 1)[0]
    else:
        listing, base = hook.walk_listing(root), root
    for rel in listing:
        mf.check_rel_path(rel)
    hook.log.info("Downloading %s (%d entries) into %s", root, len(listing), dest)
    created = not dest.exists()
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for rel, (kind, _length) in sorted(listing.items()):
            if kind == "DIRECTORY":
                (dest / rel).mkdir(parents=True, exist_ok=True)

        def download(rel: str) -> None:
            size = 0
            try:
                with hook.client.read(f"{base}/{rel}", chunk_size=CHUNK_SIZE) as chunks, open(dest / rel, "wb") as fh:
                    for chunk in chunks:
                        size += len(chunk)
                        fh.write(chunk)
            except HdfsError as exc:
                raise ModelStoreError(f"downloading {base}/{rel} failed: {exc}; retry when HDFS is healthy") from exc
            if size != listing[rel][1]:
                raise ModelStoreError(f"{base}/{rel}: got {size} bytes, listed {listing[rel][1]}; retry")

        files = sorted(rel for rel, (kind, _length) in listing.items() if kind == "FILE")
        mf.map_parallel(download, files, hook.max_workers)
    except BaseException:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for child in dest.iterdir():
                shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)
        raise
    return dest


def _write(path: Path, data: bytes, *, durable: bool) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
