"""The model store's pure logic (tfdeploy.core.manifest): building, encoding, parsing, checking, version names."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from tfdeploy.core.errors import InvalidModelName, ModelStoreError, PublishError
from tfdeploy.core.manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    Mismatch,
    build_manifest,
    check_listing,
    encode_manifest,
    manifest_sha256,
    numeric_versions,
    parse_manifest,
    verify_tree,
)
from tfdeploy.hooks.model_store import ModelStoreHook


@pytest.fixture
def export(tmp_path):
    root = tmp_path / "export"
    (root / "variables").mkdir(parents=True)
    (root / "assets").mkdir()  # empty: must survive
    (root / "extra" / "deep").mkdir(parents=True)  # nested empty
    (root / "saved_model.pb").write_bytes(b"graph" * 100)
    (root / "variables" / "variables.index").write_bytes(b"index")
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(b"")
    return root


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_manifest_lists_every_file_with_size_and_sha256_and_every_directory(export):
    manifest = build_manifest(export)
    assert manifest == {
        "format": MANIFEST_FORMAT,
        "directories": ["assets", "extra", "extra/deep", "variables"],
        "files": {
            "saved_model.pb": {"size": 500, "sha256": _sha(b"graph" * 100)},
            "variables/variables.data-00000-of-00001": {"size": 0, "sha256": _sha(b"")},
            "variables/variables.index": {"size": 5, "sha256": _sha(b"index")},
        },
        "file_count": 3,
        "total_bytes": 505,
    }


def test_encoding_is_canonical_so_the_checksum_identifies_the_content(export, tmp_path):
    data = encode_manifest(build_manifest(export))
    assert data.endswith(b"\n") and json.loads(data)["file_count"] == 3
    keys = list(json.loads(data))
    assert keys == sorted(keys)
    # Same content built again, in parallel, and a copy created in another order: the same bytes.
    assert encode_manifest(build_manifest(export, max_workers=4)) == data
    other = tmp_path / "other"
    (other / "extra" / "deep").mkdir(parents=True)
    (other / "assets").mkdir()
    (other / "variables").mkdir()
    (other / "variables" / "variables.index").write_bytes(b"index")
    (other / "variables" / "variables.data-00000-of-00001").write_bytes(b"")
    (other / "saved_model.pb").write_bytes(b"graph" * 100)
    assert encode_manifest(build_manifest(other)) == data
    # One byte differs: another checksum.
    (other / "variables" / "variables.index").write_bytes(b"indeX")
    assert manifest_sha256(encode_manifest(build_manifest(other))) != manifest_sha256(data)


def test_manifest_sha256_is_the_sha256_of_the_manifest_bytes(export):
    data = encode_manifest(build_manifest(export))
    assert manifest_sha256(data) == hashlib.sha256(data).hexdigest()


def test_symlinked_files_are_followed_and_symlinked_directories_refused(export, tmp_path):
    (export / "extra" / "data.bin").write_bytes(b"linked")
    os.symlink("extra/data.bin", export / "linked.bin")  # inside the model: followed (links leaving it: refused)
    assert build_manifest(export)["files"]["linked.bin"] == {"size": 6, "sha256": _sha(b"linked")}
    os.symlink(export / "variables", export / "vars_link")
    with pytest.raises(PublishError, match="vars_link is a symlink to a directory"):
        build_manifest(export)


def test_dangling_symlink_is_refused(export):
    os.symlink(export / "nowhere", export / "dangling")
    with pytest.raises(PublishError, match="dangling is a dangling symlink"):
        build_manifest(export)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: (root / MANIFEST_NAME).write_text("{}"), "reserved for the store's manifest"),
        (lambda root: (root / "a:b").write_text("x"), "HDFS does not allow ':'"),
    ],
)
def test_trees_that_cannot_be_published_are_refused_with_the_reason(export, setup, message):
    setup(export)
    with pytest.raises(PublishError, match=message):
        build_manifest(export)


def test_an_empty_or_missing_export_is_refused(tmp_path):
    (tmp_path / "empty" / "assets").mkdir(parents=True)
    with pytest.raises(PublishError, match="contains no files"):
        build_manifest(tmp_path / "empty")
    with pytest.raises(PublishError, match="is not a directory"):
        build_manifest(tmp_path / "missing")


def test_parse_manifest_round_trips_and_refuses_foreign_or_dangerous_manifests(export):
    manifest = build_manifest(export)
    data = encode_manifest(manifest)
    assert parse_manifest(data, where="x") == manifest
    assert encode_manifest(parse_manifest(data, where="x")) == data  # re-encoding a read manifest: same checksum
    for bad in (
        b"not json",
        b"[]",
        json.dumps({**manifest, "format": "other/9"}).encode(),
        json.dumps({**manifest, "files": {"../../etc/passwd": {"size": 1, "sha256": "0" * 64}}}).encode(),
        json.dumps({**manifest, "directories": ["/abs"]}).encode(),
        json.dumps({**manifest, "files": {"a": {"size": "1", "sha256": "0" * 64}}}).encode(),
        json.dumps({**manifest, "file_count": 99}).encode(),
        json.dumps({**manifest, "total_bytes": 1}).encode(),
        json.dumps({**manifest, "directories": [*manifest["directories"], MANIFEST_NAME]}).encode(),
    ):
        with pytest.raises(ModelStoreError, match="is not a valid tfdeploy manifest"):
            parse_manifest(bad, where="/models/m/1/tfdeploy_manifest.json")


def test_check_listing_reports_missing_extra_resized_and_retyped_entries(export):
    manifest = build_manifest(export)
    listing = {rel: ("DIRECTORY", 0) for rel in manifest["directories"]}
    listing.update({rel: ("FILE", e["size"]) for rel, e in manifest["files"].items()})
    listing[MANIFEST_NAME] = ("FILE", 123)
    assert check_listing(manifest, listing, 123) == []
    listing["saved_model.pb"] = ("FILE", 499)
    del listing["variables/variables.index"]
    listing["stray.txt"] = ("FILE", 1)
    listing["assets"] = ("FILE", 0)
    assert check_listing(manifest, listing, 123) == [
        Mismatch("assets", "is a file, expected a directory"),
        Mismatch("saved_model.pb", "size 499, expected 500"),
        Mismatch("stray.txt", "not in the manifest"),
        Mismatch("variables/variables.index", "missing"),
    ]


def test_verify_tree_checks_content_not_only_sizes(export):
    manifest = build_manifest(export)
    (export / MANIFEST_NAME).write_bytes(encode_manifest(manifest))  # the manifest itself is not "extra"
    assert verify_tree(manifest, export) == []
    (export / "variables" / "variables.index").write_bytes(b"INDEX")  # same size
    (export / "assets").rmdir()
    problems = verify_tree(manifest, export)
    assert [p.path for p in problems] == ["assets", "variables/variables.index"]
    assert "expected size 5" in problems[1].problem
    (export / "stray").mkdir()
    (export / "stray" / "x.bin").write_bytes(b"x")
    (export / "saved_model.pb").write_bytes(b"short")
    assert verify_tree(manifest, export) == [
        Mismatch("assets", "directory missing"),
        Mismatch("saved_model.pb", "size 5, expected size 500"),
        Mismatch("stray", "not in the manifest"),
        Mismatch("stray/x.bin", "not in the manifest"),
        problems[1],
    ]


def test_numeric_versions_are_directories_named_by_digits_only():
    children = [
        ("1", {"type": "DIRECTORY"}),
        ("007", {"type": "DIRECTORY"}),
        ("3", {"type": "DIRECTORY"}),
        ("42", {"type": "FILE"}),
        (".tmp-9-abcdef12", {"type": "DIRECTORY"}),
        ("12a", {"type": "DIRECTORY"}),
        ("\u0661\u0662", {"type": "DIRECTORY"}),  # Arabic-Indic digits: not a TF Serving version
        ("-4", {"type": "DIRECTORY"}),
        ("9223372036854775808", {"type": "DIRECTORY"}),  # beyond int64: not a version
        ("0", {"type": "DIRECTORY"}),
    ]
    assert numeric_versions(children) == [0, 1, 3, 7]


def test_paths_and_uri_come_from_base_path_and_the_connection(settings):
    hook = ModelStoreHook(base_path="/srv/models/")
    assert hook.model_dir("half_plus_two") == "/srv/models/half_plus_two"
    assert hook.version_dir("half_plus_two", 12) == "/srv/models/half_plus_two/12"
    assert hook.uri("half_plus_two", 12) == f"webhdfs://127.0.0.1:{settings.webhdfs_port}/srv/models/half_plus_two/12"
    assert ModelStoreHook().version_dir("m", 1) == "/models/m/1"


def test_bad_names_versions_and_settings_are_refused():
    hook = ModelStoreHook()
    for name in ("../etc", "a/b", "", "has space"):
        with pytest.raises(InvalidModelName):
            hook.model_dir(name)
    for version in (-1, True, "3", 1.0):
        with pytest.raises(ValueError, match="non-negative integer"):
            hook.version_dir("m", version)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="absolute"):
        ModelStoreHook(base_path="models")
    for workers in (0, 11):
        with pytest.raises(ValueError, match="max_workers must be between 1 and 10"):
            ModelStoreHook(max_workers=workers)
    assert ModelStoreHook(max_workers=10).max_workers == 10
