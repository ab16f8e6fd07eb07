"""WebHDFS round trips against the real NameNode and DataNode, through the HDFS provider's hook."""

from __future__ import annotations

import hashlib
import os
import uuid

import pytest
from airflow.providers.apache.hdfs.hooks.webhdfs import WebHDFSHook


@pytest.fixture
def hdfs_client(hdfs_ready):
    client = WebHDFSHook(webhdfs_conn_id="webhdfs_default").get_conn()
    base = f"/user/airflow/test-{uuid.uuid4().hex[:8]}"
    client.makedirs(base)
    yield client, base
    client.delete(base, recursive=True)


def _sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def test_hook_connects_as_the_configured_user(hdfs_client):
    client, base = hdfs_client
    assert client.status(base)["owner"] == "airflow"


def test_small_file_round_trip(hdfs_client):
    client, base = hdfs_client
    client.write(f"{base}/hello.txt", data=b"hello hdfs\n")
    with client.read(f"{base}/hello.txt") as reader:
        assert reader.read() == b"hello hdfs\n"
    assert client.list(base) == ["hello.txt"]


def test_100mb_file_round_trip_keeps_its_checksum(hdfs_client, tmp_path):
    client, base = hdfs_client
    src = tmp_path / "big.bin"
    with open(src, "wb") as fh:
        for _ in range(100):
            fh.write(os.urandom(1 << 20))
    hook = WebHDFSHook(webhdfs_conn_id="webhdfs_default")
    hook.load_file(str(src), f"{base}/big.bin", overwrite=False)
    assert client.status(f"{base}/big.bin")["length"] == 100 * (1 << 20)
    dst = tmp_path / "back.bin"
    client.download(f"{base}/big.bin", str(dst))
    assert _sha256_file(dst) == _sha256_file(src)


def test_write_without_overwrite_refuses_an_existing_file(hdfs_client):
    from hdfs.util import HdfsError

    client, base = hdfs_client
    client.write(f"{base}/once.txt", data=b"first")
    with pytest.raises(HdfsError, match="already exists"):
        client.write(f"{base}/once.txt", data=b"second")
    with client.read(f"{base}/once.txt") as reader:
        assert reader.read() == b"first"
