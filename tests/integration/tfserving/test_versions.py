"""Version discovery and lifecycle (spec sections 4 and 5), against the server as a process and as a container.

One server per kind hosts several models, each test owning one model directory, so polling behaviour is
exercised without a server start per test. The missing-base-path case stops every poll, so it has its own.
"""

from __future__ import annotations

import os
import shutil

import pytest
import requests

from .conftest import BAD, COUNTER, HP2_2V, copy_model, seen_root, version_states, wait_for

V123 = HP2_2V / "00000123"
V124 = HP2_2V / "00000124"
MODELS = {
    "latest": "",
    "latest2": "model_version_policy { latest { num_versions: 2 } }",
    "all": "model_version_policy { all {} }",
    "specific": "model_version_policy { specific { versions: 123 versions: 125 } }",
    "failing": "",
    "emptied": "",
    "corrupt": "",
    "warm": "",
    "badwarm": "",
}


@pytest.fixture(scope="module")
def server(kind, launcher, tmp_path_factory):
    root = tmp_path_factory.mktemp("version-models")
    entries = []
    for name, policy in MODELS.items():
        copy_model(HP2_2V, root / name, ["00000123"])
        base = f"{seen_root(kind, root)}/{name}"
        entries.append(f"config {{ name: '{name}' base_path: '{base}' model_platform: 'tensorflow' {policy} }}")
    (root / "models.config").write_text("model_config_list { " + " ".join(entries) + " }")
    srv = launcher(
        root,
        ["--model_config_file={root}/models.config", "--max_num_load_retries=0", "--file_system_poll_wait_seconds=1"],
    )
    srv.extra["root"] = root
    return srv


def publish(base, version: int, src=V124) -> None:
    """Write a version the safe way: a non-numeric temp directory, then an atomic rename."""
    tmp = base / f".tmp-{version}"
    shutil.copytree(src, tmp)
    os.rename(tmp, base / str(version))


def predict(server, model: str, version: int | None = None) -> requests.Response:
    path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
    return requests.post(f"{server.url}{path}", json={"instances": [[1.0]]}, timeout=10)


def test_only_numeric_directories_are_versions(server):
    base = server.extra["root"] / "latest"
    shutil.copytree(V124, base / "1.tmp")
    shutil.copytree(V124, base / "notaversion")
    os.symlink("/nonexistent", base / "latest")
    import time

    time.sleep(2.5)  # two polls
    assert version_states(server, "latest") == {123: "AVAILABLE"}


def test_new_version_loads_before_the_old_one_unloads(server):
    base = server.extra["root"] / "latest"
    publish(base, 124)
    wait_for(lambda: version_states(server, "latest") == {124: "AVAILABLE", 123: "END"}, what="124 replaces 123")
    assert predict(server, "latest").status_code == 200
    assert predict(server, "latest", 123).status_code == 404
    status = requests.get(f"{server.url}/v1/models/latest/versions/123", timeout=5).json()
    assert status["model_version_status"][0]["status"] == {"error_code": "OK", "error_message": ""}


def test_leading_zeros_parse_as_the_version_number(server):
    base = server.extra["root"] / "latest"
    tmp = base / ".tmp"
    shutil.copytree(V124, tmp)
    os.rename(tmp, base / "000500")
    wait_for(lambda: version_states(server, "latest").get(500) == "AVAILABLE", what="version 500 from 000500")


def test_latest_n_all_and_specific_policies(server):
    root = server.extra["root"]
    for name in ("latest2", "all", "specific"):
        publish(root / name, 124)
        publish(root / name, 125)
    wait_for(
        lambda: version_states(server, "latest2") == {125: "AVAILABLE", 124: "AVAILABLE", 123: "END"}, what="latest2"
    )
    wait_for(
        lambda: version_states(server, "all") == {125: "AVAILABLE", 124: "AVAILABLE", 123: "AVAILABLE"}, what="all"
    )
    wait_for(lambda: version_states(server, "specific") == {125: "AVAILABLE", 123: "AVAILABLE"}, what="specific")
    assert predict(server, "specific", 124).status_code == 404


