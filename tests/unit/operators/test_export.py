"""ExportModelOperator: the release plan and publishing, with a fake model store and a fake registry.

The sources are tiny fake SavedModel directories (``saved_model.pb`` with any bytes) and ``write_warmup`` is
off, so TensorFlow is never imported. Then the steps that run model code (a .keras export, warmup records)
with a fake sandbox (the real one: tests/integration/test_sandbox.py)."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.unit.operators.conftest import MODEL, FakeModelStore, FakeRegistry, inject, make_context
from tfdeploy.core.errors import GoldenPathNotAllowed, PublishError, VersionConflict
from tfdeploy.core.manifest import build_manifest, encode_manifest, manifest_sha256
from tfdeploy.hooks.sandbox import SandboxRun
from tfdeploy.operators import export as export_module
from tfdeploy.operators.export import MODEL_STORE, ExportModelOperator
from tfdeploy.settings import get_settings


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


# --------------------------------------------------------------------------- model code runs in the sandbox only


class FakeSandbox:
    """``SandboxHook.export`` as the export step sees it: writes what the real job writes (``saved_model/`` from a
    .keras file, ``tf_serving_warmup_requests``) into a fresh directory of ``work_dir``; ``skip`` answers that the
    model has no such signature."""

    def __init__(self, skip: str | None = None) -> None:
        self.skip = skip
        self.calls: list[dict] = []

    def export(self, *, work_dir: Path, keras_file=None, warmup=None, **source):
        content = Path(keras_file).read_bytes() if keras_file is not None else None
        self.calls.append(
            {"keras_file": keras_file, "content": content, "saved_model": source.get("saved_model"), "warmup": warmup}
        )
        out = work_dir / f"sandbox-out-{len(self.calls)}"
        out.mkdir()
        result: dict = {"exported": keras_file is not None, "warmup": None}
        if keras_file is not None:
            saved_model(out / "saved_model", b"exported:" + Path(keras_file).read_bytes())
        if warmup is not None:
            if self.skip:
                result["warmup"] = {"skipped": self.skip}
            else:
                (out / "tf_serving_warmup_requests").write_bytes(json.dumps(warmup).encode())
                result["warmup"] = {"written": 3, "signature_name": warmup["signature_name"]}
        run = SandboxRun(what="export", container="tfdeploy-sandbox-x", exit_code=0, seconds=1.0, logs="")
        return result, out, run


@pytest.fixture
def golden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A golden file in ``tmp_path/golden``, the only root besides the example models'."""
    settings = replace(get_settings(), stack="dev", golden_roots_setting=str(tmp_path / "golden"))
    monkeypatch.setattr(export_module, "get_settings", lambda: settings)
    path = tmp_path / "golden" / "golden.json"
    path.parent.mkdir()
    rows = [[float(i)] for i in range(20)]
    path.write_text(json.dumps({"signature_name": "predict", "inputs": {"x": rows}, "labels": list(range(20))}))
    return path


def sandboxed(registry: FakeRegistry, sandbox: FakeSandbox, source: Path, **kwargs) -> ExportModelOperator:
    op = exporter(registry, source, **kwargs)
    op.__dict__["sandbox"] = sandbox
    return op


def published_files(store: FakeModelStore) -> list[str]:
    return store.publish_calls[-1]["files"]


def test_a_keras_file_is_exported_in_the_sandbox_from_a_copy_with_its_warmup(
    registry: FakeRegistry, fake_store: FakeModelStore, tmp_path: Path, golden: Path
) -> None:
    keras = tmp_path / "model.keras"
    keras.write_bytes(b"keras-zip")
    sandbox = FakeSandbox()
    tf_before = "tensorflow" in sys.modules

    result = sandboxed(registry, sandbox, keras, golden_path=str(golden), write_warmup=True, warmup_records=3).execute(
        make_context("export")
    )

    [call] = sandbox.calls
    assert call["keras_file"] != keras and call["content"] == b"keras-zip"  # a copy, not the source
    assert call["warmup"] == {"signature_name": "predict", "inputs": {"x": [[0.0], [1.0], [2.0]]}}
    assert published_files(fake_store) == [
        "assets.extra/tf_serving_warmup_requests",
        "saved_model.pb",
        "variables/variables.index",
    ]
    assert result["version"] == 1 and result["created"] is True
    if not tf_before:
        assert "tensorflow" not in sys.modules  # nothing of the model was loaded here


def test_warmup_records_for_a_saved_model_are_written_in_the_sandbox(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path, golden: Path
) -> None:
    sandbox = FakeSandbox()

    sandboxed(registry, sandbox, source, golden_path=str(golden), write_warmup=True).execute(make_context("export"))

    [call] = sandbox.calls
    assert call["keras_file"] is None and call["saved_model"].name == "saved_model"
    assert call["saved_model"] != source  # the sandbox reads our copy
    assert len(call["warmup"]["inputs"]["x"]) == 10
    assert "assets.extra/tf_serving_warmup_requests" in published_files(fake_store)
    assert not (source / "assets.extra").exists()  # the source is never modified


def test_a_model_without_the_warmup_signature_is_published_without_warmup(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path, golden: Path
) -> None:
    sandbox = FakeSandbox(skip="the model has no 'predict' signature")

    sandboxed(registry, sandbox, source, golden_path=str(golden), write_warmup=True).execute(make_context("export"))

    assert published_files(fake_store) == ["saved_model.pb", "variables/variables.index"]


def test_a_golden_file_outside_the_roots_is_refused_before_publishing(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path, golden: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text(golden.read_text())
    sandbox = FakeSandbox()

    with pytest.raises(GoldenPathNotAllowed, match=r"outside the directories golden files may be read from"):
        sandboxed(registry, sandbox, source, golden_path=str(outside), write_warmup=True).execute(
            make_context("export")
        )
    assert sandbox.calls == [] and fake_store.publish_calls == []


def test_a_link_out_of_the_source_directory_is_refused_before_copying(
    registry: FakeRegistry, fake_store: FakeModelStore, source: Path
) -> None:
    (source / "variables" / "stolen").symlink_to("/etc/hostname")

    with pytest.raises(PublishError, match=r"stolen is a symlink to /etc/hostname .*outside the model directory"):
        exporter(registry, source).execute(make_context("export"))
    assert fake_store.publish_calls == []
