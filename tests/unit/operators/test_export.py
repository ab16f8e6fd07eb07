"""ExportModelOperator: the release plan and publishing, with a fake model store and a fake registry.

The sources are tiny fake SavedModel directories (``saved_model.pb`` with any bytes) and ``write_warmup`` is
off, so TensorFlow is never imported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.unit.operators.conftest import MODEL, FakeModelStore, FakeRegistry, inject, make_context
from tfdeploy.core.errors import VersionConflict
from tfdeploy.core.manifest import build_manifest, encode_manifest, manifest_sha256
from tfdeploy.operators import export as export_module
from tfdeploy.operators.export import MODEL_STORE, ExportModelOperator


def saved_model(root: Path, content: bytes = b"graph-v1") -> Path:
    root.mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(content)
    (root / "variables").mkdir()
    (root / "variables" / "variables.index").write_bytes(b"index:" + content)
    return root


def digest(src: Path) -> str:
    return manifest_sha256(encode_manifest(build_manifest(src)))


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return saved_model(tmp_path / "export" / "saved_model")


@pytest.fixture
def fake_store(monkeypatch: pytest.MonkeyPatch, store: FakeModelStore) -> FakeModelStore:
    monkeypatch.setattr(export_module, "ModelStoreHook", store)
    return store


def exporter(registry: FakeRegistry, source: Path | str, **kwargs) -> ExportModelOperator:
    kwargs.setdefault("write_warmup", False)
    op = ExportModelOperator(task_id="export", model_name=MODEL, source=str(source), **kwargs)
    return inject(op, registry=registry)


def test_new_content_is_published_as_the_next_version(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path
) -> None:
    fake_store.published[(MODEL, 1)] = "older-content"
    tf_before = "tensorflow" in sys.modules
    context = make_context("export")

    result = exporter(registry, source, golden_path="/nowhere/golden.json").execute(context)

    assert result["version"] == 2
    assert result["action"] == "release"
    assert result["created"] is True
    assert result["manifest_sha256"] == digest(source) == fake_store.published[(MODEL, 2)]
    assert result["uri"] == f"webhdfs://namenode/models/{MODEL}/2"
    assert result["source"] == str(source)
    assert context["outlet_events"][MODEL_STORE].extra == {"model": MODEL, "version": 2, "uri": result["uri"]}
    assert fake_store.constructed == [(("webhdfs_default",), {"base_path": "/models"})]
    [call] = fake_store.publish_calls
    assert call["files"] == ["saved_model.pb", "variables/variables.index"]
    assert sorted(p.name for p in source.rglob("*")) == ["saved_model.pb", "variables", "variables.index"]
    assert registry.writes == []  # export plans; it writes nothing to the registry
    if not tf_before:
        assert "tensorflow" not in sys.modules


def test_rerun_reuses_the_version_and_publishes_nothing_new(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path
) -> None:
    first = exporter(registry, source).execute(make_context("export"))
    published = dict(fake_store.published)
    second = exporter(registry, source).execute(make_context("export"))

    assert second["version"] == first["version"] == 1
    assert second["manifest_sha256"] == first["manifest_sha256"]
    assert (first["created"], second["created"]) == (True, False)
    assert fake_store.published == published


def test_same_content_registered_resumes_its_release(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path
) -> None:
    fake_store.published[(MODEL, 3)] = digest(source)
    registry.seed(3, "canary")

    result = exporter(registry, source).execute(make_context("export"))

    assert (result["version"], result["action"], result["created"]) == (3, "release", False)


def test_same_content_in_production_is_a_noop(registry: FakeRegistry, fake_store: FakeModelStore, source: Path) -> None:
    fake_store.published[(MODEL, 4)] = digest(source)
    registry.seed(4, "production")

    result = exporter(registry, source).execute(make_context("export"))

    assert result["version"] == 4
    assert result["action"] == "noop"
    assert "already in production" in result["reason"]
    assert result["created"] is False


@pytest.mark.parametrize("state", ["superseded", "rejected", "archived"])
def test_same_content_that_must_not_be_released_again_is_refused_before_publishing(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path, state: str
) -> None:
    fake_store.published[(MODEL, 2)] = digest(source)
    registry.seed(2, state)
    context = make_context("export")

    with pytest.raises(AirflowFailException, match="release refused") as err:
        exporter(registry, source).execute(context)

    assert fake_store.publish_calls == []
    assert fake_store.published == {(MODEL, 2): digest(source)}
    assert MODEL_STORE not in context["outlet_events"]
    assert state in str(err.value)
    if state == "superseded":
        assert "model_rollback" in str(err.value)


def test_explicit_version(registry: FakeRegistry, fake_store: FakeModelStore, source: Path) -> None:
    fake_store.published[(MODEL, 1)] = digest(source)  # the same content elsewhere does not matter

    result = exporter(registry, source, version=7).execute(make_context("export"))

    assert (result["version"], result["created"], result["action"]) == (7, True, "release")
    assert fake_store.published[(MODEL, 7)] == digest(source)


def test_explicit_version_with_other_content_is_never_overwritten(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path
) -> None:
    fake_store.published[(MODEL, 7)] = "other-content"

    with pytest.raises(VersionConflict):
        exporter(registry, source, version=7).execute(make_context("export"))
    assert fake_store.published[(MODEL, 7)] == "other-content"


@pytest.mark.parametrize("value", ["3", 2.0, True])
def test_version_of_the_wrong_type_is_refused(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path, value: object
) -> None:
    with pytest.raises(TypeError, match="version must be int or empty"):
        exporter(registry, source, version=value).execute(make_context("export"))
    assert fake_store.publish_calls == []


@pytest.mark.parametrize("value", [0, -1])
def test_version_below_one_is_refused(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path, value: int
) -> None:
    with pytest.raises(AirflowFailException, match="positive integer"):
        exporter(registry, source, version=value).execute(make_context("export"))
    assert fake_store.publish_calls == []


def test_source_that_is_not_a_saved_model_fails(
    registry: FakeRegistry, fake_store: FakeModelStore, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()

    with pytest.raises(FileNotFoundError, match="no saved_model.pb"):
        exporter(registry, tmp_path / "empty").execute(make_context("export"))
    assert fake_store.publish_calls == []


def test_saved_model_on_hdfs_is_downloaded_then_published(
    registry: FakeRegistry, fake_store: FakeModelStore, tmp_path: Path
) -> None:
    remote = saved_model(tmp_path / "hdfs" / "incoming" / "run42", b"remote-graph")
    fake_store.remote["/incoming/run42"] = remote

    result = exporter(registry, "webhdfs://namenode/incoming/run42").execute(make_context("export"))

    assert result["version"] == 1
    assert result["manifest_sha256"] == digest(remote)
    assert fake_store.publish_calls[0]["files"] == ["saved_model.pb", "variables/variables.index"]


def test_hdfs_source_without_saved_model_fails(
    registry: FakeRegistry, fake_store: FakeModelStore, tmp_path: Path
) -> None:
    (tmp_path / "hdfs" / "junk").mkdir(parents=True)
    fake_store.remote["/junk"] = tmp_path / "hdfs" / "junk"

    with pytest.raises(FileNotFoundError, match="no saved_model.pb under"):
        exporter(registry, "hdfs:///junk").execute(make_context("export"))
    assert fake_store.publish_calls == []


def test_constructor_checks() -> None:
    with pytest.raises(ValueError, match="source is required"):
        ExportModelOperator(task_id="export", model_name=MODEL, source="")
    with pytest.raises(ValueError, match="warmup_records"):
        ExportModelOperator(task_id="export", model_name=MODEL, source="/x", warmup_records=0)
    with pytest.raises(ValueError):
        ExportModelOperator(task_id="export", model_name="../etc", source="/x")
    assert ExportModelOperator(task_id="export", model_name=MODEL, source="/x").outlets == [MODEL_STORE]
