"""JSON <-> tensor/Example conversion for the REST API, following TF Serving's ``util/json_tensor.cc``.

Pure functions, called by the REST handler in TF Serving's check order: ``parse_body``, ``signature_name``,
(the handler resolves the version and the signature), ``decode_predict_inputs``, run, ``encode_predict_outputs``.
Classify/regress parse fully (``decode_examples``) before the model is looked up, as TF Serving does.

Strings travel as raw bytes: bodies are decoded with ``surrogateescape`` and re-encoded the same way, because
rapidjson neither validates nor repairs UTF-8 on input or output. Error messages are TF Serving's, including
its rendering of the offending JSON value (rapidjson's pretty writer, cut at 256 bytes).
"""

from __future__ import annotations

import base64
import codecs
import contextlib
import json
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
from tensorflow.core.example import example_pb2, feature_pb2
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

from tfserving_compat.errors import InvalidArgument, ServingError, Unimplemented

DEFAULT_SIGNATURE = "serving_default"

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT64_MAX = 2**64 - 1

# Python's json messages for the errors rapidjson also names; others keep Python's wording.
_RAPIDJSON_MESSAGES = {
    "Expecting value": "Invalid value.",
    "Expecting property name enclosed in double quotes": "Missing a name for object member.",
    "Expecting ':' delimiter": "Missing a colon after a name of object member.",
    "Unterminated string starting at": "Missing a closing quotation mark in string.",
    "Invalid \\escape": "Invalid escape character in string.",
    "Invalid \\uXXXX escape": "Incorrect hex digit after \\u escape in string.",
}
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_ASCII_SPACE = re.compile(r"[ \t\n\v\f\r]")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*[=.]*")
_DEBUG_LIMIT = 256
_MAX_RANK = 64  # numpy's limit on dimensions


def _json_int(text: str) -> int | float:
    """rapidjson keeps integers only within int64/uint64 range; beyond it they are doubles."""
    value = int(text)
    return value if _INT64[0] <= value <= _UINT64_MAX else float(text)


_DECODER = json.JSONDecoder(parse_int=_json_int)


# --- request parsing -------------------------------------------------------------------------------------------


def parse_body(body: bytes) -> dict[str, Any]:
    """Step 1: parse the body as one JSON object. Like rapidjson (kParseNanAndInfFlag | kParseStopWhenDoneFlag),
    bare NaN/Infinity are accepted, a UTF-8 BOM is skipped and anything after the first value is ignored."""
    if not body:
        raise InvalidArgument("JSON Parse error: The document is empty")
    bom = len(codecs.BOM_UTF8) if body.startswith(codecs.BOM_UTF8) else 0
    text = body[bom:].decode("utf-8", "surrogateescape")
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise _parse_error("The document is empty.", text, start, bom)
    try:
        doc, _ = _DECODER.raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise _parse_error(_RAPIDJSON_MESSAGES.get(exc.msg, exc.msg), text, exc.pos, bom) from None
    except RecursionError:
        raise InvalidArgument("JSON Parse error: The document is nested too deeply.") from None
    if _SURROGATE_ESCAPE.search(text):
        _reject_lone_surrogates(doc)
    if not isinstance(doc, dict):
        raise _format_error(doc, "Is not object")
    return doc


