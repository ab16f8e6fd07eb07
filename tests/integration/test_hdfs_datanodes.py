"""HDFS with two DataNodes and replication 2 (README "HDFS"), against the real stack.

Both DataNodes serve; every block of a published version has two live replicas; a DataNode killed (SIGKILL, by
PID) in the middle of a publish leaves HDFS consistent: the publish completes (the broken upload is written
again) or, with no DataNode left, fails cleanly; a version is never visible half-written; fsck finds no corrupt
or missing block; and the NameNode restores the second replica once the DataNode is back. Every test starts
again whatever DataNode it killed, so the tests after it find both.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
import time
import uuid
from pathlib import Path

import pytest
from datanode_kill import MidUploadKill, restart_stopped_datanodes

import stack
from tfdeploy.core import manifest as mf
from tfdeploy.core.errors import ModelStoreError
from tfdeploy.hooks.model_store import ModelStoreHook

HALF_PLUS_TWO = (
    Path(__file__).resolve().parents[1] / "data" / "tfserving-testdata" / "saved_model_half_plus_two_cpu" / "00000123"
)
SHARD = 5 * (1 << 19)  # 2.5 MiB: three 1 MiB chunks of the upload, so a kill lands inside the file


@pytest.fixture
def datanodes(settings, hdfs_ready):
    """Both DataNodes serving before the test; whichever the test killed is started again after it."""
    restart_stopped_datanodes(settings)
    for dn in stack.datanodes(settings):
        assert stack.datanode_serving(settings, dn), f"DataNode {dn.name} does not serve: run `make up`"
    yield stack.datanodes(settings)
    restart_stopped_datanodes(settings)


@pytest.fixture
def store(datanodes):
    return ModelStoreHook("webhdfs_default", max_workers=2)


@pytest.fixture
def model(store):
    name = f"test-dn-{uuid.uuid4().hex[:8]}"
    yield name
    ModelStoreHook("webhdfs_default").remove_quietly(store.model_dir(name))


@pytest.fixture
def export(tmp_path) -> Path:
    """A SavedModel of about 8 MB: TF Serving's half_plus_two plus three 2.5 MiB asset files."""
    root = tmp_path / "export"
    shutil.copytree(HALF_PLUS_TWO, root, copy_function=shutil.copyfile)
    for dirpath, _dirs, _files in os.walk(root):
        os.chmod(dirpath, 0o755)
    for name in ("shard-a.bin", "shard-b.bin", "shard-c.bin"):
        (root / "assets" / name).write_bytes(os.urandom(SHARD))
    return root


def fsck(settings, path: str) -> str:
    report = stack.hdfs_fsck(settings, path, blocks=True)
    assert f"The filesystem under path '{path}' is HEALTHY" in report, report[-2000:]
    assert re.search(r"Corrupt blocks:\s+0\b", report) and re.search(r"Missing blocks:\s+0\b", report), report[-2000:]
    return report


def live_replicas(report: str) -> list[int]:
    """Live replicas of every block an fsck report lists (``... Live_repl=2 ...``)."""
    return [int(n) for n in re.findall(r"Live_repl=(\d+)", report)]


