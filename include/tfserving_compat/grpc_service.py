"""gRPC PredictionService and ModelService on --port, with tensorflow-serving-api's generated stubs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from .errors import InvalidArgument, ServingError, Unimplemented
from .manager import ModelManager
from .metrics import Metrics
from .requests import run_classify, run_predict, run_regress
from .rest import fill_status

log = logging.getLogger("tfserving_compat.grpc")


def _target(spec: Any) -> tuple[str, int | None, str | None]:
    """ServerCore::ServableRequestFromModelSpec: name, then a version or a label, else latest."""
    if not spec.name:
        raise InvalidArgument("ModelSpec has no name specified.")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return spec.name, spec.version.value, None
    if choice == "version_label":
        return spec.name, None, spec.version_label
    return spec.name, None, None


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, manager: ModelManager, metrics: Metrics, *, tensor_content: bool = False) -> None:
        self.manager = manager
        self.metrics = metrics
        self.tensor_content = tensor_content  # --enable_serialization_as_tensor_content

    def _serve(
        self, api: str, request: Any, context: Any, run: Callable[[Any, Any], Any], *, counted: bool = True
    ) -> Any:
        """prediction_service_impl.cc: Predict, Classify and Regress record request_count (every status)
        and request_latency (OK only); GetModelMetadata records neither (``counted=False``)."""
        t0 = time.perf_counter()
        model = request.model_spec.name
        try:
            with self.manager.handle(*_target(request.model_spec)) as servable:
                response = run(servable, request)
        except ServingError as exc:
            if counted:
                self.metrics.request(model, api, "GRPC", exc.code, time.perf_counter() - t0)
            context.abort(exc.grpc_code, exc.message)
        except Exception as exc:  # noqa: BLE001 - never a traceback to the client
            log.exception("internal error in %s", api)
            if counted:
                self.metrics.request(model, api, "GRPC", "INTERNAL", time.perf_counter() - t0)
            context.abort(grpc.StatusCode.INTERNAL, f"Internal error: {exc}")
        if counted:
            self.metrics.request(model, api, "GRPC", "OK", time.perf_counter() - t0)
        return response

    def Predict(self, request, context):  # noqa: N802 - gRPC method names
        def run(servable: Any, req: Any) -> Any:
            return run_predict(
                servable,
                req,
                tensor_content=self.tensor_content,
                on_runtime=lambda s: self.metrics.runtime(req.model_spec.name, "Predict", s),
            )

        return self._serve("Predict", request, context, run)

    def Classify(self, request, context):  # noqa: N802
        return self._serve("Classify", request, context, run_classify)

    def Regress(self, request, context):  # noqa: N802
        return self._serve("Regress", request, context, run_regress)

    def GetModelMetadata(self, request, context):  # noqa: N802
        def run(servable: Any, req: Any) -> Any:
            if not req.metadata_field:
                raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
            for field in req.metadata_field:
                if field != "signature_def":
                    raise InvalidArgument(f"Metadata field {field} is not supported")
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = servable.name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(servable.signature_def_map())
            return response

        return self._serve("GetModelMetadata", request, context, run, counted=False)

    def MultiInference(self, request, context):  # noqa: N802
        context.abort(grpc.StatusCode.UNIMPLEMENTED, Unimplemented("MultiInference is not supported").message)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager

    def GetModelStatus(self, request, context):  # noqa: N802
        response = get_model_status_pb2.GetModelStatusResponse()
        try:
            if not request.HasField("model_spec"):
                raise InvalidArgument("Missing ModelSpec")
            spec = request.model_spec
            version = spec.version.value if spec.HasField("version") else None
            fill_status(response, self.manager.status(spec.name, version))
        except ServingError as exc:
            context.abort(exc.grpc_code, exc.message)
        return response

    def HandleReloadConfigRequest(self, request, context):  # noqa: N802
        response = model_management_pb2.ReloadConfigResponse()
        try:
            if request.config.WhichOneof("config") != "model_config_list":
                raise InvalidArgument(
                    "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                    "Only ModelConfigList is currently supported"
                )
            self.manager.reload_config(request.config, should_wait=context.is_active)
        except ServingError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            response.status.error_code = exc.grpc_code.value[0]
            response.status.error_message = exc.message
            context.abort(exc.grpc_code, exc.message)
        return response


def make_server(
    manager: ModelManager,
    metrics: Metrics,
    host: str,
    port: int,
    workers: int = 16,
    *,
    tensor_content: bool = False,
) -> tuple[Any, int]:
    """``tensor_content``: --enable_serialization_as_tensor_content (server.cc: kAsProtoContent)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"))
    service = PredictionService(manager, metrics, tensor_content=tensor_content)
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(service, server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(manager), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if not bound:
        raise OSError(f"could not bind gRPC to {host}:{port}")
    return server, bound