def signature_name(doc: dict[str, Any]) -> str:
    """Step 2: the requested signature; absent or empty means ``serving_default``."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise InvalidArgument(
            f"JSON Value: {_debug(doc)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name or DEFAULT_SIGNATURE


def _parse_error(message: str, text: str, pos: int, bom: int) -> InvalidArgument:
    offset = bom + len(text[:pos].encode("utf-8", "surrogateescape"))
    return InvalidArgument(f"JSON Parse error: {message} at offset: {offset}")


def _reject_lone_surrogates(doc: Any) -> None:
    """A lone surrogate escape (which rapidjson rejects) leaves a str that cannot become bytes: reject it here.
    Lone \\uDC80-\\uDCFF escapes are indistinguishable from undecodable raw bytes and pass as those bytes."""
    pending = [doc]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8", "surrogateescape")
            except UnicodeEncodeError:
                raise InvalidArgument("JSON Parse error: The surrogate pair in string is invalid.") from None
        elif isinstance(value, dict):
            pending.extend(value)
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


# --- predict inputs ----------------------------------------------------------------------------------------------


def _is_int_in(low: int, high: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# DataType -> (accepts JSON value, dtype the values are collected in, dtype of the tensor). Narrow integer
# types accept any int32 and wrap, as TF's int_val -> int8/int16/uint8 conversion does.
_INPUT_TYPES: dict[int, tuple[Callable[[Any], bool], Any, Any]] = {
    types_pb2.DT_FLOAT: (_is_number, np.float64, np.float32),
    types_pb2.DT_DOUBLE: (_is_number, np.float64, np.float64),
    types_pb2.DT_INT32: (_is_int_in(*_INT32), np.int64, np.int32),
    types_pb2.DT_INT16: (_is_int_in(*_INT32), np.int64, np.int16),
    types_pb2.DT_INT8: (_is_int_in(*_INT32), np.int64, np.int8),
    types_pb2.DT_UINT8: (_is_int_in(*_INT32), np.int64, np.uint8),
    types_pb2.DT_INT64: (_is_int_in(*_INT64), np.int64, np.int64),
    types_pb2.DT_UINT32: (_is_int_in(0, 2**32 - 1), np.int64, np.uint32),
    types_pb2.DT_UINT64: (_is_int_in(0, _UINT64_MAX), np.uint64, np.uint64),
    types_pb2.DT_BOOL: (lambda v: isinstance(v, bool), np.bool_, np.bool_),
    types_pb2.DT_STRING: (lambda v: isinstance(v, str), object, object),
}


def decode_predict_inputs(doc: dict[str, Any], inputs: dict[str, int]) -> tuple[dict[str, np.ndarray], str]:
    """Step 5: build one array per input alias from ``instances`` (row format, returns "row") or ``inputs``
    (columnar, returns "columnar"). ``inputs`` maps each signature input alias to its DataType enum value.
    Shapes are not checked against the signature: that is left to TensorFlow, as in TF Serving."""
    if not inputs:
        raise InvalidArgument(f"Failed to get input map for signature: {doc.get('signature_name') or 'DEFAULT'}")
    if "instances" in doc:
        if "inputs" in doc:
            raise _format_error(
                doc, "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist "
            )
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _format_error(doc, "Expecting 'instances' to be an list/array")
        if not instances:
            raise _format_error(doc, "No values in 'instances' array")
        return _decode_rows(instances, inputs), "row"
    if "inputs" in doc:
        return _decode_columns(doc["inputs"], inputs), "columnar"
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


def _decode_rows(instances: list[Any], inputs: dict[str, int]) -> dict[str, np.ndarray]:
    """Each element holds one instance (a value, or an object keyed by input alias); they are stacked on dim 0."""
    if not isinstance(instances[0], dict) and len(inputs) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )
    batch = _Batch(inputs)
    # Otherwise plain values fill the first input, even with several inputs if the list starts with a b64 object.
    if _is_named_object(instances[0]):
        for index, element in enumerate(instances):
            if not _is_named_object(element):
                raise InvalidArgument(f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    batch.add(name, item)
                except ServingError as exc:
                    raise InvalidArgument(
                        f"Failed to process element: {index} key: {name} of 'instances' list. Error: {_status(exc)}"
                    ) from None
            if element.keys() != inputs.keys():
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: {_debug(element)} "
                    f"keys must be equal to: {','.join(sorted(inputs))}"
                )
    else:
        name = next(iter(inputs))
        for index, element in enumerate(instances):
            if _is_named_object(element):
                raise InvalidArgument(f"Expecting value/list but got object at item {index} of input list")
            try:
                batch.add(name, element)
            except ServingError as exc:
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. Error: {_status(exc)}"
                ) from None
    return batch.arrays(len(instances))


class _Batch:
    """Collects the instances of each input, checking they all have the first instance's size and shape."""

    def __init__(self, inputs: dict[str, int]) -> None:
        self._inputs = inputs
        self._values: dict[str, list[Any]] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    def add(self, name: str, item: Any) -> None:
        if name not in self._inputs:
            raise InvalidArgument(f"JSON object: does not have named input: {name}")
        shape = _dense_shape(name, item, _MAX_RANK - 1)  # the batch adds a dimension
        values = _tensor_values(item, self._inputs[name], shape)
        if name not in self._values:
            self._values[name], self._shapes[name] = values, shape
        elif math.prod(self._shapes[name]) != len(values):
            raise InvalidArgument(f"Expecting tensor size: {math.prod(self._shapes[name])} but got: {len(values)}")
        elif self._shapes[name] != shape:
            raise InvalidArgument(f"Expecting shape {_shape_text(self._shapes[name])} but got: {_shape_text(shape)}")
        else:
            self._values[name].extend(values)

    def arrays(self, count: int) -> dict[str, np.ndarray]:
        return {
            name: _array(self._values[name], dtype, (count, *self._shapes[name]))
            for name, dtype in self._inputs.items()
            if name in self._values
        }


