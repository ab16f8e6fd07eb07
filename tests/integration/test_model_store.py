"""The HDFS model store against the real NameNode and DataNode: atomic, idempotent, verified publishing
and fetching."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from hdfs.util import HdfsError

from tfdeploy.core import manifest as mf
from tfdeploy.core.errors import ChecksumMismatch, ModelNotFound, ModelStoreError, PublishError, VersionConflict
from tfdeploy.core.manifest import MANIFEST_NAME, build_manifest, encode_manifest, manifest_sha256
from tfdeploy.hooks.model_store import ModelStoreHook, PublishResult
from tfdeploy.hooks.model_store import publish as publish_module

TESTDATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "tfserving-testdata"
HALF_PLUS_TWO = TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"


@pytest.fixture
def store(hdfs_ready):
    return ModelStoreHook("webhdfs_default")


@pytest.fixture
def model(store):
    name = f"test-ms-{uuid.uuid4().hex[:8]}"
    yield name
    store.client.delete(store.model_dir(name), recursive=True)


@pytest.fixture
def export(tmp_path) -> Path:
    """A writable copy of TF Serving's half_plus_two SavedModel (saved_model.pb, variables/, assets/)."""
    assert HALF_PLUS_TWO.is_dir(), f"test data missing: {HALF_PLUS_TWO}"
    root = tmp_path / "export"
    shutil.copytree(HALF_PLUS_TWO, root, copy_function=shutil.copyfile)
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o755)
    return root


def tree(root: Path) -> tuple[dict[str, bytes], set[str]]:
    """(files {relpath: bytes}, directories) under root, without the store's manifest."""
    files, dirs = {}, set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            dirs.add((Path(dirpath) / name).relative_to(root).as_posix())
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != MANIFEST_NAME:
                files[rel] = (Path(dirpath) / name).read_bytes()
    return files, dirs


def hdfs_read(store: ModelStoreHook, path: str) -> bytes:
    with store.client.read(path) as reader:
        return reader.read()


def children(store: ModelStoreHook, model: str) -> list[str]:
    return sorted(store.client.list(store.model_dir(model)))


def test_publish_then_fetch_is_byte_identical(store, model, export, tmp_path, settings):
    result = store.publish(export, model, 1)

    assert result.created is True
    assert (result.model, result.version) == (model, 1)
    assert result.uri == f"webhdfs://127.0.0.1:{settings.webhdfs_port}/models/{model}/1" == store.uri(model, 1)
    files, dirs = tree(export)
    assert (result.files, result.bytes) == (len(files), sum(len(b) for b in files.values())) == (4, 12318)
    manifest_bytes = hdfs_read(store, f"/models/{model}/1/{MANIFEST_NAME}")
    assert result.manifest_sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    assert store.read_manifest(model, 1)["directories"] == ["assets", "variables"]
    assert children(store, model) == ["1"]  # no temp dir left beside it
    assert store.versions(model) == [1] and store.next_version(model) == 2

    local = store.fetch(model, 1, tmp_path / "serving" / model)
    assert local == tmp_path / "serving" / model / "1"
    assert tree(local) == (files, dirs)
    assert (local / MANIFEST_NAME).read_bytes() == manifest_bytes
    assert sorted(os.listdir(local.parent)) == ["1"]  # no local temp dir either
    # Fetching again keeps the verified copy.
    assert store.fetch(model, 1, local.parent, expected_manifest_sha256=result.manifest_sha256) == local


def test_a_durable_fetch_fsyncs_every_file_and_directory(store, model, export, tmp_path, monkeypatch):
    store.publish(export, model, 1)
    real_fsync, synced = os.fsync, []

    def counting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    local = store.fetch(model, 1, tmp_path / "serving", durable=True)
    monkeypatch.undo()
    names = {Path(p).name for p in synced}
    # 4 files + manifest, assets/ + variables/ + the version dir, then the parent after the rename.
    assert {"saved_model.pb", "variables.index", "foo.txt", MANIFEST_NAME, "assets", "variables"} <= names
    assert str(tmp_path / "serving") == synced[-1]
    assert len(synced) == 9
    assert tree(local) == tree(export)


