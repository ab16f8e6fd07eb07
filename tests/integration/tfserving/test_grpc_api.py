"""gRPC conformance: PredictionService and ModelService (reload, spec section 3), process and container."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from .conftest import BAD, COUNTER, HP2_2V, copy_model, seen_root, version_states, wait_for

TWO = "two"

BASE_ENTRIES = (
    "config { name: 'two' base_path: '{root}/two' model_platform: 'tensorflow' }",
    "config { name: 'counter' base_path: '{root}/counter' model_platform: 'tensorflow' }",
)


@pytest.fixture(scope="module")
def server(kind, launcher, tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc-models")
    copy_model(HP2_2V, root / TWO, ["00000123"])
    copy_model(COUNTER, root / "counter")
    (root / "models.config").write_text(
        "model_config_list { " + " ".join(BASE_ENTRIES).replace("{root}", seen_root(kind, root)) + " }"
    )
    srv = launcher(root, ["--model_config_file={root}/models.config", "--max_num_load_retries=0"])
    srv.extra["root"] = root
    return srv


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.grpc_target)
    yield (
        prediction_service_pb2_grpc.PredictionServiceStub(channel),
        model_service_pb2_grpc.ModelServiceStub(channel),
    )
    channel.close()


def config_text(server, *entries: str) -> model_server_config_pb2.ModelServerConfig:
    body = " ".join(entries).replace("{root}", server.path(server.extra["root"]))
    return text_format.Parse(f"model_config_list {{ {body} }}", model_server_config_pb2.ModelServerConfig())


def reload(stubs, config, timeout=120):
    request = model_management_pb2.ReloadConfigRequest()
    request.config.CopyFrom(config)
    return stubs[1].HandleReloadConfigRequest(request, timeout=timeout)


def test_predict_and_model_spec_in_response(stubs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = TWO
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0], [2.0]], dtype=np.float32)))
    response = stubs[0].Predict(request, timeout=10)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["y"]), [[2.5], [3.0]])
    assert response.model_spec.name == TWO
    assert response.model_spec.version.value == 123
    assert response.model_spec.signature_name == "serving_default"


def test_predict_errors_carry_grpc_codes(stubs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "nosuchmodel"
    request.inputs["x"].CopyFrom(tf.make_tensor_proto(np.array([[1.0]], dtype=np.float32)))
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "Servable not found for request: Latest(nosuchmodel)" in err.value.details()
    request.model_spec.name = ""
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    request.model_spec.name = TWO
    request.model_spec.version_label = "nolabel"
    with pytest.raises(grpc.RpcError) as err:
        stubs[0].Predict(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "Unrecognized servable version label: nolabel" in err.value.details()


def test_stateful_counter_over_grpc(stubs):
    def call(signature: str) -> float:
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "counter"
        request.model_spec.signature_name = signature
        return float(tf.make_ndarray(stubs[0].Predict(request, timeout=10).outputs["output"]))

    call("reset_counter")
    call("incr_counter")
    call("incr_counter")
    assert call("get_counter") == 2.0


def test_classify_and_regress(stubs):
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.append(2.0)
    creq = classification_pb2.ClassificationRequest()
    creq.model_spec.name = TWO
    creq.model_spec.signature_name = "classify_x_to_y"
    creq.input.example_list.examples.add().CopyFrom(ex)
    cres = stubs[0].Classify(creq, timeout=10)
    assert cres.result.classifications[0].classes[0].score == pytest.approx(3.0)
    rreq = regression_pb2.RegressionRequest()
    rreq.model_spec.name = TWO
    rreq.model_spec.signature_name = "regress_x_to_y"
    rreq.input.example_list_with_context.context.features.feature["x"].float_list.value.append(10.0)
    rreq.input.example_list_with_context.examples.add()  # x comes from the context
    rres = stubs[0].Regress(rreq, timeout=10)
    assert rres.result.regressions[0].value == pytest.approx(7.0)


def test_get_model_metadata(stubs):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = TWO
    request.metadata_field.append("signature_def")
    response = stubs[0].GetModelMetadata(request, timeout=10)
    sigs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(sigs)
    assert "serving_default" in sigs.signature_def
    assert sigs.signature_def["serving_default"].inputs["x"].dtype == tf.float32.as_datatype_enum
    assert response.model_spec.version.value == 123


def test_get_model_status(stubs):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = TWO
    response = stubs[1].GetModelStatus(request, timeout=10)
    assert [(v.version, v.state) for v in response.model_version_status] == [(123, 30)]
    request.model_spec.name = "nosuchmodel"
    with pytest.raises(grpc.RpcError) as err:
        stubs[1].GetModelStatus(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------- reload (spec section 3)


def test_reload_rejects_bad_configs_and_changes_nothing(server, stubs):
    bad = {
        "duplicate": "config { name: 'two' base_path: '{root}/two' model_platform: 'tensorflow' } " * 2,
        "relative": "config { name: 'two' base_path: 'relative/two' model_platform: 'tensorflow' }",
        "no platform": "config { name: 'two' base_path: '{root}/two' }",
    }
    messages = {
        "duplicate": "Illegal to list model two multiple times in config list",
        "relative": "to have an absolute path or URI",
        "no platform": "Illegal setting neither ModelServerConfig::model_type (deprecated) nor",
    }
    for key, body in bad.items():
        with pytest.raises(grpc.RpcError) as err:
            reload(stubs, config_text(server, body))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, key
        assert messages[key] in err.value.details(), key
    assert version_states(server, TWO) == {123: "AVAILABLE"}
    assert version_states(server, "counter") == {123: "AVAILABLE"}


def test_labels_take_two_reloads_and_need_available_versions(server, stubs):
    root = server.extra["root"]
    specific = (
        "config { name: 'two' base_path: '{root}/two' model_platform: 'tensorflow' "
        "model_version_policy { specific { versions: 123 versions: 124 } } %s }"
    )
    # Phase 1 in one reload: add version 124 AND label it -> refused, 124 is not available yet.
    copy_model(HP2_2V, root / TWO, ["00000124"])
    wrong = specific % "version_labels { key: 'stable' value: 123 } version_labels { key: 'canary' value: 124 }"
    with pytest.raises(grpc.RpcError) as err:
        reload(stubs, config_text(server, wrong, BASE_ENTRIES[1]))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Request to assign label to version 124 of model two, which is not currently available" in (
        err.value.details()
    )
    # Two reloads: first load both versions (policy change applies at the next poll: wait for it), then label.
    reload(stubs, config_text(server, specific % "version_labels { key: 'stable' value: 123 }", BASE_ENTRIES[1]))
    wait_for(lambda: version_states(server, TWO) == {123: "AVAILABLE", 124: "AVAILABLE"}, what="124 available")
    reload(stubs, config_text(server, wrong, BASE_ENTRIES[1]))
    stable = requests.get(f"{server.url}/v1/models/two/labels/stable/metadata", timeout=10).json()
    canary = requests.get(f"{server.url}/v1/models/two/labels/canary/metadata", timeout=10).json()
    assert (stable["model_spec"]["version"], canary["model_spec"]["version"]) == ("123", "124")
    # Back to one version: 123 unloads but stays listed as END.
    reload(stubs, config_text(server, *BASE_ENTRIES))
    wait_for(lambda: version_states(server, TWO) == {124: "AVAILABLE", 123: "END"}, what="123 unloaded")


def test_reload_is_full_replacement_and_blocks_for_new_models(server, stubs):
    root = server.extra["root"]
    copy_model(HP2_2V, root / "added", ["00000123"])
    t0 = time.monotonic()
    reload(
        stubs,
        config_text(
            server, BASE_ENTRIES[0], "config { name: 'added' base_path: '{root}/added' model_platform: 'tensorflow' }"
        ),
    )
    # blocking: the new model answers as soon as the reload returns
    resp = requests.post(f"{server.url}/v1/models/added:predict", json={"instances": [[1.0]]}, timeout=10)
    assert resp.status_code == 200, (resp.text, time.monotonic() - t0)
    # counter was left out: unloaded, still listed with END entries
    wait_for(lambda: version_states(server, "counter") == {123: "END"}, what="counter unloaded")
    resp = requests.get(f"{server.url}/v1/models/counter", timeout=10)
    assert resp.status_code == 200
    reload(stubs, config_text(server, *BASE_ENTRIES))
    wait_for(lambda: version_states(server, "counter") == {123: "AVAILABLE"}, what="counter back")


def test_reload_of_a_model_that_fails_to_load_returns_its_error(server, stubs):
    root = server.extra["root"]
    copy_model(BAD, root / "broken")
    with pytest.raises(grpc.RpcError) as err:
        reload(
            stubs,
            config_text(
                server,
                *BASE_ENTRIES,
                "config { name: 'broken' base_path: '{root}/broken' model_platform: 'tensorflow' }",
            ),
        )
    assert "did not become available" in err.value.details()
    assert version_states(server, "broken") == {123: "END"}
    assert version_states(server, TWO)  # everything else keeps serving
    reload(stubs, config_text(server, *BASE_ENTRIES))


def test_requests_keep_being_answered_during_reloads(server, stubs):
    errors: list[str] = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            resp = requests.post(f"{server.url}/v1/models/two:predict", json={"instances": [[1.0]]}, timeout=10)
            if resp.status_code != 200:
                errors.append(resp.text)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        for _ in range(2):
            reload(stubs, config_text(server, BASE_ENTRIES[0]))
            reload(stubs, config_text(server, *BASE_ENTRIES))
    finally:
        stop.set()
        thread.join()
    assert errors == []
