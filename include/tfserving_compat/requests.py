"""Proto-level request handling shared by the gRPC services and warmup replay."""

from __future__ import annotations

from typing import Any

from .errors import InvalidArgument
from .servable import Servable


def serialized_examples(inp: Any) -> list[bytes]:
    """tf.Examples of an Input proto, serialized; a context is merged into each example as TF Serving does."""
    kind = inp.WhichOneof("kind")
    if kind == "example_list":
        examples = [e.SerializeToString() for e in inp.example_list.examples]
    elif kind == "example_list_with_context":
        context = inp.example_list_with_context.context.SerializeToString()
        examples = [context + e.SerializeToString() for e in inp.example_list_with_context.examples]
    else:
        examples = []
    if not examples:
        raise InvalidArgument("Input is empty.")
    return examples


def _model_spec(servable: Servable, response_spec: Any, signature_name: str) -> None:
    response_spec.name = servable.name
    response_spec.version.value = servable.version
    response_spec.signature_name = signature_name


def run_predict(servable: Servable, request: Any) -> Any:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    sig = servable.signature(request.model_spec.signature_name)
    try:
        feeds = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
    except Exception as exc:
        raise InvalidArgument(f"Could not parse input tensor: {exc}") from exc
    outputs = servable.run(sig, feeds, list(request.output_filter))
    response = predict_pb2.PredictResponse()
    _model_spec(servable, response.model_spec, sig.name)
    for alias, value in outputs.items():
        response.outputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return response


def run_classify(servable: Servable, request: Any) -> Any:
    from tensorflow_serving.apis import classification_pb2

    name = request.model_spec.signature_name or "serving_default"
    response = classification_pb2.ClassificationResponse()
    response.result.CopyFrom(servable.classify(name, serialized_examples(request.input)))
    _model_spec(servable, response.model_spec, name)
    return response


def run_regress(servable: Servable, request: Any) -> Any:
    from tensorflow_serving.apis import regression_pb2

    name = request.model_spec.signature_name or "serving_default"
    response = regression_pb2.RegressionResponse()
    response.result.CopyFrom(servable.regress(name, serialized_examples(request.input)))
    _model_spec(servable, response.model_spec, name)
    return response
