"""The export step's other sources (a .keras file, a SavedModel already on HDFS) against real HDFS, and
the DAG's Params refusing bad conf over the REST API."""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import pytest

from tfdeploy.airflow_client import AirflowApiError
from tfdeploy.hooks.model_store import ModelStoreHook
from tfdeploy.operators.export import WARMUP, ExportModelOperator

TESTDATA = Path(__file__).resolve().parents[3] / "tests" / "data" / "tfserving-testdata"


def run_export(**kwargs) -> tuple[dict, dict]:
    op = ExportModelOperator(task_id="export", **kwargs)
    events: dict = defaultdict(SimpleNamespace)
    out = op.execute({"outlet_events": events})
    return out, events


@pytest.fixture
def model(hdfs_ready):
    name = f"export-{uuid.uuid4().hex[:8]}"
    yield name
    store = ModelStoreHook()
    store.client.delete(store.model_dir(name), recursive=True)


def test_a_keras_file_is_exported_with_a_serving_signature(model, tmp_path):
    import numpy as np
    import tensorflow as tf

    keras_model = tf.keras.Sequential([tf.keras.Input(shape=(2,), name="inputs"), tf.keras.layers.Dense(1)])
    path = tmp_path / "model.keras"
    keras_model.save(path)
    golden = tmp_path / "golden.json"
    golden.write_text(json.dumps({"inputs": [[1.0, 2.0], [3.0, 4.0]], "labels": [0.0, 0.0]}))
    out, events = run_export(model_name=model, source=str(path), golden_path=str(golden))
    assert out["version"] == 1 and out["created"] is True
    assert events[next(iter(events))].extra == {"model": model, "version": 1, "uri": out["uri"]}
    fetched = ModelStoreHook().fetch(model, 1, tmp_path / "back")
    loaded = tf.saved_model.load(str(fetched))
    assert "serving_default" in loaded.signatures
    x = np.array([[1.0, 2.0]], dtype=np.float32)
    served = loaded.signatures["serving_default"](inputs=tf.constant(x))
    np.testing.assert_allclose(next(iter(served.values())).numpy(), keras_model(x).numpy(), rtol=1e-5)
    assert (fetched / WARMUP).stat().st_size > 0  # TF Serving's warmup file from the golden inputs


def test_a_savedmodel_on_hdfs_and_content_already_published_reuses_its_version(model, tmp_path, settings):
    store = ModelStoreHook()
    source = f"/user/airflow/{model}-src"
    store.client.upload(source, str(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"))
    uri = f"webhdfs://127.0.0.1:{settings.webhdfs_port}{source}"
    try:
        out, _ = run_export(model_name=model, source=uri, write_warmup=False)
        assert (out["version"], out["created"]) == (1, True)
        again, _ = run_export(model_name=model, source=uri, write_warmup=False)
        assert (again["version"], again["created"]) == (1, False)  # a retry does not mint a new version
        assert store.versions(model) == [1]
    finally:
        store.client.delete(source, recursive=True)


def test_bad_sources_and_versions_are_refused_clearly(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a SavedModel directory"):
        run_export(model_name=model, source=str(tmp_path))
    with pytest.raises(TypeError, match="version must be int or empty"):
        run_export(
            model_name=model,
            source=str(TESTDATA / "saved_model_half_plus_two_cpu" / "00000123"),
            version="abc",
            write_warmup=False,
        )
    with pytest.raises(Exception, match="invalid model name"):
        ExportModelOperator(task_id="export", model_name="../etc", source="/x")


@pytest.mark.parametrize(
    ("conf", "fragment"),
    [({"model_name": "bad name"}, "model_name"), ({"metric": "f1"}, "metric"), ({"keep_versions": 0}, "keep_versions")],
)
def test_model_deploy_params_refuse_bad_conf(airflow, conf, fragment):
    airflow.wait_for_dag("model_deploy")
    with pytest.raises(AirflowApiError, match="400") as err:
        airflow.trigger("model_deploy", conf=conf)
    assert fragment in str(err.value)