def test_a_failing_new_version_leaves_the_old_one_serving(server):
    base = server.extra["root"] / "failing"
    publish(base, 200, src=BAD / "00000123")
    states = wait_for(lambda: (s := version_states(server, "failing")).get(200) == "END" and s, what="200 fails")
    assert states == {200: "END", 123: "AVAILABLE"}
    status = requests.get(f"{server.url}/v1/models/failing/versions/200", timeout=5).json()
    error = status["model_version_status"][0]["status"]
    assert error["error_code"] != "OK" and "SavedModel" in error["error_message"]
    assert predict(server, "failing").status_code == 200  # Latest -> the highest AVAILABLE version
    # the fixed version, published again under a new number, is picked up
    publish(base, 201)
    wait_for(lambda: version_states(server, "failing").get(201) == "AVAILABLE", what="201 loads")


def test_a_half_written_version_ends_with_its_load_error(server):
    base = server.extra["root"] / "corrupt"
    half = base / "300"
    half.mkdir()
    (half / "saved_model.pb").write_bytes((V124 / "saved_model.pb").read_bytes()[:100])
    wait_for(lambda: version_states(server, "corrupt").get(300) == "END", what="300 ends")
    assert version_states(server, "corrupt")[123] == "AVAILABLE"
    assert predict(server, "corrupt").status_code == 200


def test_an_emptied_base_path_unloads_the_model(server):
    base = server.extra["root"] / "emptied"
    shutil.rmtree(base / "00000123")
    wait_for(lambda: version_states(server, "emptied") == {123: "END"}, what="emptied model unloads")
    resp = predict(server, "emptied")
    assert resp.status_code == 404 and "Servable not found for request: Latest(emptied)" in resp.json()["error"]


def test_warmup_requests_are_replayed_during_load(server, tmp_path):
    """Observes the replay itself, not just the load: TF Serving's saved_model_counter has a variable that
    signature `incr_counter` increments and `get_counter` reads. The warmup file calls `incr_counter`
    WARMUP_CALLS times, so the loaded version's counter must read exactly WARMUP_CALLS (0 if warmup were
    skipped, 2x if it were replayed twice)."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2, prediction_service_pb2_grpc

    warmup_calls = 5
    src = tmp_path / "124"
    shutil.copytree(COUNTER / "00000123", src)
    (src / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(src / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        for _ in range(warmup_calls):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "warm"
            request.model_spec.signature_name = "incr_counter"
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    publish(server.extra["root"] / "warm", 124, src=src)
    wait_for(lambda: version_states(server, "warm").get(124) == "AVAILABLE", what="warmed version loads")

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "warm"
    request.model_spec.version.value = 124
    request.model_spec.signature_name = "get_counter"
    with grpc.insecure_channel(server.grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
    assert float(tf.make_ndarray(response.outputs["output"])) == warmup_calls


def test_a_failing_warmup_fails_the_load(server, tmp_path):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    src = tmp_path / "124"
    shutil.copytree(V124, src)
    (src / "assets.extra").mkdir()
    with tf.io.TFRecordWriter(str(src / "assets.extra" / "tf_serving_warmup_requests")) as writer:
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = "no_such_signature"
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        writer.write(log.SerializeToString())
    publish(server.extra["root"] / "badwarm", 124, src=src)
    wait_for(lambda: version_states(server, "badwarm").get(124) == "END", what="warmup failure ends the load")
    assert version_states(server, "badwarm")[123] == "AVAILABLE"


def test_a_missing_base_path_changes_nothing(launcher, kind, tmp_path_factory):
    root = tmp_path_factory.mktemp("missing-base")
    copy_model(HP2_2V, root / "a", ["00000123"])
    copy_model(HP2_2V, root / "b", ["00000123"])
    seen = seen_root(kind, root)
    (root / "models.config").write_text(
        "model_config_list { "
        f"config {{ name: 'a' base_path: '{seen}/a' model_platform: 'tensorflow' }} "
        f"config {{ name: 'b' base_path: '{seen}/b' model_platform: 'tensorflow' }} }}"
    )
    server = launcher(root, ["--model_config_file={root}/models.config"])
    shutil.rmtree(root / "b")  # b's base path disappears: the whole poll stops
    publish(root / "a", 124)  # ... so a's new version is not picked up either
    import time

    time.sleep(3)
    assert version_states(server, "a") == {123: "AVAILABLE"}
    assert version_states(server, "b") == {123: "AVAILABLE"}
    (root / "b").mkdir()
    copy_model(HP2_2V, root / "b", ["00000123"])
    wait_for(lambda: version_states(server, "a").get(124) == "AVAILABLE", what="polling resumes")