def _decode_columns(value: Any, inputs: dict[str, int]) -> dict[str, np.ndarray]:
    """``inputs`` holds the whole tensor: a value for a single input, else an object keyed by alias."""
    if not _is_named_object(value):
        if len(inputs) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map"
            )
        name, dtype = next(iter(inputs.items()))
        return {name: _tensor(name, value, dtype)}
    arrays = {}
    for name, dtype in inputs.items():
        if name not in value:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        arrays[name] = _tensor(name, value[name], dtype)
    return arrays


def _tensor(name: str, value: Any, dtype: int) -> np.ndarray:
    shape = _dense_shape(name, value, _MAX_RANK)
    return _array(_tensor_values(value, dtype, shape), dtype, shape)


def _dense_shape(name: str, value: Any, max_rank: int) -> tuple[int, ...]:
    """The shape implied by following first elements down; every other list is checked against it later.
    No array holds more than ``max_rank`` dimensions: refused with TF Serving's message for an input it
    cannot turn into a tensor."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    if len(shape) > max_rank:
        raise InvalidArgument(f"tensor parsing error: {name}")
    return tuple(shape)


def _tensor_values(value: Any, dtype: int, shape: tuple[int, ...]) -> list[Any]:
    """Flattens ``value`` row-major, depth first, failing at the first leaf or list that breaks ``shape``."""
    rank = len(shape)
    values: list[Any] = []

    def visit(node: Any, level: int) -> None:
        if not isinstance(node, list):
            if level != rank:
                raise InvalidArgument(
                    f"JSON Value: {_debug(node)} found at incorrect level: {level + 1} in the JSON DOM. "
                    f"Expected at level: {rank}"
                )
            values.append(_leaf(node, dtype))
            return
        if level >= rank:
            raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(node) != shape[level]:
            raise InvalidArgument(
                f"Encountered list at unexpected size: {len(node)} at level: {level} expected size: {shape[level]}"
            )
        for child in node:
            visit(child, level + 1)

    visit(value, 0)
    return values


def _leaf(value: Any, dtype: int) -> Any:
    if isinstance(value, dict):
        if dtype == types_pb2.DT_STRING:
            return _decode_base64(value)
        raise _type_error(value, dtype)
    if dtype not in _INPUT_TYPES:
        raise Unimplemented(f"Conversion of JSON Value: {_debug(value)} to type: {_type_name(dtype)}")
    accepts = _INPUT_TYPES[dtype][0]
    if not accepts(value):
        raise _type_error(value, dtype)
    return _utf8(value) if isinstance(value, str) else value


def _array(values: list[Any], dtype: int, shape: tuple[int, ...]) -> np.ndarray:
    if dtype not in _INPUT_TYPES:
        # Only reachable without any value (a value fails in _leaf); there is no array type to hold it.
        raise Unimplemented(f"Conversion of JSON Value: [] to type: {_type_name(dtype)}")
    _, collect, target = _INPUT_TYPES[dtype]
    with np.errstate(over="ignore"):  # doubles beyond float32 range become +-inf, as a C cast does
        return np.array(values, dtype=collect).astype(target, copy=False).reshape(shape)


def _type_error(value: Any, dtype: int) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected type: {_type_name(dtype)}"
    )


def _type_name(dtype: int) -> str:
    """TF's DataTypeString: DT_HALF -> "half"."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _status(exc: ServingError) -> str:
    """absl::Status::ToString(), which TF Serving embeds when it wraps a per-instance error."""
    return f"{exc.code}: {exc.message}"


