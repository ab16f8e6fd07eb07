"""Issue 10, gRPC and versions: what a client of a real server sees, process and container.

- Predict answers in typed value fields (predict_util.cc, PostProcessPredictionResult: Tensor::AsProtoField),
  or in tensor_content with --enable_serialization_as_tensor_content (AsProtoTensorContent).
- An unknown signature over gRPC Predict is FAILED_PRECONDITION `Serving signature key "<name>" not found.`
  (predict_util.cc, internal::RunPredict).
- A corrupt saved_model.pb ends the version in END with DATA_LOSS (tensorflow/core/platform reader.cc,
  ReadBinaryProto), while the model's other version keeps serving (availability_preserving_policy.cc).
- Metrics print counters as integers and do not count GetModelMetadata (prometheus_exporter.cc;
  prediction_service_impl.cc records request_count only for Predict, Classify, Regress).
"""

from __future__ import annotations

import shutil

import grpc
import pytest
import requests
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from .conftest import HP2_2V, copy_model, version_states, wait_for

MONITORING = 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }'


def _predict(stub, name: str, signature: str = "") -> predict_pb2.PredictResponse:
    import tensorflow as tf

    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if signature:
        request.model_spec.signature_name = signature
    request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0], [2.0]], dtype=tf.float32))
    return stub.Predict(request, timeout=30)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("drift-models")
    copy_model(HP2_2V, root / "hp", ["00000123"])
    (root / "monitoring.config").write_text(MONITORING)
    return root


@pytest.fixture(scope="module")
def server(launcher, root):
    srv = launcher(
        root,
        [
            "--model_name=hp",
            "--model_base_path={root}/hp",
            "--monitoring_config_file={root}/monitoring.config",
            "--file_system_poll_wait_seconds=1",
            "--max_num_load_retries=0",
        ],
    )
    srv.extra["root"] = root
    return srv


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel)
    channel.close()


def test_predict_answers_in_typed_value_fields(stub):
    out = _predict(stub, "hp").outputs["y"]
    assert list(out.float_val) == [2.5, 3.0]
    assert out.tensor_content == b""


def test_predict_answers_in_tensor_content_with_the_flag(launcher, root):
    import numpy as np

    srv = launcher(root, ["--model_name=hp", "--model_base_path={root}/hp", "--enable_serialization_as_tensor_content"])
    channel = grpc.insecure_channel(srv.grpc_target)
    try:
        out = _predict(prediction_service_pb2_grpc.PredictionServiceStub(channel), "hp").outputs["y"]
    finally:
        channel.close()
    assert list(out.float_val) == []
    assert np.frombuffer(out.tensor_content, dtype=np.float32).tolist() == [2.5, 3.0]


def test_an_unknown_signature_is_failed_precondition(stub):
    with pytest.raises(grpc.RpcError) as err:
        _predict(stub, "hp", signature="no_such_signature")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.value.details() == 'Serving signature key "no_such_signature" not found.'


def test_metrics_count_requests_as_integers_and_not_metadata(server, stub):
    url = f"{server.url}/monitoring/prometheus/metrics"

    def count(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if ln.startswith(":tensorflow:serving:request_count{")]

    before = count(requests.get(url, timeout=10).text)
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "hp"
    request.metadata_field.append("signature_def")
    stub.GetModelMetadata(request, timeout=30)
    assert count(requests.get(url, timeout=10).text) == before  # metadata is not a counted request
    _predict(stub, "hp")
    lines = count(requests.get(url, timeout=10).text)
    assert lines and all(ln.rsplit(" ", 1)[1].isdigit() for ln in lines), lines


def test_a_corrupt_saved_model_ends_with_data_loss_and_the_old_version_serves(server):
    root = server.extra["root"]
    bad = root / "hp" / ".tmp-124"
    shutil.copytree(HP2_2V / "00000123", bad)
    (bad / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    bad.rename(root / "hp" / "124")
    wait_for(lambda: version_states(server, "hp").get(124) == "END", what="the corrupt version to end", timeout=60)
    status = requests.get(f"{server.url}/v1/models/hp", timeout=10).json()["model_version_status"]
    corrupt = next(v for v in status if v["version"] == "124")
    assert corrupt["status"]["error_code"] == "DATA_LOSS"
    assert "saved_model.pb as binary proto" in corrupt["status"]["error_message"]
    assert version_states(server, "hp")[123] == "AVAILABLE"
    shutil.rmtree(root / "hp" / "124")
