"""Paths and names a model cannot abuse: a SavedModel whose symlinks leave its directory is refused before
anything is uploaded, and model names that are the serving host's own files (or hidden) are refused everywhere
the model-name rule applies (the DAG Params' pattern included)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tfdeploy.core import names
from tfdeploy.core.errors import InvalidModelName, PublishError
from tfdeploy.core.manifest import build_manifest, open_in_tree, scan_tree
from tfdeploy.core.names import MODEL_NAME_PATTERN, SERVING_ROOT_FILES, validate_model_name
from tfdeploy.hooks import serving_host
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.hooks.serving_host import ServingHostHook

OUTSIDE = Path("/etc/hostname")


@pytest.fixture
def saved_model(tmp_path: Path) -> Path:
    """A SavedModel-like tree: saved_model.pb, variables/, assets/."""
    root = tmp_path / "export"
    (root / "variables").mkdir(parents=True)
    (root / "assets").mkdir()
    (root / "saved_model.pb").write_bytes(b"graph" * 10)
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"data")
    (root / "assets" / "vocab.txt").write_text("a\nb\n")
    return root


class NoHDFS:
    """Stands in for the HDFS client: any call fails the test (nothing may be uploaded)."""

    url = "http://127.0.0.1:1"
    calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        NoHDFS.calls.append(name)
        raise AssertionError(f"the HDFS client was used ({name}) although the export must be refused first")


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> ModelStoreHook:
    hook = ModelStoreHook()
    hook.__dict__["client"] = NoHDFS()  # the cached client
    NoHDFS.calls = []
    return hook


# --------------------------------------------------------------------------- symlinks


@pytest.mark.skipif(not OUTSIDE.is_file(), reason="needs /etc/hostname")
def test_a_link_to_a_file_outside_the_model_is_refused_before_any_upload(saved_model, store):
    built_before = build_manifest(saved_model)
    link = saved_model / "variables" / "hostname"
    link.symlink_to(OUTSIDE)

    with pytest.raises(PublishError, match=r"variables/hostname is a symlink to /etc/hostname .*outside the model"):
        store.publish(saved_model, "m", 1)
    assert NoHDFS.calls == []
    with pytest.raises(PublishError, match="outside the model directory"):
        build_manifest(saved_model)  # the export step's manifest refuses it too
    with pytest.raises(PublishError, match="outside the model directory"):  # and a manifest the caller built
        store.publish(saved_model, "m", 1, manifest=built_before)
    assert NoHDFS.calls == []


@pytest.mark.parametrize(
    "make_link",
    [
        pytest.param(lambda root, out: (root / "rel").symlink_to(os.path.relpath(out, root)), id="relative-escape"),
        pytest.param(lambda root, out: (root / "assets" / "dir").symlink_to(out.parent), id="directory-outside"),
        pytest.param(lambda root, out: (root / "gone").symlink_to(out.parent / "no-such-file"), id="dangling-outside"),
        pytest.param(
            lambda root, out: ((root / "hop").symlink_to(out), (root / "chain").symlink_to("hop")), id="chain"
        ),
    ],
)
def test_every_way_of_leaving_the_model_directory_is_refused(saved_model, tmp_path, make_link):
    outside = tmp_path / "secret.txt"
    outside.write_text("not part of any model")
    make_link(saved_model, outside)
    with pytest.raises(PublishError, match="outside the model directory"):
        scan_tree(saved_model)


def test_links_inside_the_model_to_files_are_followed_and_to_directories_refused(saved_model):
    (saved_model / "assets" / "vocab-link.txt").symlink_to("vocab.txt")
    manifest = build_manifest(saved_model)
    assert manifest["files"]["assets/vocab-link.txt"] == manifest["files"]["assets/vocab.txt"]
    (saved_model / "vars").symlink_to("variables")
    with pytest.raises(PublishError, match="vars is a symlink to a directory"):
        build_manifest(saved_model)


def test_a_model_directory_reached_through_a_link_is_fine(saved_model, tmp_path):
    (saved_model / "assets" / "vocab-link.txt").symlink_to(saved_model / "assets" / "vocab.txt")  # absolute, inside
    alias = tmp_path / "alias"
    alias.symlink_to(saved_model)
    assert build_manifest(alias)["file_count"] == 5


@pytest.mark.skipif(not OUTSIDE.is_file(), reason="needs /etc/hostname")
def test_a_link_swapped_after_the_scan_is_not_read(saved_model):
    scan_tree(saved_model)
    (saved_model / "assets" / "vocab.txt").unlink()
    (saved_model / "assets" / "vocab.txt").symlink_to(OUTSIDE)
    with pytest.raises(PublishError, match="outside the model directory"):
        open_in_tree(saved_model, "assets/vocab.txt")
    with open_in_tree(saved_model, "saved_model.pb") as fh:
        assert fh.read() == b"graph" * 10


# --------------------------------------------------------------------------- reserved model names


@pytest.mark.parametrize("name", ["models.config", "monitoring.config", ".config.lock"])
def test_the_serving_hosts_own_file_names_are_not_model_names(name, tmp_path):
    with pytest.raises(InvalidModelName, match="serving host keeps its own file of that name"):
        validate_model_name(name)
    with pytest.raises(jsonschema.ValidationError):  # the DAG Params refuse it too (same pattern)
        jsonschema.validate(name, {"type": "string", "pattern": MODEL_NAME_PATTERN})
    with pytest.raises(InvalidModelName):
        ServingHostHook(None, model_root=tmp_path, base_url="unix:///x.sock").model_dir(name)
    with pytest.raises(InvalidModelName):
        ModelStoreHook().model_dir(name)


@pytest.mark.parametrize("name", [".hidden", ".tmp-3-abcdef12", ".models.config.tmp-1", "..", "."])
def test_hidden_names_which_the_host_uses_for_temp_files_are_refused(name):
    with pytest.raises(InvalidModelName, match="invalid model name"):
        validate_model_name(name)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(name, {"type": "string", "pattern": MODEL_NAME_PATTERN})


@pytest.mark.parametrize("name", ["models", "models.config2", "my.models.config", "monitoring", "config.lock"])
def test_names_that_only_resemble_them_stay_valid(name):
    assert validate_model_name(name) == name
    jsonschema.validate(name, {"type": "string", "pattern": MODEL_NAME_PATTERN})


def test_the_serving_host_writes_exactly_the_reserved_files(tmp_path):
    """The host's file names are the constants the rule refuses (written once, in core/names.py)."""
    assert (serving_host.CONFIG_NAME, serving_host.MONITORING_NAME, serving_host.LOCK_NAME) == SERVING_ROOT_FILES
    assert SERVING_ROOT_FILES == (names.SERVING_CONFIG_NAME, names.SERVING_MONITORING_NAME, names.SERVING_LOCK_NAME)
    host = ServingHostHook(None, model_root=tmp_path, base_url="unix:///x.sock")
    from tfdeploy.core.models_config import ServedModel, build_model_config

    with host.config_lock():
        host.write_config(build_model_config([ServedModel("m", "/models/m", (1,))]))
    host._write_monitoring_config()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SERVING_ROOT_FILES)


@pytest.mark.skipif(not OUTSIDE.is_file(), reason="needs /etc/hostname")
def test_staging_a_local_savedmodel_with_a_link_out_of_it_copies_nothing(saved_model, tmp_path):
    (saved_model / "assets" / "hostname").symlink_to(OUTSIDE)
    host = ServingHostHook(None, model_root=tmp_path / "root", base_url="unix:///x.sock")
    with pytest.raises(PublishError, match="assets/hostname is a symlink to /etc/hostname"):
        host.stage_version(saved_model, "m", 1)
    assert not (tmp_path / "root" / "m").exists()