# --- classify / regress inputs -----------------------------------------------------------------------------------


def decode_examples(doc: dict[str, Any]) -> input_pb2.Input:
    """Build the Input of a classify/regress request: ``examples`` (and ``context`` if given) as tf.Examples.
    A decimal becomes a float_list, an integer or bool an int64_list, a string or {"b64": ...} a bytes_list."""
    request_input = input_pb2.Input()
    has_context = "context" in doc
    if has_context:
        context = request_input.example_list_with_context.context
        context.SetInParent()
        _fill_example(doc["context"], context)
    if "examples" not in doc:
        # TF Serving says "classify" for regress requests too.
        raise _format_error(doc, "When method is classify, key 'examples' is expected and was not found")
    examples = doc["examples"]
    if not isinstance(examples, list):
        raise _format_error(doc, "Expecting 'examples' value to be an list/array")
    if not examples:
        raise _format_error(doc, "'examples' value is an empty array")
    target = request_input.example_list_with_context.examples if has_context else request_input.example_list.examples
    for example in examples:
        _fill_example(example, target.add())
    return request_input


def _fill_example(value: Any, example: example_pb2.Example) -> None:
    if not isinstance(value, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = example.features.feature[name]
        for element in content if isinstance(content, list) else [content]:
            _add_feature_value(element, name, feature)


def _add_feature_value(value: Any, name: str, feature: feature_pb2.Feature) -> None:
    """Appends one element; every element of a feature must be of the kind its first element set."""
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_base64_object(value)):
        raise InvalidArgument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if isinstance(value, int):
        kind = "int64_list"
    elif isinstance(value, float):
        kind = "float_list"
    else:
        kind = "bytes_list"
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise InvalidArgument(
            f"Unexpected element type in feature: {name} expecting type: {current.removesuffix('_list')}"
        )
    if isinstance(value, dict):
        value = _decode_base64(value)
    elif isinstance(value, str):
        value = _utf8(value)
    elif isinstance(value, int):
        if value > _INT64[1]:
            raise InvalidArgument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        value = int(value)  # bool -> 0/1
    getattr(feature, kind).value.append(value)


# --- JSON values -------------------------------------------------------------------------------------------------


def _is_base64_object(value: Any) -> bool:
    """{"b64": "<string>"} and nothing else."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named_object(value: Any) -> bool:
    """An object keyed by input alias (a base64 object is a value, not a set of named inputs)."""
    return isinstance(value, dict) and not _is_base64_object(value)


def _decode_base64(value: dict[str, Any]) -> bytes:
    """absl::Base64Unescape: standard alphabet, ASCII whitespace ignored, padding ('=' or '.') optional but exact."""
    if not _is_base64_object(value):
        raise InvalidArgument(f"JSON Value: {_debug(value)} not formatted correctly for base64 data")
    text = _ASCII_SPACE.sub("", value["b64"])
    data = text.rstrip("=.")
    padding = len(text) - len(data)
    expected_padding = {0: 0, 2: 2, 3: 1}.get(len(data) % 4)
    if not _BASE64.fullmatch(text) or expected_padding is None or padding not in (0, expected_padding):
        raise InvalidArgument("Unable to base64 decode")
    return base64.b64decode(data + "=" * expected_padding)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def _json_string(text: str) -> str:
    """A JSON string literal holding raw (possibly invalid UTF-8) bytes, as rapidjson writes them."""
    return json.dumps(text, ensure_ascii=False)


def _json_type(value: Any) -> str:
    """rapidjson's type names, used in TF Serving's messages."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    return "String" if isinstance(value, str) else "Number"