def wait_for(what: str, check, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(1.0)


class VersionWatcher(threading.Thread):
    """Lists the model dir every 50 ms while a publish runs: a numeric version dir, once visible, must hold
    exactly what the manifest lists, at its sizes (never half-written)."""

    def __init__(self, model: str, manifest: mf.Manifest) -> None:
        super().__init__(daemon=True)
        self.store = ModelStoreHook("webhdfs_default")  # its own client: listings only, at the NameNode
        self.model, self.manifest = model, manifest
        self.manifest_size = len(mf.encode_manifest(manifest))
        self.stop = threading.Event()
        self.listings = 0
        self.seen_complete = 0
        self.problems: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for name in [n for n, _ in self.store.children(self.store.model_dir(self.model)) or []]:
                if name.isdigit():
                    listing = self.store.walk_listing(f"{self.store.model_dir(self.model)}/{name}")
                    found = mf.check_listing(self.manifest, listing, self.manifest_size)
                    self.problems += [f"{name}: {p}" for p in found]
                    self.seen_complete += not found
            self.listings += 1
            time.sleep(0.05)

    def __enter__(self) -> VersionWatcher:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(timeout=30)


def publish_in_thread(store: ModelStoreHook, export: Path, model: str, manifest: mf.Manifest) -> dict:
    outcome: dict = {}

    def run() -> None:
        t0 = time.monotonic()
        try:
            outcome["result"] = store.publish(export, model, 1, manifest=manifest)
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            outcome["error"] = exc
        outcome["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=run, name="publish")
    thread.start()
    thread.join(timeout=300)
    assert not thread.is_alive(), "the publish did not finish within 300 s"
    return outcome


def test_both_datanodes_serve(settings, datanodes):
    assert len(datanodes) == 2
    live = stack.namenode_live_nodes(settings)
    assert {dn.xfer_address for dn in datanodes} <= set(live)
    assert stack._namenode_state(settings)["NumLiveDataNodes"] >= 2
    assert len({dn.data_dir for dn in datanodes}) == 2 and all(dn.data_dir.is_dir() for dn in datanodes)


def test_a_published_version_has_two_replicas_of_every_block(settings, store, model, export):
    store.publish(export, model, 1)
    version_dir = store.version_dir(model, 1)
    for root, _dirs, files in store.client.walk(version_dir, status=True):
        for name, status in files:
            assert status["replication"] == 2, f"{root[0]}/{name}"
    report = fsck(settings, version_dir)
    replicas = live_replicas(report)
    assert len(replicas) >= 8 and set(replicas) == {2}  # 7 files + the manifest, each at least one block
    # ... on the two DataNodes
    assert {dn.xfer_address for dn in stack.datanodes(settings)} <= set(re.findall(r"127\.0\.0\.1:\d+", report))


@pytest.mark.parametrize("which", ["receiving", "other"])
def test_a_datanode_killed_mid_export_leaves_hdfs_consistent(settings, store, model, export, tmp_path, which):
    """The 3rd file's upload (one has finished by then: two at a time) is held after its first MiB and a
    DataNode is killed: the one it streams through (its connection breaks: the file is written again) or the
    other (the block pipeline drops it and goes on)."""
    manifest = mf.build_manifest(export)
    with VersionWatcher(model, manifest) as watcher, MidUploadKill(settings, store, nth=3, which=which) as kill:
        outcome = publish_in_thread(store, export, model, manifest)
    assert kill.killed and stack.running_pid(settings, kill.killed[0]) is None, "no DataNode was killed"
    assert (which == "receiving") == (kill.killed == [kill.receiving])

    # the publish completed, and no one ever saw the version incomplete
    assert "error" not in outcome, f"the publish failed: {outcome.get('error')!r}"
    assert outcome["result"].created is True
    assert watcher.problems == [] and watcher.listings > 0
    version_dir = store.version_dir(model, 1)
    assert [name for name, _ in store.children(store.model_dir(model))] == ["1"]  # no temp dir left
    assert mf.check_listing(manifest, store.walk_listing(version_dir), len(mf.encode_manifest(manifest))) == []
    # readable and byte-identical with one DataNode dead: fetch checks every file against the manifest
    local = ModelStoreHook("webhdfs_default").fetch(
        model, 1, tmp_path / "fetched", expected_manifest_sha256=mf.manifest_sha256(mf.encode_manifest(manifest))
    )
    assert mf.verify_tree(manifest, local) == []
    assert 1 in live_replicas(fsck(settings, version_dir))  # written while one DataNode was dead: 1 replica

    # back to two replicas of every block once the DataNode is back
    kill.restart()
    wait_for("two live replicas of every block", lambda: set(live_replicas(fsck(settings, version_dir))) == {2})


def test_with_both_datanodes_killed_mid_export_the_publish_fails_cleanly(settings, store, model, export):
    manifest = mf.build_manifest(export)
    with VersionWatcher(model, manifest) as watcher, MidUploadKill(settings, store, nth=3, which="both") as kill:
        outcome = publish_in_thread(store, export, model, manifest)
    assert len(kill.killed) == 2

    error = outcome.get("error")
    assert isinstance(error, ModelStoreError), f"expected a clean failure, got {outcome!r}"
    assert "retry" in str(error)
    assert watcher.problems == [] and watcher.seen_complete == 0
    assert store.children(store.model_dir(model)) == []  # no version, no temp dir
    kill.restart()
    fsck(settings, store.model_dir(model))
