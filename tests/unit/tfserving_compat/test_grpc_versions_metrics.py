"""Issue 10 (gRPC, versions, metrics, loading): each test cites the TF Serving source it follows.

TF Serving source: github.com/tensorflow/serving (tensorflow_serving/...), read at commit 9d981c5c.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "include"))

from tfserving_compat import config as cfg  # noqa: E402
from tfserving_compat import manager as mgr  # noqa: E402
from tfserving_compat.errors import ServingError  # noqa: E402
from tfserving_compat.metrics import Metrics  # noqa: E402

HP2 = ROOT / "tests" / "data" / "tfserving-testdata" / "saved_model_half_plus_two_cpu" / "00000123"


@pytest.fixture(scope="module")
def servable():
    from tfserving_compat.servable import Servable

    s = Servable("hp2", 123, str(HP2))
    yield s
    s.close()


def _predict_request(signature: str = "", **inputs):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    req = predict_pb2.PredictRequest()
    req.model_spec.name = "hp2"
    req.model_spec.signature_name = signature
    for alias, value in inputs.items():
        req.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return req


# ---------------------------------------------------------------- item 2: typed fields vs tensor_content


def test_predict_outputs_are_typed_fields_by_default(servable):
    """predict_util.cc RunPredict -> PostProcessPredictionResult with kAsProtoField (Tensor::AsProtoField)."""
    from tfserving_compat.requests import run_predict

    resp = run_predict(servable, _predict_request(x=np.array([[1.0], [2.0]], np.float32)))
    out = resp.outputs["y"]
    assert out.tensor_content == b""
    assert list(out.float_val) == [2.5, 3.0]
    assert [d.size for d in out.tensor_shape.dim] == [2, 1]


def test_predict_outputs_tensor_content_with_the_flag(servable):
    """server.cc: enable_serialization_as_tensor_content -> kAsProtoContent (AsProtoTensorContent)."""
    from tfserving_compat.requests import run_predict

    resp = run_predict(servable, _predict_request(x=np.array([[1.0]], np.float32)), tensor_content=True)
    out = resp.outputs["y"]
    assert out.tensor_content == np.array([2.5], np.float32).tobytes()
    assert list(out.float_val) == []


@pytest.mark.parametrize(
    ("value", "field", "expected"),
    [
        (np.array([1, 2], np.int64), "int64_val", [1, 2]),
        (np.array([1, 2], np.int32), "int_val", [1, 2]),
        (np.array([1.5], np.float64), "double_val", [1.5]),
        (np.array([True, False]), "bool_val", [True, False]),
        (np.array([b"a", b"bc"], object), "string_val", [b"a", b"bc"]),
        (np.array([1.0], np.float16), "half_val", [15360]),
    ],
)
def test_as_proto_field_per_dtype(value, field, expected):
    """Tensor::AsProtoField fills the typed field of each dtype (int8/16/32 in int_val, half in half_val)."""
    from tfserving_compat.requests import tensor_proto_fields

    proto = tensor_proto_fields(value)
    assert list(getattr(proto, field)) == expected
    assert proto.tensor_content == b""


# ---------------------------------------------------------------- item 6: unknown signature


def test_unknown_signature_is_failed_precondition_over_grpc(servable):
    """predict_util.cc internal::RunPredict: FailedPreconditionError 'Serving signature key "<name>" not found.'"""
    from tfserving_compat.requests import run_predict

    with pytest.raises(ServingError) as err:
        run_predict(servable, _predict_request("nope", x=np.array([[1.0]], np.float32)))
    assert err.value.code == "FAILED_PRECONDITION"
    assert err.value.message == 'Serving signature key "nope" not found.'


def test_duplicate_output_filter_alias(servable):
    """predict_util.cc PreProcessPrediction: 'duplicate output tensor alias: <alias>' (INVALID_ARGUMENT)."""
    from tfserving_compat.requests import run_predict

    req = _predict_request(x=np.array([[1.0]], np.float32))
    req.output_filter.extend(["y", "y"])
    with pytest.raises(ServingError) as err:
        run_predict(servable, req)
    assert (err.value.code, err.value.message) == ("INVALID_ARGUMENT", "duplicate output tensor alias: y")


# ---------------------------------------------------------------- item 7: availability-preserving policy


def _slot(aspired, states):
    slot = mgr.ModelSlot(
        "m", "/b", cfg.VersionPolicy.from_proto(cfg.single_model("m", "/b").model_config_list.config[0])
    )
    slot.aspired = set(aspired)
    for v, state in states.items():
        slot.versions[v] = mgr.VersionState(v, f"/b/{v}", state=state)
    return slot


def test_policy_unloads_lowest_unaspired_once_an_aspired_version_serves():
    """availability_preserving_policy.cc GetNextAction: unload the LOWEST non-aspired ready version."""
    action = mgr.ModelManager._policy_action(_slot({3}, {1: "AVAILABLE", 2: "AVAILABLE", 3: "AVAILABLE"}))
    assert action[0] == "unload" and action[1].version == 1


def test_policy_keeps_one_unaspired_version_while_the_aspired_one_failed():
    """...no aspired version ready and one non-aspired ready: keep it (the failed newest leaves it serving)."""
    slot = _slot({3}, {2: "AVAILABLE", 3: "END"})
    slot.versions[3].error = ServingError("x", "DATA_LOSS")
    assert mgr.ModelManager._policy_action(slot) is None


def test_policy_unloads_down_to_one_unaspired_version_while_aspired_are_not_ready():
    """...'or there are more than one un-aspired versions that are ready': unload the lowest of them."""
    action = mgr.ModelManager._policy_action(_slot({3}, {1: "AVAILABLE", 2: "AVAILABLE", 3: "LOADING"}))
    assert action[0] == "unload" and action[1].version == 1


def test_policy_loads_highest_new_aspired_version_first():
    """...GetHighestAspiredNewServableId: the highest aspired version in kNew is loaded first."""
    action = mgr.ModelManager._policy_action(_slot({1, 2, 3}, {1: "START", 2: "START", 3: "START"}))
    assert action[0] == "load" and action[1].version == 3


def test_latest_2_with_failing_newest_serves_the_older_aspired_version():
    """latest{2} over 1,2,3 with 3 failing: 2 aspired and ready -> 1 unloads, 3 END with its error."""
    slot = _slot({2, 3}, {1: "AVAILABLE", 2: "AVAILABLE", 3: "END"})
    action = mgr.ModelManager._policy_action(slot)
    assert action[0] == "unload" and action[1].version == 1


def test_startup_wait_settles_on_the_lowest_version_that_ended_or_is_available():
    """servable_state_monitor.cc HasAnyServableInStreamReachedState (walks versions ascending), used by
    ServerCore::WaitUntilModelsAvailable with ServableRequest::Latest: with serial loads the newest version
    fails first (END) while older ones are still START, so the model 'did not become available'."""
    m = mgr.ModelManager(mgr.ManagerOptions())
    slot = _slot({1, 2, 3}, {1: "START", 2: "START", 3: "END"})
    slot.versions[3].error = ServingError("Can't parse x as binary proto", "DATA_LOSS")
    m._models["m"] = slot
    assert m._outcome("m") == "name: m version: 3 due to error: DATA_LOSS: Can't parse x as binary proto"
    slot.versions[1].state = "AVAILABLE"
    assert m._outcome("m") == "ok"
    m.stop()


def test_default_num_load_threads_is_serial():
    """main.cc / server.h: num_load_threads defaults to 0 (loads run serially in the manager's loop)."""
    assert mgr.ManagerOptions().num_load_threads == 0
    m = mgr.ModelManager(mgr.ManagerOptions())
    assert m._capacity == 1
    m.stop()


# ---------------------------------------------------------------- item 11: version directory names


@pytest.mark.parametrize(
    ("child", "version"),
    [("7", 7), ("007", 7), ("+7", 7), (" 7", 7), ("-3", -3), ("7a", None), ("", None), ("٣", None), ("1e3", None)],
)
def test_version_directory_names_parse_as_absl_simple_atoi(child, version):
    """file_system_storage_path_source.cc ParseVersionNumber: absl::SimpleAtoi(child, &int64)."""
    assert mgr.parse_version(child) == version


def test_leading_zero_directory_is_served_as_its_number(tmp_path):
    """...AspireVersion(servable, child, version): version 7 is loaded from the directory '007'."""
    base = tmp_path / "m"
    shutil.copytree(HP2, base / "007")
    m = mgr.ModelManager(mgr.ManagerOptions(file_system_poll_wait_seconds=0))
    m.reload_config(cfg.single_model("m", str(base)))
    m.start()
    try:
        m.wait_until_available()
        assert [(v, s) for v, s, _ in m.status("m")] == [(7, "AVAILABLE")]
        with m.handle("m", 7) as s:
            assert s.path == str(base / "007")
    finally:
        m.stop()


def test_unknown_platform_message():
    """server_core.cc CreateAdapter: FailedPrecondition 'PlatformConfigMap has no entry for platform <p>'."""
    config = cfg.single_model("m", "/b")
    config.model_config_list.config[0].model_platform = "pytorch"
    with pytest.raises(ServingError) as err:
        cfg.validate(config, None)
    assert (err.value.code, err.value.message) == (
        "FAILED_PRECONDITION",
        "PlatformConfigMap has no entry for platform pytorch",
    )


# ---------------------------------------------------------------- item 10: corrupt SavedModel


def test_garbage_saved_model_pb_is_data_loss(tmp_path):
    """tensorflow/cc/saved_model/reader.cc ReadSavedModel -> ReadBinaryProto: DATA_LOSS
    "Can't parse <dir>/saved_model.pb as binary proto"; loader_harness.cc reports it as the version's error."""
    from tfserving_compat.loading import load_timed

    d = tmp_path / "1"
    shutil.copytree(HP2, d)
    (d / "saved_model.pb").write_bytes(b"not a model")
    with pytest.raises(ServingError) as err:
        load_timed("m", 1, str(d), warmup=False)
    assert err.value.code == "DATA_LOSS"
    assert err.value.message == f"Can't parse {d}/saved_model.pb as binary proto"


def test_truncated_variables_is_the_restore_kernels_error(tmp_path):
    """LoadSavedModel's RunRestore returns the RestoreV2 kernel's status: OUT_OF_RANGE for a short read."""
    from tfserving_compat.loading import load_timed

    d = tmp_path / "1"
    shutil.copytree(HP2, d)
    data = d / "variables" / "variables.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:10])
    with pytest.raises(ServingError) as err:
        load_timed("m", 1, str(d), warmup=False)
    assert err.value.code == "OUT_OF_RANGE"
    assert err.value.message.startswith("Read less bytes than requested")
    assert "Graph execution error" not in err.value.message and "Original stack trace" not in err.value.message


# ---------------------------------------------------------------- item 11: warmup record types


def _write_warmup(path: Path, logs) -> None:
    import tensorflow as tf

    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as w:
        for log in logs:
            w.write(log.SerializeToString())


@pytest.mark.parametrize(("field", "number"), [("session_run_log", 5), ("predict_streamed_log", 7)])
def test_warmup_unsupported_log_types(tmp_path, field, number):
    """saved_model_warmup.cc RunWarmupRequest: kSessionRunLog and kPredictStreamedLog -> UNIMPLEMENTED
    "Unsupported log_type for warmup: <log_type_case()>" (the field number)."""
    from tensorflow_serving.apis import prediction_log_pb2
    from tfserving_compat.loading import load_timed

    d = tmp_path / "1"
    shutil.copytree(HP2, d)
    log = prediction_log_pb2.PredictionLog()
    getattr(log, field).SetInParent()
    _write_warmup(d / "assets.extra" / "tf_serving_warmup_requests", [log])
    with pytest.raises(ServingError) as err:
        load_timed("m", 1, str(d), warmup=True)
    assert (err.value.code, err.value.message) == ("UNIMPLEMENTED", f"Unsupported log_type for warmup: {number}")


def test_warmup_record_without_log_type_is_skipped_and_metrics_recorded(tmp_path):
    """RunWarmupRequest's switch default: no error; model_warmup_records_read counts the record."""
    from tensorflow_serving.apis import prediction_log_pb2
    from tfserving_compat.loading import load_timed

    d = tmp_path / "1"
    shutil.copytree(HP2, d)
    _write_warmup(d / "assets.extra" / "tf_serving_warmup_requests", [prediction_log_pb2.PredictionLog()])
    metrics = Metrics()
    servable, _, _ = load_timed("m", 1, str(d), warmup=True, metrics=metrics)
    servable.close()
    text = metrics.exposition().decode()
    assert f':tensorflow:serving:model_warmup_records_read{{model_path="{d}",status="OK"}} 1' in text
    assert f':tensorflow:cc:saved_model:load_attempt_count{{model_path="{d}",status="success"}} 1' in text


# ---------------------------------------------------------------- item 8: metrics


def test_exposition_matches_prometheus_exporter_format():
    """util/prometheus_exporter.cc: '# TYPE' only (no '# HELP'), counters '%d', histogram limits and sum
    absl::StrCat(double), counts integers, families in order of their '/tensorflow/...' names."""
    metrics = Metrics()
    metrics.load_attempt("/m/1", True, 12.345678)
    metrics.request("m", "Predict", "GRPC", "OK", 0.00002)
    text = metrics.exposition().decode()
    assert "# HELP" not in text
    assert ':tensorflow:cc:saved_model:load_latency{model_path="/m/1"} 12345678' in text
    assert "e+" not in text.split(":tensorflow:cc:saved_model:load_latency{")[1].split("\n")[0]
    assert (
        ':tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",le="32.4"} 1' in text
    )
    assert (
        ':tensorflow:serving:request_latency_bucket{model_name="m",API="Predict",entrypoint="GRPC",le="+Inf"} 1' in text
    )
    assert ':tensorflow:serving:request_latency_count{model_name="m",API="Predict",entrypoint="GRPC"} 1' in text
    assert ':tensorflow:serving:request_latency_sum{model_name="m",API="Predict",entrypoint="GRPC"} 20' in text
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert types == [
        ":tensorflow:cc:saved_model:load_attempt_count",
        ":tensorflow:cc:saved_model:load_latency",
        ":tensorflow:serving:model_warmup_latency",
        ":tensorflow:serving:model_warmup_records_read",
        ":tensorflow:serving:request_count",
        ":tensorflow:serving:request_latency",
        ":tensorflow:serving:runtime_latency",
    ]
    from prometheus_client.parser import text_string_to_metric_families

    assert {f.name for f in text_string_to_metric_families(text)}  # still parses


def test_get_model_metadata_is_not_counted(servable):
    """prediction_service_impl.cc: GetModelMetadata records no request_count and no request_latency;
    Predict records request_count, request_latency (GRPC) and runtime_latency (predict_util.cc)."""
    from contextlib import contextmanager

    from tensorflow_serving.apis import get_model_metadata_pb2
    from tfserving_compat.grpc_service import PredictionService

    @contextmanager
    def handle(*_a, **_k):
        yield servable

    metrics = Metrics()
    service = PredictionService(SimpleNamespace(handle=handle), metrics)
    req = get_model_metadata_pb2.GetModelMetadataRequest()
    req.model_spec.name = "hp2"
    req.metadata_field.append("signature_def")
    service.GetModelMetadata(req, None)
    assert ":tensorflow:serving:request_count{" not in metrics.exposition().decode()
    service.Predict(_predict_request(x=np.array([[1.0]], np.float32)), None)
    text = metrics.exposition().decode()
    assert ':tensorflow:serving:request_count{model_name="hp2",status="OK"} 1' in text
    assert 'runtime_latency_count{model_name="hp2",API="Predict",runtime="TF1"} 1' in text


def test_tensor_content_flag_reaches_grpc_predict(servable):
    """make_server(..., tensor_content=True) is --enable_serialization_as_tensor_content."""
    from contextlib import contextmanager

    from tfserving_compat.grpc_service import PredictionService

    @contextmanager
    def handle(*_a, **_k):
        yield servable

    service = PredictionService(SimpleNamespace(handle=handle), Metrics(), tensor_content=True)
    out = service.Predict(_predict_request(x=np.array([[1.0]], np.float32)), None).outputs["y"]
    assert out.tensor_content and not out.float_val