def test_empty_directories_survive_the_round_trip(store, model, export, tmp_path):
    (export / "assets" / "foo.txt").unlink()
    (export / "assets.extra" / "deep").mkdir(parents=True)
    store.publish(export, model, 1)
    listing = dict(store.client.list(store.version_dir(model, 1), status=True))
    assert listing["assets"]["type"] == "DIRECTORY" and listing["assets.extra"]["type"] == "DIRECTORY"
    local = store.fetch(model, 1, tmp_path / "out")
    assert tree(local) == tree(export)
    assert (local / "assets").is_dir() and (local / "assets.extra" / "deep").is_dir()


def test_republishing_the_same_content_changes_nothing(store, model, export):
    first = store.publish(export, model, 1)
    before = store.client.status(store.version_dir(model, 1))
    time.sleep(0.05)
    again = store.publish(export, model, 1)
    assert again.created is False
    assert again.manifest_sha256 == first.manifest_sha256 and again.uri == first.uri
    assert store.client.status(store.version_dir(model, 1))["modificationTime"] == before["modificationTime"]
    assert children(store, model) == ["1"]


def test_different_content_is_a_conflict_and_the_original_stays(store, model, export, tmp_path):
    first = store.publish(export, model, 1)
    (export / "assets" / "foo.txt").write_text("changed asset\n")
    with pytest.raises(VersionConflict) as excinfo:
        store.publish(export, model, 1)
    conflict = excinfo.value
    assert conflict.existing_sha256 == first.manifest_sha256
    assert conflict.new_sha256 != first.manifest_sha256
    assert first.manifest_sha256 in str(conflict) and conflict.new_sha256 in str(conflict)
    assert "new version" in str(conflict)
    assert children(store, model) == ["1"]
    local = store.fetch(model, 1, tmp_path / "out", expected_manifest_sha256=first.manifest_sha256)
    assert (local / "assets" / "foo.txt").read_bytes() == (HALF_PLUS_TWO / "assets" / "foo.txt").read_bytes()
    # The changed content publishes fine as the next version.
    assert store.publish(export, model, store.next_version(model)).version == 2


def test_publish_with_the_callers_manifest_hashes_nothing_again(store, model, export, monkeypatch):
    manifest = build_manifest(export)
    real_hash, hashed = mf.hash_stream, []
    monkeypatch.setattr(mf, "hash_stream", lambda fh: hashed.append(fh.name) or real_hash(fh))
    assert build_manifest(export) == manifest and len(hashed) == 4  # the counter sees build_manifest's hashing
    hashed.clear()

    result = store.publish(export, model, 1, manifest=manifest)
    assert hashed == []
    assert result.created is True and result.manifest_sha256 == manifest_sha256(encode_manifest(manifest))
    assert hdfs_read(store, f"{store.version_dir(model, 1)}/{MANIFEST_NAME}") == encode_manifest(manifest)
    assert store.publish(export, model, 1, manifest=manifest).created is False
    assert hashed == []

    # A manifest of another tree is refused before anything is uploaded.
    (export / "assets" / "extra.txt").write_text("not in the manifest\n")
    with pytest.raises(PublishError, match=r"does not describe .*assets/extra\.txt"):
        store.publish(export, model, 2, manifest=manifest)
    with pytest.raises(PublishError, match="not a valid tfdeploy manifest"):
        store.publish(export, model, 2, manifest={**manifest, "file_count": 3})
    assert children(store, model) == ["1"]


def test_a_file_that_disappears_fails_the_publish_and_leaves_no_temp_dir(store, model, export, monkeypatch):
    real_build = mf.build_manifest

    def build_then_delete(local_dir, **kwargs):
        manifest = real_build(local_dir, **kwargs)
        (export / "variables" / "variables.index").unlink()
        return manifest

    monkeypatch.setattr(mf, "build_manifest", build_then_delete)
    with pytest.raises(PublishError, match=r"cannot read .*variables\.index"):
        store.publish(export, model, 1)
    assert children(store, model) == []
    assert store.versions(model) == []


def test_a_file_changed_after_its_manifest_was_built_fails_the_publish(store, model, export):
    manifest = build_manifest(export)
    path = export / "saved_model.pb"
    path.write_bytes(b"\0" * path.stat().st_size)  # same size, other bytes
    with pytest.raises(PublishError, match=r"saved_model\.pb changed while it was published"):
        store.publish(export, model, 1, manifest=manifest)
    assert children(store, model) == []


