"""ServingHostHook without a Docker engine: staging verified file by file against a manifest, models.config
written atomically and read back, the shared-disk check, and the Connection (base URL, TLS)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tfdeploy.core.errors import ChecksumMismatch, InvalidModelName, SharedDiskRequired, StagingConflict
from tfdeploy.core.manifest import MANIFEST_NAME, build_manifest, encode_manifest
from tfdeploy.core.models_config import ServedModel, build_model_config
from tfdeploy.hooks.serving_host import ServingHostHook

TESTDATA = Path(__file__).resolve().parents[2] / "data" / "tfserving-testdata"
HP_V1 = TESTDATA / "saved_model_half_plus_two_2_versions" / "00000123"
HP_V2 = TESTDATA / "saved_model_half_plus_two_2_versions" / "00000124"
BAD = TESTDATA / "bad_half_plus_two" / "00000123"
LOCAL = "unix:///var/run/docker.sock"


def host_at(root: Path, url: str = LOCAL) -> ServingHostHook:
    return ServingHostHook(None, model_root=str(root), base_url=url)


def with_manifest(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / MANIFEST_NAME).write_bytes(encode_manifest(build_manifest(dst)))
    return dst


def test_staging_is_atomic_idempotent_and_refuses_conflicts(tmp_path):
    host = host_at(tmp_path / "root")
    assert host.stage_version(HP_V1, "m", 5) == "/models/m" == host.container_base_path("m")
    staged = tmp_path / "root" / "m" / "5"
    assert (staged / "saved_model.pb").read_bytes() == (HP_V1 / "saved_model.pb").read_bytes()
    assert [p.name for p in (tmp_path / "root" / "m").iterdir()] == ["5"]  # no temp dirs left
    host.stage_version(HP_V1, "m", 5)  # same content: no-op
    host.stage_version(HP_V2, "m", 5)  # TF Serving's 124 is a byte-identical copy of 123: no-op too
    with pytest.raises(StagingConflict, match="already staged .* with different content"):
        host.stage_version(BAD, "m", 5)
    same_sizes = tmp_path / "same-sizes"
    shutil.copytree(HP_V1, same_sizes)
    foo = same_sizes / "assets" / "foo.txt"
    foo.write_bytes(bytes([foo.read_bytes()[0] ^ 1]) + foo.read_bytes()[1:])  # same size, other SHA-256
    with pytest.raises(StagingConflict, match="assets/foo.txt"):
        host.stage_version(same_sizes, "m", 5)
    # '005' is version 5 for TF Serving: another spelling of a staged version is a conflict
    (tmp_path / "root" / "m" / "005").mkdir()
    with pytest.raises(StagingConflict, match="005"):
        host.stage_version(HP_V1, "m", 5)
    (tmp_path / "root" / "m" / "005").rmdir()
    host.remove_staged("m", 5)
    host.remove_staged("m", 5)  # absent: no-op
    assert list((tmp_path / "root" / "m").iterdir()) == []
    with pytest.raises(InvalidModelName):
        host.stage_version(HP_V1, "../escape", 1)
    with pytest.raises(FileNotFoundError):
        host.stage_version(tmp_path / "missing", "m", 1)


def test_a_source_with_a_manifest_is_staged_only_if_every_file_matches_it(tmp_path):
    host = host_at(tmp_path / "root")
    good = with_manifest(HP_V1, tmp_path / "good")
    host.stage_version(good, "m", 1)
    assert (tmp_path / "root" / "m" / "1" / MANIFEST_NAME).read_bytes() == (good / MANIFEST_NAME).read_bytes()
    # a file swapped for other bytes after the manifest was made: refused, naming it, and nothing staged
    swapped = with_manifest(HP_V1, tmp_path / "swapped")
    (swapped / "assets" / "foo.txt").write_bytes((swapped / "assets" / "foo.txt").read_bytes()[::-1])
    with pytest.raises(ChecksumMismatch) as err:
        host.stage_version(swapped, "m", 2)
    assert err.value.path == "assets/foo.txt" and "assets/foo.txt" in str(err.value)
    assert sorted(p.name for p in (tmp_path / "root" / "m").iterdir()) == ["1"]
    # a manifest that is not one is refused before anything is copied
    fake = tmp_path / "fake"
    shutil.copytree(HP_V1, fake)
    (fake / MANIFEST_NAME).write_text(json.dumps({"sha256": "x"}))
    with pytest.raises(Exception, match="not a valid tfdeploy manifest"):
        host.stage_version(fake, "m", 3)
    assert sorted(p.name for p in (tmp_path / "root" / "m").iterdir()) == ["1"]


def test_write_config_is_atomic_and_reads_back(tmp_path):
    host = host_at(tmp_path / "root")
    assert host.read_config() == []
    models = [ServedModel("m", "/models/m", (1, 2), {"stable": 1})]
    assert host.write_config(build_model_config(models)) == "/models/models.config"
    assert host.read_config() == models
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["models.config"]
    with host.config_lock():  # the lock file lives beside the config, hidden
        pass
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == [".config.lock", "models.config"]


@pytest.mark.parametrize(
    "url", ["tcp://10.1.2.3:2375", "tcp://docker.example.com:2376", "ssh://deploy@serving-1", "https://10.0.0.5:2376"]
)
def test_check_shared_disk_refuses_a_remote_daemon(tmp_path, url):
    host = host_at(tmp_path, url)
    with pytest.raises(SharedDiskRequired) as err:
        host.check_shared_disk()
    assert url in str(err.value) and "is remote" in str(err.value)
    assert "Run the task on the serving host" in str(err.value)
    with pytest.raises(SharedDiskRequired):
        host.stage_version(HP_V1, "m", 1)


@pytest.mark.parametrize("url", [LOCAL, "tcp://127.0.0.1:2375", "tcp://localhost:2375", "tcp://[::1]:2375"])
def test_check_shared_disk_accepts_a_local_daemon(tmp_path, url):
    host_at(tmp_path, url).check_shared_disk()


def test_the_docker_engine_and_tls_come_from_the_connection(tmp_path, monkeypatch):
    ca, cert, key = (tmp_path / name for name in ("ca.pem", "c.pem", "k.pem"))
    for path in (ca, cert, key):
        path.write_text("PEM")  # docker's TLSConfig checks that the files exist
    monkeypatch.setenv(
        "AIRFLOW_CONN_SERVING_HOST_EDGE",
        json.dumps(
            {
                "conn_type": "tfdeploy_serving_host",
                "host": "tcp://127.0.0.1:2376",
                "extra": {"tls_ca_cert": str(ca), "tls_client_cert": str(cert), "tls_client_key": str(key)},
            }
        ),
    )
    host = ServingHostHook("serving_host_edge", model_root=tmp_path)
    assert host.base_url == "tcp://127.0.0.1:2376"
    assert host.tls.ca_cert == str(ca) and host.tls.cert == (str(cert), str(key)) and host.tls.verify
    assert ServingHostHook("serving_host_edge", model_root=tmp_path, base_url=LOCAL).base_url == LOCAL
    monkeypatch.setenv("AIRFLOW_CONN_SERVING_HOST_PLAIN", json.dumps({"conn_type": "x", "host": LOCAL}))
    assert ServingHostHook("serving_host_plain", model_root=tmp_path).tls is None
    with pytest.raises(ValueError, match="serving_host_conn_id"):
        ServingHostHook(None, model_root=tmp_path)
