"""The model store writes a file again when the DataNode it streams through dies (connection broken mid-upload),
and only then: whole, from the start of the file, checked against the manifest again, replacing what the broken
attempt left; after the last pause the error propagates as HDFS' (never as "cannot read" the local file).

An in-memory WebHDFS client stands in; tests/integration/test_hdfs_datanodes.py kills real DataNodes."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
import requests
from hdfs import HdfsError

from tfdeploy.core import manifest as mf
from tfdeploy.core.errors import PublishError
from tfdeploy.hooks.model_store import client as client_module
from tfdeploy.hooks.model_store import publish

MIB = 1 << 20
NAMENODE = "http://127.0.0.1:9870"
DATANODE = "http://127.0.0.1:9864"


def broken(kind: type[requests.RequestException] = requests.ConnectionError, server: str = DATANODE) -> Exception:
    """What requests raises when a connection to ``server`` breaks (the request names the server)."""
    request = requests.Request("PUT", f"{server}/webhdfs/v1/models/m/f?op=CREATE").prepare()
    return kind("Connection reset by peer", request=request)


class BreakingClient:
    """Keeps written files in memory; ``breaks[path]`` uploads of ``path`` break after their first chunk."""

    url = NAMENODE

    def __init__(self, breaks: dict[str, int] | None = None, error: Exception | None = None) -> None:
        self.files: dict[str, bytes] = {}
        self.attempts: list[tuple[str, bool]] = []  # (path, overwrite)
        self.breaks = dict(breaks or {})
        self.error = error or broken()
        self.lock = threading.Lock()

    def makedirs(self, path: str) -> None:
        pass

    def write(self, path: str, data: bytes | Iterable[bytes], overwrite: bool = False) -> None:
        with self.lock:
            self.attempts.append((path, overwrite))
            if path in self.files and not overwrite:
                raise HdfsError(f"{path} already exists", exception="FileAlreadyExistsException")
            breaking = self.breaks.get(path, 0) > 0
            if breaking:
                self.breaks[path] -= 1
        chunks = [data] if isinstance(data, bytes) else data
        received = b""
        for chunk in chunks:
            received += chunk
            if breaking:
                with self.lock:
                    self.files[path] = received  # the partial file a dead DataNode leaves
                raise self.error
        with self.lock:
            self.files[path] = received


class FakeStore:
    """What publish's staging uses of ModelStoreHook: its client, parallelism, log and listings."""

    def __init__(self, client: BreakingClient) -> None:
        self.client = client
        self.max_workers = 2
        self.log = logging.getLogger("test.model_store")

    def walk_listing(self, root: str) -> dict[str, tuple[str, int]]:
        listing: dict[str, tuple[str, int]] = {}
        for path, data in self.client.files.items():
            rel = path.removeprefix(f"{root}/")
            parts = rel.split("/")
            for i in range(1, len(parts)):
                listing["/".join(parts[:i])] = ("DIRECTORY", 0)
            listing[rel] = ("FILE", len(data))
        return listing


@pytest.fixture
def pauses(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", slept.append)
    return slept


@pytest.fixture
def export(tmp_path: Path) -> Path:
    root = tmp_path / "export"
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"graph" * 1000)
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(bytes(range(256)) * (10 * MIB // 256))
    return root


def stage(store: FakeStore, export: Path) -> mf.Manifest:
    manifest = mf.build_manifest(export)
    publish._stage(store, export, "/models/m/.tmp-1-x", manifest, mf.encode_manifest(manifest))  # type: ignore[arg-type]
    return manifest


def test_an_upload_broken_mid_file_is_written_again_whole(export, pauses):
    big = "/models/m/.tmp-1-x/variables/variables.data-00000-of-00001"
    client = BreakingClient(breaks={big: 2})
    stage(FakeStore(client), export)

    assert [overwrite for path, overwrite in client.attempts if path == big] == [False, True, True]
    assert client.files[big] == (export / "variables" / "variables.data-00000-of-00001").read_bytes()
    assert pauses == list(client_module.DATANODE_RETRY_DELAYS[:2])
    # the other files were written once
    assert [p for p, _ in client.attempts].count("/models/m/.tmp-1-x/saved_model.pb") == 1


def test_an_upload_that_keeps_breaking_fails_as_hdfs_unavailable_after_every_pause(export, pauses):
    big = "/models/m/.tmp-1-x/variables/variables.data-00000-of-00001"
    client = BreakingClient(breaks={big: 99})
    with pytest.raises(requests.ConnectionError):  # ModelStoreHook.publish names the server (hdfs_call)
        stage(FakeStore(client), export)
    assert pauses == list(client_module.DATANODE_RETRY_DELAYS)
    assert [p for p, _ in client.attempts].count(big) == len(client_module.DATANODE_RETRY_DELAYS) + 1


def test_an_hdfs_refusal_is_not_retried(export, pauses):
    big = "/models/m/.tmp-1-x/variables/variables.data-00000-of-00001"
    refusal = HdfsError("Permission denied: user=airflow", exception="AccessControlException")
    client = BreakingClient(breaks={big: 1}, error=refusal)
    with pytest.raises(PublishError, match="Permission denied"):
        stage(FakeStore(client), export)
    assert pauses == [] and [p for p, _ in client.attempts].count(big) == 1


@pytest.mark.parametrize(
    "error",
    [broken(server=NAMENODE), broken(requests.ConnectTimeout), broken(requests.ReadTimeout)],
    ids=["namenode-refused", "connect-timeout", "read-timeout"],
)
def test_a_namenode_failure_or_a_timeout_is_not_retried(export, pauses, error):
    big = "/models/m/.tmp-1-x/variables/variables.data-00000-of-00001"
    client = BreakingClient(breaks={big: 1}, error=error)
    with pytest.raises(type(error)):
        stage(FakeStore(client), export)
    assert pauses == [] and [p for p, _ in client.attempts].count(big) == 1


def test_a_file_changed_between_attempts_still_fails_the_check(export, pauses, monkeypatch):
    big = export / "variables" / "variables.data-00000-of-00001"
    client = BreakingClient(breaks={"/models/m/.tmp-1-x/variables/variables.data-00000-of-00001": 1})
    manifest = mf.build_manifest(export)
    real_sleep = client_module.time.sleep

    def change_then_pause(seconds: float) -> None:
        big.write_bytes(b"\0" * big.stat().st_size)  # same size, other bytes
        real_sleep(0)

    monkeypatch.setattr(client_module.time, "sleep", change_then_pause)
    with pytest.raises(PublishError, match="changed while it was published"):
        publish._stage(FakeStore(client), export, "/models/m/.tmp-1-x", manifest, mf.encode_manifest(manifest))  # type: ignore[arg-type]