def test_an_hdfs_failure_mid_upload_leaves_no_temp_dir(store, model, export, monkeypatch):
    real_write = store.client.write
    lock, calls = threading.Lock(), []

    def failing_write(path, **kwargs):
        with lock:
            calls.append(path)
            n = len(calls)
        if n == 3:
            raise HdfsError("injected DataNode failure", exception="IOException")
        return real_write(path, **kwargs)

    monkeypatch.setattr(store.client, "write", failing_write)
    with pytest.raises(PublishError, match="injected DataNode failure"):
        store.publish(export, model, 1)
    assert children(store, model) == []


def test_rename2_refuses_an_existing_target_and_never_nests(store, model):
    client = store.client
    base = store.model_dir(model)
    client.write(f"{base}/src/a.txt", data=b"a")
    client.write(f"{base}/dst/b.txt", data=b"b")
    client.makedirs(f"{base}/empty")

    assert publish_module.rename2(store, f"{base}/src", f"{base}/dst") is False
    assert publish_module.rename2(store, f"{base}/src", f"{base}/empty") is False  # even an empty one
    assert sorted(client.list(f"{base}/dst")) == ["b.txt"]
    assert client.list(f"{base}/empty") == []
    assert sorted(client.list(f"{base}/src")) == ["a.txt"]

    assert publish_module.rename2(store, f"{base}/src", f"{base}/new") is True
    assert sorted(client.list(base)) == ["dst", "empty", "new"]
    assert client.list(f"{base}/new") == ["a.txt"]
    with pytest.raises(HdfsError, match="FileNotFoundException|not found") as excinfo:
        publish_module.rename2(store, f"{base}/gone", f"{base}/other")
    assert excinfo.value.exception == "FileNotFoundException"


def test_losing_the_rename_race_compares_with_the_winner(store, model, export, tmp_path, monkeypatch):
    """The version appears between the existence check and the rename: rename2 refuses, nothing nests."""
    winner = store.publish(export, model, 1)
    winner_listing = sorted(store.client.list(store.version_dir(model, 1)))
    monkeypatch.setattr(store, "_existing_version_dir", lambda *args, **kwargs: None)

    same = store.publish(export, model, 1)
    assert same.created is False and same.manifest_sha256 == winner.manifest_sha256

    (export / "saved_model.pb").write_bytes(b"another model")
    with pytest.raises(VersionConflict) as excinfo:
        store.publish(export, model, 1)
    assert excinfo.value.existing_sha256 == winner.manifest_sha256
    assert sorted(store.client.list(store.version_dir(model, 1))) == winner_listing  # nothing nested inside
    assert children(store, model) == ["1"]
    monkeypatch.undo()
    fetched = tree(store.fetch(model, 1, tmp_path / "out"))[0]
    assert fetched["saved_model.pb"] == (HALF_PLUS_TWO / "saved_model.pb").read_bytes()


def test_concurrent_publishers_of_one_version(store, model, export, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(export, other)
    (other / "assets" / "foo.txt").write_text("other content\n")
    sources = [export, export, export, other]
    barrier = threading.Barrier(len(sources))
    outcomes: list[object] = [None] * len(sources)

    def run(i: int) -> None:
        hook = ModelStoreHook("webhdfs_default")
        hook.client  # noqa: B018 - connect before the start line
        barrier.wait()
        try:
            outcomes[i] = hook.publish(sources[i], model, 1)
        except VersionConflict as exc:
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(sources))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)

    created = [o for o in outcomes if isinstance(o, PublishResult) and o.created]
    assert len(created) == 1, outcomes
    winner_sha = created[0].manifest_sha256
    for o in outcomes:
        if isinstance(o, PublishResult):
            assert o.manifest_sha256 == winner_sha
        else:
            assert isinstance(o, VersionConflict) and o.existing_sha256 == winner_sha
    # Exactly the losers with the other content conflicted.
    winner_is_other = outcomes[3] is created[0]
    conflicts = [i for i, o in enumerate(outcomes) if isinstance(o, VersionConflict)]
    assert conflicts == ([0, 1, 2] if winner_is_other else [3])
    assert children(store, model) == ["1"]
    assert store.read_manifest(model, 1)["file_count"] == 4


