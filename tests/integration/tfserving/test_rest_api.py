"""REST conformance (spec section 1 and 8), against the server as a process and as a container."""

from __future__ import annotations

import base64
import json

import pytest
import requests

from .conftest import COUNTER, HP2_2V, HP2_CPU, HP2_TF2, TESTDATA, copy_model, seen_root

TWO = "saved_model_half_plus_two_2_versions"

CONFIG = """
model_config_list {
  config { name: '%(two)s' base_path: '{root}/%(two)s' model_platform: 'tensorflow'
           model_version_policy { all {} }
           version_labels { key: 'stable' value: 123 } version_labels { key: 'canary' value: 124 } }
  config { name: 'half_plus_two' base_path: '{root}/half_plus_two' model_platform: 'tensorflow' }
  config { name: 'half_plus_two_tf2' base_path: '{root}/half_plus_two_tf2' model_platform: 'tensorflow' }
  config { name: 'counter' base_path: '{root}/counter' model_platform: 'tensorflow' }
}
"""


@pytest.fixture(scope="module")
def server(kind, launcher, tmp_path_factory):
    root = tmp_path_factory.mktemp("rest-models")
    copy_model(HP2_2V, root / TWO)
    copy_model(HP2_CPU, root / "half_plus_two")
    copy_model(HP2_TF2, root / "half_plus_two_tf2")
    copy_model(COUNTER, root / "counter")
    (root / "models.config").write_text((CONFIG % {"two": TWO}).replace("{root}", seen_root(kind, root)))
    (root / "monitoring.config").write_text((TESTDATA / "monitoring_config.txt").read_text())
    return launcher(
        root,
        [
            "--model_config_file={root}/models.config",
            "--allow_version_labels_for_unavailable_models=true",
            "--monitoring_config_file={root}/monitoring.config",
        ],
    )


def post(server, path: str, body) -> requests.Response:
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{server.url}{path}", data=data, timeout=30)


def error_of(resp: requests.Response) -> str:
    assert resp.headers["Content-Type"] == "application/json", resp.headers
    return resp.json()["error"]


# --------------------------------------------------------------------------- known answers (section 8)


def test_predict_row_format_known_answer(server):
    resp = post(server, f"/v1/models/{TWO}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]})
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"predictions": [[2.5, 3.0], [3.5, 4.0]]}


def test_predict_specific_version_known_answer(server):
    resp = post(server, f"/v1/models/{TWO}/versions/123:predict", {"instances": [1.0, 2.0]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [2.5, 3.0]}


def test_metadata_equals_tf_servings_own_json(server):
    resp = requests.get(f"{server.url}/v1/models/{TWO}/versions/123/metadata", timeout=10)
    assert resp.status_code == 200, resp.text
    expected = json.loads((TESTDATA / "saved_model_half_plus_two_2_versions_metadata.json").read_text())
    assert resp.json() == expected


def test_regress_and_classify_known_answers(server):
    resp = post(server, f"/v1/models/{TWO}:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"results": [3.0]}
    resp = post(server, f"/v1/models/{TWO}:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"results": [[["", 3.0]]]}


# --------------------------------------------------------------------------- predict formats


def test_predict_columnar_format(server):
    resp = post(server, f"/v1/models/{TWO}:predict", {"inputs": [[1.0], [6.0]]})
    assert resp.json() == {"outputs": [[2.5], [5.0]]}
    resp = post(server, f"/v1/models/{TWO}:predict", {"inputs": {"x": [[1.0]], "ignored": 1}})
    assert resp.json() == {"outputs": [[2.5]]}


def test_predict_row_objects_and_tf2_model(server):
    resp = post(server, "/v1/models/half_plus_two_tf2:predict", {"instances": [{"x": [1.0]}, {"x": [3.0]}]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [[2.5], [3.5]]}


def test_predict_string_input_b64_via_predict_on_example_signature(server):
    from tensorflow.core.example import example_pb2

    ex = example_pb2.Example()
    ex.features.feature["x"].float_list.value.append(4.0)
    b64 = base64.b64encode(ex.SerializeToString()).decode()
    resp = post(server, f"/v1/models/{TWO}:predict", {"signature_name": "regress_x_to_y", "instances": [{"b64": b64}]})
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"predictions": [[4.0]]}


def test_labels_route_to_their_versions(server):
    for label in ("stable", "canary"):
        resp = post(server, f"/v1/models/{TWO}/labels/{label}:predict", {"instances": [[1.0]]})
        assert resp.status_code == 200, resp.text
    meta = requests.get(f"{server.url}/v1/models/{TWO}/labels/canary/metadata", timeout=10).json()
    assert meta["model_spec"]["version"] == "124"


# --------------------------------------------------------------------------- status


def test_model_status_lists_all_versions_newest_first(server):
    resp = requests.get(f"{server.url}/v1/models/{TWO}", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {
        "model_version_status": [
            {"version": "124", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}},
        ]
    }
    one = requests.get(f"{server.url}/v1/models/{TWO}/versions/123", timeout=10).json()
    assert [v["version"] for v in one["model_version_status"]] == ["123"]


def test_status_with_unassigned_label_still_lists_versions(server):
    resp = requests.get(f"{server.url}/v1/models/{TWO}/labels/nosuchlabel", timeout=10)
    assert resp.status_code == 200
    assert len(resp.json()["model_version_status"]) == 2


def test_status_errors(server):
    resp = requests.get(f"{server.url}/v1/models/nosuchmodel", timeout=10)
    assert resp.status_code == 404 and "Could not find any versions of model nosuchmodel" in error_of(resp)
    resp = requests.get(f"{server.url}/v1/models/{TWO}/versions/7", timeout=10)
    assert resp.status_code == 404 and f"Could not find version 7 of model {TWO}" in error_of(resp)
    resp = requests.get(f"{server.url}/v1/models", timeout=10)
    assert resp.status_code == 400 and "Missing model name in request." in error_of(resp)


# --------------------------------------------------------------------------- errors and their order


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "JSON Parse error: The document is empty"),
        (b"{not json", "JSON Parse error"),
        (b"[1, 2]", ""),
        (json.dumps({"signature_name": 5, "instances": [1.0]}), ""),
    ],
)
def test_body_errors_are_400_even_for_unknown_models(server, body, fragment):
    resp = post(server, "/v1/models/nosuchmodel:predict", body)
    assert resp.status_code == 400, resp.text
    assert fragment in error_of(resp)


