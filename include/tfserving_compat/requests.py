"""Proto-level request handling shared by the gRPC services and warmup replay."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .errors import FailedPrecondition, InvalidArgument
from .servable import DEFAULT_SIGNATURE, Servable


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


def tensor_proto_fields(value: Any) -> Any:
    """Tensor::AsProtoField: dtype, shape and the typed value field (float_val, int64_val, string_val, ...).

    TF Serving's default for Predict outputs (predict_util.cc, PostProcessPredictionResult, kAsProtoField);
    with --enable_serialization_as_tensor_content it uses AsProtoTensorContent (tensor_content) instead."""
    import numpy as np
    import tensorflow as tf

    arr = np.asarray(value)
    dtype = tf.as_dtype(arr.dtype)
    from tensorflow.core.framework import tensor_pb2

    proto = tensor_pb2.TensorProto()
    proto.dtype = dtype.as_datatype_enum
    for dim in arr.shape:
        proto.tensor_shape.dim.add().size = dim
    flat = arr.reshape(-1)
    name = dtype.name
    if name in ("float32",):
        proto.float_val.extend(flat.tolist())
    elif name == "float64":
        proto.double_val.extend(flat.tolist())
    elif name in ("int32", "int16", "int8", "uint8", "uint16"):
        proto.int_val.extend(int(v) for v in flat)
    elif name == "int64":
        proto.int64_val.extend(int(v) for v in flat)
    elif name == "uint32":
        proto.uint32_val.extend(int(v) for v in flat)
    elif name == "uint64":
        proto.uint64_val.extend(int(v) for v in flat)
    elif name == "bool":
        proto.bool_val.extend(bool(v) for v in flat)
    elif name == "string":
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif name in ("float16", "bfloat16"):
        proto.half_val.extend(int(v) for v in flat.view(np.uint16))
    elif name == "complex64":
        proto.scomplex_val.extend(x for v in flat for x in (float(v.real), float(v.imag)))
    elif name == "complex128":
        proto.dcomplex_val.extend(x for v in flat for x in (float(v.real), float(v.imag)))
    else:  # other types (resource, variant, quantized): TensorFlow's own encoding
        return tf.make_tensor_proto(arr)
    return proto


def tensor_proto_content(value: Any) -> Any:
    """Tensor::AsProtoTensorContent: dtype, shape and the raw bytes in tensor_content, whatever the size
    (tf.make_tensor_proto would use a typed field for a single element). Strings keep string_val here."""
    import numpy as np
    import tensorflow as tf

    arr = np.asarray(value)
    if arr.dtype == object or arr.dtype.kind in "SU":
        return tf.make_tensor_proto(arr)
    proto = tf.make_tensor_proto(np.zeros((0,), arr.dtype))
    del proto.tensor_shape.dim[:]
    for dim in arr.shape:
        proto.tensor_shape.dim.add().size = dim
    proto.tensor_content = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<")).tobytes()
    return proto


def run_predict(
    servable: Servable,
    request: Any,
    *,
    tensor_content: bool = False,
    on_runtime: Callable[[float], None] | None = None,
) -> Any:
    """internal::RunPredict (predict_util.cc): signature lookup, inputs, run, outputs as typed fields
    (kAsProtoField) unless ``tensor_content`` (--enable_serialization_as_tensor_content)."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    name = request.model_spec.signature_name or DEFAULT_SIGNATURE
    if name not in servable.signatures:  # checked first, FAILED_PRECONDITION (REST differs: see rest.py)
        raise FailedPrecondition(f'Serving signature key "{name}" not found.')
    sig = servable.signature(name)
    seen: set[str] = set()
    for alias in request.output_filter:  # PreProcessPrediction; an unknown alias is left to servable.run
        if alias not in sig.outputs:
            break
        if alias in seen:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        seen.add(alias)
    try:
        feeds = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
    except Exception as exc:
        raise InvalidArgument(f"Could not parse input tensor: {exc}") from exc
    t0 = time.perf_counter()
    outputs = servable.run(sig, feeds, list(request.output_filter))
    if on_runtime is not None:
        on_runtime(time.perf_counter() - t0)
    response = predict_pb2.PredictResponse()
    _model_spec(servable, response.model_spec, sig.name)
    for alias, value in outputs.items():
        if tensor_content:
            response.outputs[alias].CopyFrom(tensor_proto_content(value))
        else:
            response.outputs[alias].CopyFrom(tensor_proto_fields(value))
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
