"""tfdeploy.core.model_service speaks exactly TF Serving's ModelService wire format: bytes written by one side
parse on the other, field for field, against the generated modules of tensorflow-serving-api."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tfdeploy.core import model_service as ms
from tfdeploy.core.models_config import ServedModel, build_model_config

official = pytest.importorskip("tensorflow_serving.apis.model_management_pb2")
status_pb2 = pytest.importorskip("tensorflow_serving.apis.get_model_status_pb2")


def test_a_reload_request_is_what_tf_serving_parses():
    config = build_model_config([ServedModel("m", "/models/m", (1, 2), {"stable": 1})])
    ours = ms.ReloadConfigRequest(config=config.SerializeToString(), metric_names=["x"])
    theirs = official.ReloadConfigRequest.FromString(ours.SerializeToString())
    assert theirs.config == config and list(theirs.metric_names) == ["x"]
    back = ms.ReloadConfigRequest.FromString(theirs.SerializeToString())
    assert back.config == config.SerializeToString()


def test_a_reload_response_status_is_read_as_tf_serving_writes_it():
    theirs = official.ReloadConfigResponse()
    theirs.status.error_code = 9  # FAILED_PRECONDITION
    theirs.status.error_message = "Request to assign label to version 4 of model m, which is not currently available"
    theirs.metric.add(name="ignored")  # a field the pipeline does not read is skipped, not an error
    ours = ms.ReloadConfigResponse.FromString(theirs.SerializeToString())
    assert (ours.status.error_code, ours.status.error_message) == (9, theirs.status.error_message)
    ok = official.ReloadConfigResponse().SerializeToString()
    assert ms.ReloadConfigResponse.FromString(ok).status.error_code == 0


def test_model_status_round_trips_with_every_state():
    from tensorflow_serving.apis.model_pb2 import ModelSpec

    request = ms.GetModelStatusRequest(model_spec=ModelSpec(name="m").SerializeToString())
    assert status_pb2.GetModelStatusRequest.FromString(request.SerializeToString()).model_spec.name == "m"
    theirs = status_pb2.GetModelStatusResponse()
    for name, number in status_pb2.ModelVersionStatus.State.items():
        entry = theirs.model_version_status.add(version=7 + number, state=name)
        entry.status.error_message = f"msg {number}"
    ours = ms.GetModelStatusResponse.FromString(theirs.SerializeToString())
    assert [(e.version, ms.STATES[e.state], e.status.error_message) for e in ours.model_version_status] == [
        (7 + number, name, f"msg {number}") for name, number in status_pb2.ModelVersionStatus.State.items()
    ]
    assert {number: name for name, number in status_pb2.ModelVersionStatus.State.items()} == ms.STATES


def test_using_them_does_not_import_tensorflow():
    code = (
        "import sys; sys.path.insert(0, 'plugins'); "
        "from tfdeploy.hooks.tfserving import TFServingHook; "
        "from tfdeploy.core import model_service as ms; from tfdeploy.core.models_config import build_model_config; "
        "from tensorflow_serving.apis.model_pb2 import ModelSpec; "
        "ms.ReloadConfigRequest(config=build_model_config([]).SerializeToString()).SerializeToString(); "
        "ms.GetModelStatusRequest(model_spec=ModelSpec(name='m').SerializeToString()); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