def test_a_corrupted_file_on_hdfs_fails_the_fetch_naming_it_and_leaves_nothing(store, model, export, tmp_path):
    store.publish(export, model, 1)
    target = f"{store.version_dir(model, 1)}/variables/variables.index"
    size = store.client.status(target)["length"]
    store.client.write(target, data=b"\xff" * size, overwrite=True)  # same size, other bytes

    with pytest.raises(ChecksumMismatch, match=r"variables/variables\.index does not match the manifest") as excinfo:
        store.fetch(model, 1, tmp_path / "out")
    assert excinfo.value.path == "variables/variables.index"
    assert os.listdir(tmp_path / "out") == []  # no partial version, no temp dir

    store.client.delete(f"{store.version_dir(model, 1)}/assets/foo.txt")
    with pytest.raises(ChecksumMismatch) as excinfo:
        store.fetch(model, 1, tmp_path / "out")
    assert excinfo.value.path in ("assets/foo.txt", "variables/variables.index")
    assert excinfo.value.path in str(excinfo.value)
    assert os.listdir(tmp_path / "out") == []


def test_a_file_swapped_with_another_files_content_fails_the_fetch_naming_it(store, model, export, tmp_path):
    store.publish(export, model, 1)
    version_dir = store.version_dir(model, 1)
    index = hdfs_read(store, f"{version_dir}/variables/variables.index")
    store.client.write(f"{version_dir}/assets/foo.txt", data=index, overwrite=True)  # another file's bytes

    with pytest.raises(ChecksumMismatch, match=r"assets/foo\.txt is corrupt") as excinfo:
        store.fetch(model, 1, tmp_path / "serving", durable=True)
    assert excinfo.value.path == "assets/foo.txt"
    assert os.listdir(tmp_path / "serving") == []


def test_fetch_refuses_a_different_recorded_checksum_and_a_tampered_local_copy(store, model, export, tmp_path):
    result = store.publish(export, model, 1)
    with pytest.raises(ChecksumMismatch, match=f"{MANIFEST_NAME} has sha256 .* expected 0000") as excinfo:
        store.fetch(model, 1, tmp_path / "out", expected_manifest_sha256="0" * 64)
    assert excinfo.value.path == MANIFEST_NAME
    assert not (tmp_path / "out").exists()  # not even local_dir was created
    local = store.fetch(model, 1, tmp_path / "out", expected_manifest_sha256=result.manifest_sha256)
    (local / "saved_model.pb").write_bytes(b"tampered")
    with pytest.raises(ChecksumMismatch, match="delete it .* and fetch again") as excinfo:
        store.fetch(model, 1, tmp_path / "out")
    assert excinfo.value.path == "saved_model.pb"
    (local / "saved_model.pb").write_bytes((export / "saved_model.pb").read_bytes())
    (local / MANIFEST_NAME).unlink()
    with pytest.raises(ChecksumMismatch, match=f"{MANIFEST_NAME}: missing") as excinfo:
        store.fetch(model, 1, tmp_path / "out")
    assert excinfo.value.path == MANIFEST_NAME


def test_fetch_refuses_a_directory_that_already_is_the_version_for_tf_serving(store, model, export, tmp_path):
    store.publish(export, model, 7)
    serving = tmp_path / "serving"
    (serving / "007").mkdir(parents=True)
    (serving / ".tmp-7-deadbeef").mkdir()  # not a version: no problem
    with pytest.raises(ModelStoreError, match=r"007 already is version 7 for TF Serving"):
        store.fetch(model, 7, serving)
    assert sorted(os.listdir(serving)) == [".tmp-7-deadbeef", "007"]
    (serving / "007").rmdir()
    assert store.fetch(model, 7, serving) == serving / "7"


def test_find_version_matches_the_manifest_checksum_newest_first(store, model, export, tmp_path):
    first = store.publish(export, model, 1)
    other = tmp_path / "other"
    shutil.copytree(export, other)
    (other / "assets" / "foo.txt").write_text("other content\n")
    second = store.publish(other, model, 2)
    store.client.makedirs(store.version_dir(model, 3))  # a version dir the store did not write: no match

    assert store.find_version(model, first.manifest_sha256) == 1
    assert store.find_version(model, second.manifest_sha256) == 2
    assert store.find_version(model, "0" * 64) is None
    assert store.find_version(f"{model}-none", first.manifest_sha256) is None
    assert store.publish(export, model, 4).created is True  # the same content again, as a newer version
    assert store.find_version(model, first.manifest_sha256) == 4