def _format_error(doc: Any, message: str) -> InvalidArgument:
    return InvalidArgument(f"JSON Value: {_debug(doc)} {message}")


class _DebugFull(Exception):
    """Stops rendering, as rapidjson's Accept() stops when its handler refuses a value."""


def _debug(value: Any) -> str:
    """TF Serving's JsonValueToDebugString: rapidjson's pretty writer (4-space indent, single-line arrays) that
    stops once 256 bytes are written, and at NaN/Infinity, which that writer cannot write."""
    parts: list[str] = []
    size = 0

    def put(text: str) -> None:
        nonlocal size
        if size >= _DEBUG_LIMIT:
            raise _DebugFull
        parts.append(text)
        size += len(_utf8(text))

    def visit(node: Any, depth: int, prefix: str) -> None:
        if isinstance(node, dict):
            put(prefix + "{")
            for index, (key, child) in enumerate(node.items()):
                put(("," if index else "") + "\n" + "    " * (depth + 1) + _json_string(key))
                visit(child, depth + 1, ": ")
            put(("\n" + "    " * depth if node else "") + "}")
        elif isinstance(node, list):
            put(prefix + "[")
            for index, child in enumerate(node):
                visit(child, depth + 1, ", " if index else "")
            put("]")
        elif isinstance(node, float) and not math.isfinite(node):
            put(prefix)
            raise _DebugFull
        else:
            put(prefix + _debug_scalar(node))

    with contextlib.suppress(_DebugFull):
        visit(value, 0, "")
    return "".join(parts)


def _debug_scalar(value: Any) -> str:
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, float):
        return _rapidjson_double(value)
    return json.dumps(value)


def _rapidjson_double(value: float) -> str:
    """rapidjson's dtoa: shortest digits, fixed notation up to 21 integer digits or 6 leading zeros, else 1.5e-7."""
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    negative, digit_tuple, exponent = Decimal(repr(value)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    sign = "-" if negative else ""
    point = len(digits) + int(exponent)  # value = 0.<digits> * 10**point
    if int(exponent) >= 0 and point <= 21:
        return f"{sign}{digits}{'0' * int(exponent)}.0"
    if 0 < point <= 21:
        return f"{sign}{digits[:point]}.{digits[point:]}"
    if -6 < point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    head = digits if len(digits) == 1 else f"{digits[0]}.{digits[1:]}"
    return f"{sign}{head}e{point - 1}"


# --- responses ---------------------------------------------------------------------------------------------------


def encode_predict_outputs(outputs: dict[str, np.ndarray], fmt: str) -> bytes:
    """Answer a predict in the request's format: row -> {"predictions": [...]} (one entry per dim-0 item: a value
    for a single output, else {alias: value}); columnar -> {"outputs": value} or {"outputs": {alias: value}}.
    String outputs whose alias ends in ``_bytes`` are written as {"b64": ...}. Row format needs every output to
    have a dim 0, and the same one: TF Serving refuses to split outputs into rows otherwise."""
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    arrays = {name: np.asarray(value) for name, value in outputs.items()}
    keys = {name: _json_string(name) for name in arrays}
    if fmt == "columnar":
        values = {name: _nest(_tokens(name, array), array.shape, 1)[0] for name, array in arrays.items()}
        if len(values) == 1:
            return _utf8('{"outputs":' + next(iter(values.values())) + "}")
        return _utf8('{"outputs":{' + ",".join(keys[name] + ":" + text for name, text in values.items()) + "}}")
    if fmt != "row":
        raise ValueError(f"unknown predict format {fmt!r}")
    batch = -1
    for name, array in arrays.items():
        if array.ndim == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        if batch >= 0 and array.shape[0] != batch:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {array.shape[0]} expecting: {batch}"
            )
        batch = array.shape[0]
    rows = {name: _nest(_tokens(name, array), array.shape[1:], batch) for name, array in arrays.items()}
    if len(rows) == 1:
        items = next(iter(rows.values()))
    else:
        items = ["{" + ",".join(keys[name] + ":" + rows[name][i] for name in rows) + "}" for i in range(batch)]
    return _utf8('{"predictions":[' + ",".join(items) + "]}")


