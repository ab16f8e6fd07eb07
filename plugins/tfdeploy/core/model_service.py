"""The two ModelService calls the pipeline makes, with messages that do not import TensorFlow.

TF Serving's generated modules for ``HandleReloadConfigRequest`` and ``GetModelStatus``
(``tensorflow_serving.apis.model_management_pb2`` / ``get_model_status_pb2``) import ``status_pb2``, which
imports ``tensorflow/core/protobuf/error_codes.proto`` as ``tensorflow.core.protobuf.error_codes_pb2``: that
runs ``import tensorflow`` (about 2 s and 600 MB in every task process that only wanted to reload a server).
So the request and response messages are declared here with protobuf's descriptor API, in a private pool
and package, with exactly the field numbers and wire types of TF Serving's
``tensorflow_serving/apis/model_management.proto``, ``get_model_status.proto`` and
``tensorflow_serving/util/status.proto`` (enums are varints on the wire, so they are read as int32). The
payloads are the library's own messages: a ``ModelServerConfig`` (``tensorflow_serving.config``) and a
``ModelSpec`` (``tensorflow_serving.apis.model_pb2``), neither of which imports TensorFlow. Unit tests
(tests/unit/test_model_service_protos.py) round-trip bytes against TF Serving's generated messages.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "/tensorflow.serving.ModelService/"
RELOAD_METHOD = SERVICE + "HandleReloadConfigRequest"
STATUS_METHOD = SERVICE + "GetModelStatus"

# tensorflow.serving.ModelVersionStatus.State
STATES = {0: "UNKNOWN", 10: "START", 20: "LOADING", 30: "AVAILABLE", 40: "UNLOADING", 50: "END"}

_INT32, _INT64, _STRING, _MESSAGE, _BYTES = 5, 3, 9, 11, 12
_OPTIONAL, _REPEATED = 1, 3
_PACKAGE = "tfdeploy.model_service"


def _build() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    fdp = descriptor_pb2.FileDescriptorProto(name="tfdeploy/model_service.proto", package=_PACKAGE, syntax="proto3")

    def message(name: str, *fields: tuple[str, int, int, int, str]) -> None:
        msg = fdp.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name

    status = f".{_PACKAGE}.StatusProto"
    message("StatusProto", ("error_code", 1, _INT32, _OPTIONAL, ""), ("error_message", 2, _STRING, _OPTIONAL, ""))
    # config: a serialized tensorflow.serving.ModelServerConfig (a length-delimited field either way)
    message("ReloadConfigRequest", ("config", 1, _BYTES, _OPTIONAL, ""), ("metric_names", 2, _STRING, _REPEATED, ""))
    message("ReloadConfigResponse", ("status", 1, _MESSAGE, _OPTIONAL, status))
    # model_spec: a serialized tensorflow.serving.ModelSpec
    message("GetModelStatusRequest", ("model_spec", 1, _BYTES, _OPTIONAL, ""))
    message(
        "ModelVersionStatus",
        ("version", 1, _INT64, _OPTIONAL, ""),
        ("state", 2, _INT32, _OPTIONAL, ""),
        ("status", 3, _MESSAGE, _OPTIONAL, status),
    )
    message(
        "GetModelStatusResponse",
        ("model_version_status", 1, _MESSAGE, _REPEATED, f".{_PACKAGE}.ModelVersionStatus"),
    )
    pool.Add(fdp)
    names = ("ReloadConfigRequest", "ReloadConfigResponse", "GetModelStatusRequest", "GetModelStatusResponse")
    return {name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{name}")) for name in names}


_MESSAGES = _build()
ReloadConfigRequest = _MESSAGES["ReloadConfigRequest"]
ReloadConfigResponse = _MESSAGES["ReloadConfigResponse"]
GetModelStatusRequest = _MESSAGES["GetModelStatusRequest"]
GetModelStatusResponse = _MESSAGES["GetModelStatusResponse"]