def test_download_tree_copies_any_hdfs_directory(store, model, export, tmp_path):
    source = f"{store.model_dir(model)}/incoming"
    store.client.upload(source, str(export))
    store.client.makedirs(f"{source}/empty")

    local = store.download_tree(source, tmp_path / "dl")
    assert local == tmp_path / "dl"
    files, dirs = tree(local)
    assert files == tree(export)[0] and dirs == tree(export)[1] | {"empty"}

    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(ModelStoreError, match="not an empty directory"):
        store.download_tree(source, tmp_path / "busy")
    with pytest.raises(ModelStoreError, match="does not exist on HDFS"):
        store.download_tree(f"{source}-missing", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
    single = store.download_tree(f"{source}/saved_model.pb", tmp_path / "single")
    assert os.listdir(single) == ["saved_model.pb"]


def test_versions_ignore_non_numeric_siblings(store, model, export):
    assert store.versions(model) == [] and store.next_version(model) == 1
    base = store.model_dir(model)
    for name in ("1", "3", "007", ".tmp-9-abcdef12", "foo", "12a"):
        store.client.makedirs(f"{base}/{name}")
    store.client.write(f"{base}/42", data=b"a file, not a version")
    assert store.versions(model) == [1, 3, 7]
    assert store.next_version(model) == 8
    # "007" holds version 7: publishing 7 must not create a second "7" beside it.
    with pytest.raises(VersionConflict, match=f"{base}/007"):
        store.publish(export, model, 7)
    assert "7" not in children(store, model)
    assert store.publish(export, model, 8).uri.endswith(f"{base}/8")


def test_missing_versions_raise_model_not_found(store, model, export, tmp_path):
    with pytest.raises(ModelNotFound, match="publish it first"):
        store.read_manifest(model, 1)
    with pytest.raises(ModelNotFound):
        store.fetch(model, 1, tmp_path / "out")
    store.client.makedirs(store.version_dir(model, 2))  # a version dir the store did not write
    with pytest.raises(ModelNotFound, match="not published by the model store"):
        store.read_manifest(model, 2)
    assert store.delete_version(model, 5) is False
    store.publish(export, model, 1)
    assert store.delete_version(model, 1) is True
    assert store.versions(model) == [2]


def test_fifty_small_files_publish_in_parallel(store, model, tmp_path):
    src = tmp_path / "many"
    for i in range(50):
        path = src / f"shard-{i % 5}" / f"part-{i:03d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(100 + i * 37))
    result = ModelStoreHook("webhdfs_default", max_workers=10).publish(src, model, 1)
    assert (result.files, result.created) == (50, True)
    assert len(store.read_manifest(model, 1)["files"]) == 50
    assert tree(store.fetch(model, 1, tmp_path / "out")) == tree(src)
    assert children(store, model) == ["1"]


def _age(store: ModelStoreHook, paths: list[str], hours: float) -> None:
    then = int((time.time() - hours * 3600) * 1000)
    for path in paths:
        store.client.set_times(path, modification_time=then, access_time=then)


def test_clean_stale_temp_removes_only_old_temp_dirs(store, model):
    base = store.model_dir(model)
    old, fresh = f"{base}/.tmp-1-0ld0ld00", f"{base}/.tmp-2-fe5h0000"
    store.client.write(f"{old}/saved_model.pb", data=b"abandoned")
    store.client.write(f"{fresh}/saved_model.pb", data=b"in progress")
    store.client.makedirs(f"{base}/3")
    _age(store, [f"{old}/saved_model.pb", old], hours=2)

    assert store.clean_stale_temp(model, older_than=timedelta(hours=1)) == [old]
    assert children(store, model) == [".tmp-2-fe5h0000", "3"]


def test_publish_removes_temp_dirs_a_crashed_publisher_left(store, model, export):
    base = store.model_dir(model)
    crashed, recent, busy = f"{base}/.tmp-1-cra5hed0", f"{base}/.tmp-1-rece0000", f"{base}/.tmp-1-b0sy0000"
    for path in (crashed, recent, busy):
        store.client.write(f"{path}/variables/variables.index", data=b"partial")
    _age(store, [f"{crashed}/variables/variables.index", f"{crashed}/variables", crashed], hours=25)
    _age(store, [f"{recent}/variables/variables.index", f"{recent}/variables", recent], hours=2)
    _age(store, [busy], hours=25)  # its newest entry is fresh: still being written

    store.publish(export, model, 1)
    assert children(store, model) == [".tmp-1-b0sy0000", ".tmp-1-rece0000", "1"]


# --------------------------------------------------------------------------- staging onto a serving host


@pytest.fixture
def staging(tmp_path):
    """A serving target's stable pool whose model root is a temp dir (staging needs no container or server)."""
    from tfdeploy.hooks.serving_host import ServingHostHook
    from tfdeploy.hooks.tfserving import TFServingHook
    from tfdeploy.services.serving_target import ServingTargetService
    from tfdeploy.services.targets import ServingTarget

    root = tmp_path / "serving"
    target = ServingTarget("t", "image", "tfserving-unused", root, "unused", "unused", "unused")
    host = ServingHostHook(None, model_root=root, base_url="unix:///var/run/docker.sock")
    serving = TFServingHook(None, grpc_target="127.0.0.1:1", rest_url="http://127.0.0.1:1")
    return ServingTargetService(target, host=host, serving=serving)


def staged(staging, model: str) -> list[str]:
    model_dir = staging.host.model_dir(model)
    return sorted(os.listdir(model_dir)) if model_dir.exists() else []


def test_staging_verifies_every_file_against_the_recorded_manifest(store, model, export, staging):
    result = store.publish(export, model, 1)
    assert staging.stage(store, model, 1, manifest_sha256=result.manifest_sha256) == f"/models/{model}"
    files, dirs = tree(staging.host.version_dir(model, 1))
    assert (files, dirs) == tree(export)
    assert staged(staging, model) == ["1"]  # no temp dir left
    staging.stage(store, model, 1, manifest_sha256=result.manifest_sha256)  # staged and identical: kept


def test_staging_a_file_changed_on_hdfs_fails_naming_it_and_stages_nothing(store, model, export, staging):
    result = store.publish(export, model, 1)
    target = f"{store.version_dir(model, 1)}/variables/variables.index"
    store.client.write(target, data=b"\x00" * store.client.status(target)["length"], overwrite=True)

    with pytest.raises(ChecksumMismatch, match=r"variables/variables\.index is corrupt") as excinfo:
        staging.stage(store, model, 1, manifest_sha256=result.manifest_sha256)
    assert excinfo.value.path == "variables/variables.index"
    assert staged(staging, model) == []  # no version directory the server could load, no temp dir


def test_staging_a_version_whose_manifest_was_swapped_fails_naming_the_manifest(store, model, export, staging):
    """Changing a file AND its manifest entry on HDFS passes the file checks; the recorded checksum catches it."""
    result = store.publish(export, model, 1)
    version_dir = store.version_dir(model, 1)
    forged = b"another graph"
    manifest = store.read_manifest(model, 1)
    manifest["files"]["saved_model.pb"] = {"size": len(forged), "sha256": hashlib.sha256(forged).hexdigest()}
    manifest["total_bytes"] = sum(entry["size"] for entry in manifest["files"].values())
    store.client.write(f"{version_dir}/saved_model.pb", data=forged, overwrite=True)
    store.client.write(f"{version_dir}/{MANIFEST_NAME}", data=encode_manifest(manifest), overwrite=True)

    with pytest.raises(
        ChecksumMismatch, match=f"{MANIFEST_NAME} has sha256 .* expected {result.manifest_sha256}"
    ) as ei:
        staging.stage(store, model, 1, manifest_sha256=result.manifest_sha256)
    assert ei.value.path == MANIFEST_NAME
    assert staged(staging, model) == []


def test_staging_without_a_recorded_checksum_is_refused(store, model, export, staging):
    store.publish(export, model, 1)
    for recorded in ("", "not-a-sha"):
        with pytest.raises(ChecksumMismatch, match="not a sha256 .*register the version with the manifest_sha256"):
            staging.stage(store, model, 1, manifest_sha256=recorded)
        assert staged(staging, model) == []