def encode_classify_results(result: classification_pb2.ClassificationResult) -> bytes:
    """{"results": [[[label, score], ...], ...]}; a class without a label prints as ""."""
    if not result.classifications:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    rows = []
    for classifications in result.classifications:
        scores = _decimals(np.array([c.score for c in classifications.classes], dtype=np.float32))
        pairs = (f"[{_json_string(c.label)},{score}]" for c, score in zip(classifications.classes, scores, strict=True))
        rows.append("[" + ",".join(pairs) + "]")
    return _utf8('{"results":[' + ",".join(rows) + "]}")


def encode_regress_results(result: regression_pb2.RegressionResult) -> bytes:
    """{"results": [value, ...]}."""
    if not result.regressions:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    values = _decimals(np.array([r.value for r in result.regressions], dtype=np.float32))
    return _utf8('{"results":[' + ",".join(values) + "]}")


def error_body(message: str) -> bytes:
    """{"error": message}, the body of every failed /v1 request."""
    return _utf8('{"error":' + _json_string(message) + "}")


def _tokens(name: str, array: np.ndarray) -> list[str]:
    """Every element of ``array`` as JSON text, row-major. Unwritable types fail only if there is a value."""
    if array.size == 0:
        return []
    flat = array.ravel()
    kind = array.dtype.kind
    if array.dtype in (np.float32, np.float64):
        return _decimals(flat)
    if kind in "iu" and array.dtype != np.uint16:
        return [str(v) for v in flat.tolist()]
    if kind == "b":
        return ["true" if v else "false" for v in flat.tolist()]
    if kind in "OSU":
        raw = [v.encode() if isinstance(v, str) else bytes(v) for v in flat.tolist()]
        if name.endswith("_bytes"):
            return ['{"b64":"' + base64.b64encode(v).decode("ascii") + '"}' for v in raw]
        return [_json_string(v.decode("utf-8", "surrogateescape")) for v in raw]
    type_name = "half" if array.dtype == np.float16 else array.dtype.name
    raise InvalidArgument(f"Failed to write JSON value for tensor type: {type_name}")


def _decimals(values: np.ndarray) -> list[str]:
    """TF Serving's WriteDecimal: "%g" (six significant digits) if that reads back as the same value in the value's
    own precision, else max_digits10 digits ("%.9g" float, "%.17g" double); ".0" is added when there is neither
    a point nor an exponent; non-finite values are bare NaN/Infinity/-Infinity."""
    full = ".9g" if values.dtype == np.float32 else ".17g"
    numbers = values.tolist()
    short = [format(v, ".6g") for v in numbers]
    exact = (np.array([float(s) for s in short]).astype(values.dtype) == values).tolist()
    texts = []
    for value, text, same in zip(numbers, short, exact, strict=True):
        if math.isnan(value):
            texts.append("NaN")
        elif math.isinf(value):
            texts.append("Infinity" if value > 0 else "-Infinity")
        else:
            text = text if same else format(value, full)
            texts.append(text if "." in text or "e" in text else text + ".0")
    return texts


def _nest(tokens: list[str], shape: tuple[int, ...], count: int) -> list[str]:
    """Groups row-major tokens into ``count`` JSON values of ``shape`` (a 0-d value is its single token)."""
    for axis in reversed(range(len(shape))):
        size = shape[axis]
        groups = count * math.prod(shape[:axis])
        tokens = ["[" + ",".join(tokens[g * size : (g + 1) * size]) + "]" for g in range(groups)]
    return tokens