def test_resolution_errors(server):
    resp = post(server, f"/v1/models/{TWO}/labels/nolabel:predict", {"instances": [1.0]})
    assert resp.status_code == 400 and "Unrecognized servable version label: nolabel" in error_of(resp)
    resp = post(server, "/v1/models/nosuchmodel:predict", {"instances": [1.0]})
    assert resp.status_code == 404 and "Servable not found for request: Latest(nosuchmodel)" in error_of(resp)
    resp = post(server, f"/v1/models/{TWO}/versions/7:predict", {"instances": [1.0]})
    assert resp.status_code == 404 and f"Servable not found for request: Specific({TWO}, 7)" in error_of(resp)


def test_signature_and_payload_errors(server):
    resp = post(server, f"/v1/models/{TWO}:predict", {"signature_name": "nope", "instances": [1.0]})
    assert resp.status_code == 400 and 'Serving signature name: "nope" not found in signature def' in error_of(resp)
    resp = post(server, f"/v1/models/{TWO}:predict", {"instances": [1.0], "inputs": [1.0]})
    assert resp.status_code == 400 and "expecting only one of 'inputs' or 'instances'" in error_of(resp)
    resp = post(server, f"/v1/models/{TWO}:predict", {"foo": 1})
    assert resp.status_code == 400 and "Missing 'inputs' or 'instances' key" in error_of(resp)
    resp = post(server, f"/v1/models/{TWO}:predict", {"instances": []})
    assert resp.status_code == 400 and "No values in 'instances' array" in error_of(resp)
    resp = post(server, f"/v1/models/{TWO}:predict", {"instances": [[1.0], [1.0, 2.0]]})
    assert resp.status_code == 400
    resp = post(server, f"/v1/models/{TWO}:predict", {"instances": ["a"]})
    assert resp.status_code == 400


def test_signature_is_checked_before_the_payload(server):
    resp = post(server, f"/v1/models/{TWO}:predict", {"signature_name": "nope", "foo": 1})
    assert 'Serving signature name: "nope"' in error_of(resp)


def test_malformed_paths_and_methods(server):
    resp = requests.put(f"{server.url}/v1/models/{TWO}:predict", data="{}", timeout=10)
    assert resp.status_code == 400 and f"Malformed request: PUT /v1/models/{TWO}:predict" in error_of(resp)
    resp = post(server, f"/v1/models/{TWO}:explain", {"instances": [1.0]})
    assert resp.status_code == 400 and "Malformed request: POST" in error_of(resp)
    resp = requests.get(f"{server.url}/v2/models/{TWO}", timeout=10)
    assert resp.status_code == 404
    assert "application/json" not in resp.headers.get("Content-Type", "")


def test_paths_are_case_insensitive_and_names_url_decoded(server):
    # the path regexes are (?i) but the method is compared case-sensitively (http_rest_api_handler.cc)
    resp = post(server, f"/V1/MODELS/{TWO}/VERSIONS/123:predict", {"instances": [1.0]})
    assert resp.status_code == 200, resp.text
    resp = requests.get(f"{server.url}/v1/models/half%5Fplus%5Ftwo", timeout=10)
    assert resp.status_code == 200


# --------------------------------------------------------------------------- metrics


def test_prometheus_metrics_count_requests_by_model_and_status(server):
    from prometheus_client.parser import text_string_to_metric_families

    post(server, f"/v1/models/{TWO}:predict", {"instances": [1.0]})
    post(server, "/v1/models/nosuchmodel:predict", {"instances": [1.0]})
    resp = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=10)
    assert resp.status_code == 200
    assert "# TYPE :tensorflow:serving:request_count counter" in resp.text  # TF Serving's name, no _total
    samples = [s for fam in text_string_to_metric_families(resp.text) for s in fam.samples]

    def value(name: str, **labels: str) -> float:
        names = (name, f"{name}_total")  # the parser adds _total to counters
        return sum(s.value for s in samples if s.name in names and labels.items() <= s.labels.items())

    assert value(":tensorflow:serving:request_count", model_name=TWO, status="OK") >= 1
    assert value(":tensorflow:serving:request_count", model_name="nosuchmodel", status="NOT_FOUND") >= 1
    assert value(":tensorflow:serving:request_latency_count", model_name=TWO, API="predict", entrypoint="REST") >= 1
    assert value(":tensorflow:serving:runtime_latency_count", model_name=TWO, API="Predict") >= 1
    assert value(":tensorflow:cc:saved_model:load_latency") > 0
