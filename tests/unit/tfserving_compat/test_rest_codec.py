"""Behaviour of the REST JSON codec against TF Serving's json_tensor.cc (messages, status codes, formats)."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "include"))

from google.protobuf import text_format  # noqa: E402
from tensorflow.core.framework import types_pb2  # noqa: E402
from tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2  # noqa: E402
from tfserving_compat import rest_codec  # noqa: E402
from tfserving_compat.errors import ServingError  # noqa: E402

FLOAT = {"x": types_pb2.DT_FLOAT}


def error_of(call: Callable[..., Any], *args: Any) -> ServingError:
    with pytest.raises(ServingError) as info:
        call(*args)
    return info.value


def decode(body: bytes | str, inputs: dict[str, int]) -> tuple[dict[str, np.ndarray], str]:
    raw = body.encode() if isinstance(body, str) else body
    return rest_codec.decode_predict_inputs(rest_codec.parse_body(raw), inputs)


def decode_error(body: str, inputs: dict[str, int]) -> ServingError:
    return error_of(rest_codec.decode_predict_inputs, rest_codec.parse_body(body.encode()), inputs)


# --- section 8 known answers (half_plus_two), at the codec level -------------------------------------------------


def test_known_answer_batch_of_two_rows() -> None:
    arrays, fmt = decode('{"instances": [[1.0, 2.0], [3.0, 4.0]]}', FLOAT)
    assert fmt == "row"
    assert arrays["x"].dtype == np.float32
    assert arrays["x"].shape == (2, 2)
    np.testing.assert_array_equal(arrays["x"], [[1.0, 2.0], [3.0, 4.0]])
    outputs = {"y": (0.5 * arrays["x"] + 2).astype(np.float32)}
    assert rest_codec.encode_predict_outputs(outputs, fmt) == b'{"predictions":[[2.5,3.0],[3.5,4.0]]}'


def test_known_answer_plain_list() -> None:
    arrays, fmt = decode('{"instances": [1.0, 2.0]}', FLOAT)
    assert arrays["x"].shape == (2,)
    outputs = {"y": (0.5 * arrays["x"] + 2).astype(np.float32)}
    assert json.loads(rest_codec.encode_predict_outputs(outputs, fmt)) == {"predictions": [2.5, 3.0]}


# --- parse_body ----------------------------------------------------------------------------------------------------


def test_empty_body() -> None:
    err = error_of(rest_codec.parse_body, b"")
    assert (err.code, err.http_status) == ("INVALID_ARGUMENT", 400)
    assert err.message == "JSON Parse error: The document is empty"


def test_whitespace_only_body_is_empty_too() -> None:
    assert "JSON Parse error: The document is empty" in error_of(rest_codec.parse_body, b" \n ").message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"instances": [1,}', "JSON Parse error: Invalid value. at offset: 17"),
        (b"{1: 2}", "JSON Parse error: Missing a name for object member. at offset: 1"),
        (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member."),
        (b'{"a": "b', "JSON Parse error: Missing a closing quotation mark in string."),
        (b"[1 2]", "JSON Parse error: "),
        (b"nonsense", "JSON Parse error: Invalid value. at offset: 0"),
    ],
)
def test_invalid_json(body: bytes, message: str) -> None:
    err = error_of(rest_codec.parse_body, body)
    assert err.http_status == 400
    assert message in err.message


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"3", b"null"])
def test_body_must_be_an_object(body: bytes) -> None:
    err = error_of(rest_codec.parse_body, body)
    assert err.http_status == 400
    assert err.message == f"JSON Value: {body.decode()} Is not object"


def test_bare_nan_and_infinity_are_accepted() -> None:
    doc = rest_codec.parse_body(b'{"instances": [NaN, Infinity, -Infinity]}')
    values = doc["instances"]
    assert math.isnan(values[0]) and values[1] == math.inf and values[2] == -math.inf


def test_trailing_data_and_bom_are_ignored_like_rapidjson() -> None:
    assert rest_codec.parse_body(b'\xef\xbb\xbf {"instances": [1]} trailing') == {"instances": [1]}


def test_invalid_utf8_in_strings_reaches_the_tensor_as_raw_bytes() -> None:
    arrays, _ = decode(b'{"instances": ["a\xffb", "\xc3\xa9"]}', {"s": types_pb2.DT_STRING})
    assert arrays["s"].tolist() == [b"a\xffb", "é".encode()]


def test_lone_surrogate_escape_is_a_parse_error() -> None:
    err = error_of(rest_codec.parse_body, b'{"instances": ["\\ud800"]}')
    assert err.http_status == 400
    assert "JSON Parse error: The surrogate pair in string is invalid." in err.message


def test_surrogate_pair_escape_is_fine() -> None:
    arrays, _ = decode('{"instances": ["\\ud83d\\ude00"]}', {"s": types_pb2.DT_STRING})
    assert arrays["s"].tolist() == ["\U0001f600".encode()]


def test_integer_beyond_uint64_is_a_double_like_in_rapidjson() -> None:
    arrays, _ = decode('{"instances": [100000000000000000000000000000]}', {"x": types_pb2.DT_DOUBLE})
    assert arrays["x"].tolist() == [1e29]
    err = decode_error('{"instances": [100000000000000000000000000000]}', {"x": types_pb2.DT_INT64})
    assert "Type: Number is not of expected type: int64" in err.message


# --- signature_name ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "name"),
    [({}, "serving_default"), ({"signature_name": ""}, "serving_default"), ({"signature_name": "s"}, "s")],
)
def test_signature_name(doc: dict[str, Any], name: str) -> None:
    assert rest_codec.signature_name(doc) == name


def test_signature_name_must_be_a_string() -> None:
    err = error_of(rest_codec.signature_name, {"signature_name": 5, "instances": [1]})
    assert err.http_status == 400
    assert err.message == (
        'JSON Value: {\n    "signature_name": 5,\n    "instances": [1]\n} not formatted correctly. '
        "'signature_name' key must be a string value."
    )


# --- decode_predict_inputs: request shape ------------------------------------------------------------------------


def test_both_instances_and_inputs() -> None:
    err = decode_error('{"instances": [1], "inputs": [1]}', FLOAT)
    assert err.http_status == 400
    assert "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist" in err.message


def test_neither_instances_nor_inputs() -> None:
    err = decode_error('{"signature_name": "serving_default"}', FLOAT)
    assert (err.http_status, err.message) == (400, "Missing 'inputs' or 'instances' key")


def test_empty_instances() -> None:
    err = decode_error('{"instances": []}', FLOAT)
    assert err.http_status == 400
    assert err.message == "JSON Value: {\n    \"instances\": []\n} No values in 'instances' array"


def test_instances_must_be_a_list() -> None:
    err = decode_error('{"instances": {"x": 1}}', FLOAT)
    assert "Expecting 'instances' to be an list/array" in err.message


def test_signature_without_inputs() -> None:
    err = decode_error('{"instances": [1]}', {})
    assert (err.http_status, err.message) == (400, "Failed to get input map for signature: DEFAULT")


# --- row format ------------------------------------------------------------------------------------------------------

TWO_INPUTS = {"a": types_pb2.DT_INT32, "b": types_pb2.DT_STRING}


def test_plain_list_only_for_one_input() -> None:
    err = decode_error('{"instances": [[1], [2]]}', TWO_INPUTS)
    assert err.http_status == 400
    assert "instances is a plain list, but expecting list of objects as multiple input tensors" in err.message


def test_list_of_objects_stacks_each_input_on_dim_0() -> None:
    arrays, fmt = decode('{"instances": [{"a": [1, 2], "b": "x"}, {"b": {"b64": "eQ=="}, "a": [3, 4]}]}', TWO_INPUTS)
    assert fmt == "row"
    assert list(arrays) == ["a", "b"]
    assert arrays["a"].dtype == np.int32 and arrays["a"].tolist() == [[1, 2], [3, 4]]
    assert arrays["b"].dtype == object and arrays["b"].tolist() == [b"x", b"y"]


def test_object_for_single_input_is_keyed_by_alias() -> None:
    arrays, _ = decode('{"instances": [{"x": [1.5]}, {"x": [2.5]}]}', FLOAT)
    assert arrays["x"].tolist() == [[1.5], [2.5]]


def test_object_keys_must_equal_the_input_names() -> None:
    err = decode_error('{"instances": [{"a": 1}]}', TWO_INPUTS)
    assert err.http_status == 400
    assert err.message == (
        "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"a\": 1\n} keys must be equal to: a,b"
    )


def test_unknown_key_in_instance() -> None:
    err = decode_error('{"instances": [{"a": 1, "b": "x", "c": 2}]}', TWO_INPUTS)
    assert err.message == (
        "Failed to process element: 0 key: c of 'instances' list. "
        "Error: INVALID_ARGUMENT: JSON object: does not have named input: c"
    )


def test_objects_and_values_cannot_mix() -> None:
    assert "Expecting object but got list at item 1 of input list" in (
        decode_error('{"instances": [{"a": 1, "b": "x"}, [1]]}', TWO_INPUTS).message
    )
    assert "Expecting value/list but got object at item 1 of input list" in (
        decode_error('{"instances": [[1.0], {"x": [1.0]}]}', FLOAT).message
    )


def test_instances_must_have_the_same_size() -> None:
    err = decode_error('{"instances": [[1, 2], [3, 4], [5, 6, 7]]}', {"x": types_pb2.DT_INT32})
    assert err.http_status == 400
    assert err.message == (
        "Failed to process element: 2 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 2 but got: 3"
    )


def test_instances_must_have_the_same_shape() -> None:
    err = decode_error('{"instances": [[1, 2], [3, 4], [[5, 6]]]}', {"x": types_pb2.DT_INT32})
    assert "Expecting shape [2] but got: [1,2]" in err.message
    assert "Expecting shape [] but got: [1]" in decode_error('{"instances": [1, [1]]}', FLOAT).message


def test_named_instances_must_have_the_same_shape() -> None:
    body = '{"instances": [{"a": [[1, 2]], "b": "x"}, {"a": [[1], [2]], "b": "y"}]}'
    err = decode_error(body, TWO_INPUTS)
    assert "Failed to process element: 1 key: a of 'instances' list." in err.message
    assert "Expecting shape [1,2] but got: [2,1]" in err.message


def test_b64_objects_are_plain_values_in_row_format() -> None:
    arrays, _ = decode('{"instances": [{"b64": "aGVsbG8="}, "world"]}', {"s": types_pb2.DT_STRING})
    assert arrays["s"].tolist() == [b"hello", b"world"]


# --- ragged lists ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[[1, 2], [3]]", "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
        ("[[1, 2], 3]", "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2"),
        ("[[1], [[2]]]", "Encountered list at unexpected level: 2 expected < 2"),
        ("[[], [1]]", "Encountered list at unexpected size: 1 at level: 1 expected size: 0"),
    ],
)
def test_ragged_lists_are_rejected(value: str, message: str) -> None:
    err = decode_error(f'{{"inputs": {value}}}', FLOAT)
    assert (err.code, err.http_status) == ("INVALID_ARGUMENT", 400)
    assert err.message == message


def test_ragged_instance_is_wrapped_with_its_index() -> None:
    err = decode_error('{"instances": [[[1], [2, 3]]]}', FLOAT)
    assert err.message.startswith("Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: ")
    assert "Encountered list at unexpected size: 2 at level: 1 expected size: 1" in err.message


def test_empty_lists_give_zero_sized_dimensions() -> None:
    arrays, _ = decode('{"instances": [[], []]}', FLOAT)
    assert arrays["x"].shape == (2, 0) and arrays["x"].dtype == np.float32
    arrays, _ = decode('{"inputs": []}', FLOAT)
    assert arrays["x"].shape == (0,)


def test_more_dimensions_than_an_array_can_hold() -> None:
    deep = "[" * 65 + "1" + "]" * 65
    assert decode_error(f'{{"inputs": {deep}}}', FLOAT).message == "tensor parsing error: x"
    err = decode_error(f'{{"instances": [{deep[1:-1]}]}}', FLOAT)
    assert (err.http_status, err.message) == (
        400,
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: tensor parsing error: x",
    )
    assert decode(f'{{"inputs": {deep[1:-1]}}}', FLOAT)[0]["x"].ndim == 64


# --- columnar format -----------------------------------------------------------------------------------------------


def test_columnar_value_for_one_input() -> None:
    arrays, fmt = decode('{"inputs": [[1.0, 2.0]]}', FLOAT)
    assert fmt == "columnar"
    assert arrays["x"].shape == (1, 2)


def test_columnar_scalar() -> None:
    arrays, _ = decode('{"inputs": 3.5}', FLOAT)
    assert arrays["x"].shape == () and arrays["x"].item() == 3.5


def test_columnar_object_with_every_input_extra_keys_ignored() -> None:
    arrays, fmt = decode('{"inputs": {"b": ["x", "y", "z"], "a": 7, "unused": [1]}}', TWO_INPUTS)
    assert fmt == "columnar"
    assert list(arrays) == ["a", "b"]
    assert arrays["a"].shape == () and arrays["a"].item() == 7
    assert arrays["b"].tolist() == [b"x", b"y", b"z"]


def test_columnar_object_missing_an_input() -> None:
    err = decode_error('{"inputs": {"a": 1}}', TWO_INPUTS)
    assert (err.http_status, err.message) == (400, "Missing named input: b in 'inputs' object.")


def test_columnar_plain_value_for_several_inputs() -> None:
    err = decode_error('{"inputs": [1, 2]}', TWO_INPUTS)
    assert "inputs is a plain value/list, but expecting an object as multiple input tensors" in err.message


def test_columnar_b64_object_is_a_value() -> None:
    arrays, _ = decode('{"inputs": {"b64": "aGk="}}', {"s": types_pb2.DT_STRING})
    assert arrays["s"].shape == () and arrays["s"].item() == b"hi"


# --- types -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "json_values", "expected", "np_dtype"),
    [
        (types_pb2.DT_FLOAT, "[1, 2.5, -3e2]", [1.0, 2.5, -300.0], np.float32),
        (types_pb2.DT_DOUBLE, "[1, 0.1]", [1.0, 0.1], np.float64),
        (types_pb2.DT_INT32, "[-2147483648, 2147483647]", [-(2**31), 2**31 - 1], np.int32),
        (types_pb2.DT_INT64, "[-9223372036854775808, 1099511627776]", [-(2**63), 2**40], np.int64),
        (types_pb2.DT_UINT32, "[0, 4294967295]", [0, 2**32 - 1], np.uint32),
        (types_pb2.DT_UINT64, "[18446744073709551615]", [2**64 - 1], np.uint64),
        (types_pb2.DT_INT16, "[-5, 7]", [-5, 7], np.int16),
        (types_pb2.DT_UINT8, "[0, 255, 300]", [0, 255, 44], np.uint8),
        (types_pb2.DT_BOOL, "[true, false]", [True, False], np.bool_),
        (types_pb2.DT_STRING, '["a", "é", {"b64": "AP8="}]', [b"a", "é".encode(), b"\x00\xff"], object),
    ],
)
def test_accepted_values(dtype: int, json_values: str, expected: list[Any], np_dtype: Any) -> None:
    arrays, _ = decode(f'{{"inputs": {json_values}}}', {"x": dtype})
    assert arrays["x"].dtype == np_dtype
    assert arrays["x"].tolist() == expected


def test_float32_rounds_and_overflows_like_a_c_cast() -> None:
    arrays, _ = decode('{"inputs": [0.1, 1e300, -1e300, NaN]}', FLOAT)
    values = arrays["x"]
    assert values[0] == np.float32(0.1)
    assert values[1] == np.inf and values[2] == -np.inf and np.isnan(values[3])


@pytest.mark.parametrize(
    ("dtype", "value", "message"),
    [
        (types_pb2.DT_INT32, "1.0", "JSON Value: 1.0 Type: Number is not of expected type: int32"),
        (types_pb2.DT_INT32, "2147483648", "JSON Value: 2147483648 Type: Number is not of expected type: int32"),
        (types_pb2.DT_INT64, "1e3", "JSON Value: 1000.0 Type: Number is not of expected type: int64"),
        (types_pb2.DT_UINT32, "-1", "JSON Value: -1 Type: Number is not of expected type: uint32"),
        (types_pb2.DT_INT32, "true", "JSON Value: true Type: True is not of expected type: int32"),
        (types_pb2.DT_FLOAT, '"1.0"', 'JSON Value: "1.0" Type: String is not of expected type: float'),
        (types_pb2.DT_FLOAT, "false", "JSON Value: false Type: False is not of expected type: float"),
        (types_pb2.DT_FLOAT, "null", "JSON Value: null Type: Null is not of expected type: float"),
        (types_pb2.DT_BOOL, "1", "JSON Value: 1 Type: Number is not of expected type: bool"),
        (types_pb2.DT_STRING, "1", "JSON Value: 1 Type: Number is not of expected type: string"),
        (types_pb2.DT_FLOAT, '{"b64": "AA=="}', "Type: Object is not of expected type: float"),
    ],
)
def test_wrong_types_are_rejected(dtype: int, value: str, message: str) -> None:
    err = decode_error(f'{{"inputs": [{value}]}}', {"x": dtype})
    assert (err.code, err.http_status) == ("INVALID_ARGUMENT", 400)
    assert message in err.message


def test_int_given_as_decimal_in_row_format() -> None:
    err = decode_error('{"instances": [1.0]}', {"x": types_pb2.DT_INT32})
    assert err.http_status == 400
    assert err.message == (
        "Failed to process element: 0 of 'instances' list. "
        "Error: INVALID_ARGUMENT: JSON Value: 1.0 Type: Number is not of expected type: int32"
    )


@pytest.mark.parametrize(
    ("b64", "decoded"),
    [("aGk=", b"hi"), ("aGk", b"hi"), ("aG k=\n", b"hi"), ("aGk.", b"hi"), ("", b""), ("/+8=", b"\xff\xef")],
)
def test_base64_is_decoded_like_absl(b64: str, decoded: bytes) -> None:
    arrays, _ = decode(json.dumps({"inputs": [{"b64": b64}]}), {"s": types_pb2.DT_STRING})
    assert arrays["s"].tolist() == [decoded]


@pytest.mark.parametrize("b64", ["a", "aGk==", "aG=k", "aGk*", "-_8=", "aGVsbG8=="])
def test_bad_base64_is_rejected(b64: str) -> None:
    err = decode_error(json.dumps({"inputs": [{"b64": b64}]}), {"s": types_pb2.DT_STRING})
    assert (err.http_status, err.message) == (400, "Unable to base64 decode")


@pytest.mark.parametrize("value", ['{"b64": 1}', '{"b64": "AA==", "x": 1}', '{"c": "AA=="}'])
def test_malformed_base64_object(value: str) -> None:
    err = decode_error(f'{{"inputs": [{value}]}}', {"s": types_pb2.DT_STRING})
    assert err.http_status == 400
    assert err.message.endswith(" not formatted correctly for base64 data")


@pytest.mark.parametrize(("dtype", "name"), [(types_pb2.DT_HALF, "half"), (types_pb2.DT_BFLOAT16, "bfloat16")])
def test_half_and_bfloat16_are_unimplemented(dtype: int, name: str) -> None:
    err = decode_error('{"inputs": [1.0, 2.0]}', {"x": dtype})
    assert (err.code, err.http_status) == ("UNIMPLEMENTED", 501)
    assert err.message == f"Conversion of JSON Value: 1.0 to type: {name}"


def test_half_in_row_format_is_wrapped_as_invalid_argument_like_tf_serving() -> None:
    err = decode_error('{"instances": [1.0]}', {"x": types_pb2.DT_HALF})
    assert (err.code, err.http_status) == ("INVALID_ARGUMENT", 400)
    assert "Error: UNIMPLEMENTED: Conversion of JSON Value: 1.0 to type: half" in err.message


def test_error_values_are_quoted_like_rapidjson_and_cut_at_256_bytes() -> None:
    doc = {"instances": [], "padding": list(range(200))}
    err = error_of(rest_codec.decode_predict_inputs, doc, FLOAT)
    quoted = err.message.removeprefix("JSON Value: ").removesuffix(" No values in 'instances' array")
    assert quoted.startswith('{\n    "instances": [],\n    "padding": [0, 1, 2, ')
    assert 256 <= len(quoted) < 270 and not quoted.endswith("}")


@pytest.mark.parametrize(
    ("value", "quoted"),
    [(1e-7, "1e-7"), (1e21, "1e21"), (123456.789, "123456.789"), (0.001, "0.001"), (2.0, "2.0"), (-0.0, "-0.0")],
)
def test_numbers_are_quoted_like_rapidjson(value: float, quoted: str) -> None:
    err = error_of(rest_codec.decode_predict_inputs, {"inputs": [value]}, {"x": types_pb2.DT_INT32})
    assert err.message.startswith(f"JSON Value: {quoted} Type: Number")


# --- encode_predict_outputs --------------------------------------------------------------------------------------


def encode(outputs: dict[str, Any], fmt: str = "row") -> bytes:
    return rest_codec.encode_predict_outputs(outputs, fmt)


def test_row_format_several_outputs_are_objects_per_row_in_dict_order() -> None:
    outputs = {"scores": np.array([[0.5], [1.5]], np.float32), "ids": np.array([3, 4], np.int64)}
    assert encode(outputs) == b'{"predictions":[{"scores":[0.5],"ids":3},{"scores":[1.5],"ids":4}]}'


def test_row_format_outputs_must_share_dim_0() -> None:
    outputs = {"a": np.zeros((2, 3), np.int32), "b": np.array([b"x"], object)}
    err = error_of(rest_codec.encode_predict_outputs, outputs, "row")
    assert (err.http_status, err.message) == (400, "Tensor name: b has inconsistent batch size: 1 expecting: 2")


def test_row_format_needs_a_dim_0() -> None:
    err = error_of(rest_codec.encode_predict_outputs, {"a": np.float32(1.0)}, "row")
    assert (err.http_status, err.message) == (400, "Tensor name: a has no shape information ")


def test_row_format_zero_batch() -> None:
    assert encode({"a": np.zeros((0, 2), np.int32), "b": np.zeros((0,), object)}) == b'{"predictions":[]}'


def test_columnar_single_and_several_outputs() -> None:
    assert encode({"y": np.array([[1, 2], [3, 4]], np.int32)}, "columnar") == b'{"outputs":[[1,2],[3,4]]}'
    outputs = {"s": np.float64(2.0), "v": np.array([True, False]), "e": np.zeros((2, 0), np.float32)}
    assert encode(outputs, "columnar") == b'{"outputs":{"s":2.0,"v":[true,false],"e":[[],[]]}}'


def test_unknown_format_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        encode({"y": np.zeros(1)}, "sideways")


@pytest.mark.parametrize(
    ("values", "dtype", "text"),
    [
        ([0.1, 0.2, 2.5], np.float32, "[0.1,0.2,2.5]"),
        ([3.0, -1.0, 0.0, -0.0], np.float32, "[3.0,-1.0,0.0,-0.0]"),
        ([9000000, 999999, 0.5, 0.0003, 0.00003, 555557.5], np.float32, "[9e+06,999999.0,0.5,0.0003,3e-05,555557.5]"),
        ([1 / 3, 123456789], np.float32, "[0.333333343,123456792.0]"),
        ([0.1, 0.1 + 0.2, 1 / 3, 1e100], np.float64, "[0.1,0.30000000000000004,0.33333333333333331,1e+100]"),
        ([math.nan, math.inf, -math.inf, 3], np.float32, "[NaN,Infinity,-Infinity,3.0]"),
        ([-(2**63), 2**63 - 1], np.int64, "[-9223372036854775808,9223372036854775807]"),
        ([2**64 - 1], np.uint64, "[18446744073709551615]"),
        ([-128, 127], np.int8, "[-128,127]"),
        ([True, False], np.bool_, "[true,false]"),
    ],
)
def test_values_are_written_like_tf_serving(values: list[Any], dtype: Any, text: str) -> None:
    assert encode({"y": np.array(values, dtype)}, "columnar") == f'{{"outputs":{text}}}'.encode()


def test_string_outputs_are_text_unless_the_alias_ends_in_bytes() -> None:
    strings = np.array([[b"hello", b"w\xc3\xb6rld"], [b'q"uote\n', b"\xff\xfe"]], object)
    body = encode({"text": strings, "text_bytes": strings}, "columnar")
    assert body == (
        b'{"outputs":{"text":[["hello","w\xc3\xb6rld"],["q\\"uote\\n","\xff\xfe"]],'
        b'"text_bytes":[[{"b64":"aGVsbG8="},{"b64":"d8O2cmxk"}],[{"b64":"cSJ1b3RlCg=="},{"b64":"//4="}]]}}'
    )


def test_non_string_alias_ending_in_bytes_is_not_base64() -> None:
    assert encode({"n_bytes": np.array([1], np.int32)}) == b'{"predictions":[1]}'


def test_scalar_string_output() -> None:
    assert encode({"s": np.array(b"x", object)}, "columnar") == b'{"outputs":"x"}'


@pytest.mark.parametrize(("dtype", "name"), [(np.complex64, "complex64"), (np.float16, "half"), (np.uint16, "uint16")])
def test_unwritable_output_types(dtype: Any, name: str) -> None:
    err = error_of(rest_codec.encode_predict_outputs, {"y": np.ones(2, dtype)}, "columnar")
    assert (err.http_status, err.message) == (400, f"Failed to write JSON value for tensor type: {name}")


def test_unwritable_output_type_without_values_is_fine() -> None:
    assert encode({"y": np.zeros((0, 3), np.complex64)}) == b'{"predictions":[]}'


def test_no_outputs() -> None:
    err = error_of(rest_codec.encode_predict_outputs, {}, "row")
    assert (err.http_status, err.message) == (400, "Cannot convert empty tensor map to JSON")


def test_output_is_compact_json_readable_by_python() -> None:
    body = encode({"a": np.array([[1.5, math.nan]], np.float32), "b": np.array([b"x"], object)})
    assert b" " not in body
    parsed = json.loads(body)
    assert parsed["predictions"][0]["a"][0] == 1.5 and math.isnan(parsed["predictions"][0]["a"][1])


# --- decode_examples ---------------------------------------------------------------------------------------------


def expected_input(text: str) -> input_pb2.Input:
    return text_format.Parse(text, input_pb2.Input())


def test_examples_without_context() -> None:
    doc = {
        "examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0], "age": 20}, {"names": ["baz"], "ratings": 6.0}]
    }
    assert rest_codec.decode_examples(doc) == expected_input(
        """
        example_list {
          examples { features {
            feature { key: "names" value { bytes_list { value: "foo" value: "bar" } } }
            feature { key: "ratings" value { float_list { value: 8.0 value: 9.0 } } }
            feature { key: "age" value { int64_list { value: 20 } } }
          } }
          examples { features {
            feature { key: "names" value { bytes_list { value: "baz" } } }
            feature { key: "ratings" value { float_list { value: 6.0 } } }
          } }
        }
        """
    )


def test_examples_with_context_b64_bool_and_empty_list() -> None:
    doc = rest_codec.parse_body(
        b'{"context": {"country": "fr"}, "examples": [{"img": {"b64": "AP8="}, "flags": [true, false], "none": []}]}'
    )
    assert rest_codec.decode_examples(doc) == expected_input(
        """
        example_list_with_context {
          examples { features {
            feature { key: "img" value { bytes_list { value: "\\000\\377" } } }
            feature { key: "flags" value { int64_list { value: 1 value: 0 } } }
            feature { key: "none" value { } }
          } }
          context { features { feature { key: "country" value { bytes_list { value: "fr" } } } } }
        }
        """
    )


def test_empty_context_still_selects_example_list_with_context() -> None:
    decoded = rest_codec.decode_examples({"context": {}, "examples": [{}]})
    assert decoded.WhichOneof("kind") == "example_list_with_context"
    assert decoded.example_list_with_context.HasField("context")


def test_integer_beyond_uint64_is_a_float_feature() -> None:
    doc = rest_codec.parse_body(b'{"examples": [{"big": 100000000000000000000000000000}]}')
    feature = rest_codec.decode_examples(doc).example_list.examples[0].features.feature["big"]
    assert feature.WhichOneof("kind") == "float_list"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"instances": [{"a": 1}]}', "When method is classify, key 'examples' is expected and was not found"),
        ('{"examples": {"names": ["foo"]}}', "Expecting 'examples' value to be an list/array"),
        ('{"examples": []}', "'examples' value is an empty array"),
        ('{"examples": [[{"names": ["foo"]}]]}', "Example must be JSON object but got JSON Array"),
        ('{"context": [{"a": 1}], "examples": [{}]}', "Example must be JSON object but got JSON Array"),
        ('{"examples": [{"names": [10, null]}]}', "Feature: names has element with unexpected JSON type: Null"),
        ('{"examples": [{"names": [10, 10.0]}]}', "Unexpected element type in feature: names expecting type: int64"),
        ('{"examples": [{"r": [1.5, 2]}]}', "Unexpected element type in feature: r expecting type: float"),
        ('{"examples": [{"s": ["a", true]}]}', "Unexpected element type in feature: s expecting type: bytes"),
        ('{"examples": [{"n": [10, {"t": 1}]}]}', "Feature: n has element with unexpected JSON type: Object"),
        ('{"examples": [{"n": [[10], 20]}]}', "Feature: n has element with unexpected JSON type: Array"),
        (
            '{"examples": [{"n": [20, 18446744073709551603]}]}',
            "Feature: n has uint64_t element. Only int64_t is supported.",
        ),
        ('{"examples": [{"n": {"b64": "a"}}]}', "Unable to base64 decode"),
    ],
)
def test_example_errors(body: str, message: str) -> None:
    err = error_of(rest_codec.decode_examples, rest_codec.parse_body(body.encode()))
    assert (err.code, err.http_status) == ("INVALID_ARGUMENT", 400)
    assert message in err.message


def test_context_errors_come_before_missing_examples() -> None:
    err = error_of(rest_codec.decode_examples, {"context": 5})
    assert err.message == "Example must be JSON object but got JSON Number"


# --- classify / regress / error responses --------------------------------------------------------------------------


def test_classification_results() -> None:
    result = text_format.Parse(
        """
        classifications { classes { label: "car" score: 0.2 } classes { label: "bike" score: 0.7 } }
        classifications { classes { score: 0.25 } classes { score: 3 } }
        """,
        classification_pb2.ClassificationResult(),
    )
    assert rest_codec.encode_classify_results(result) == (
        b'{"results":[[["car",0.2],["bike",0.7]],[["",0.25],["",3.0]]]}'
    )


def test_regression_results_with_non_finite_values() -> None:
    result = regression_pb2.RegressionResult()
    for value in (0.2, math.inf, 1.0, -math.inf, math.nan):
        result.regressions.add(value=value)
    assert rest_codec.encode_regress_results(result) == b'{"results":[0.2,Infinity,1.0,-Infinity,NaN]}'


def test_empty_results() -> None:
    err = error_of(rest_codec.encode_classify_results, classification_pb2.ClassificationResult())
    assert (err.http_status, err.message) == (400, "Cannot convert empty ClassificationResults to JSON")
    err = error_of(rest_codec.encode_regress_results, regression_pb2.RegressionResult())
    assert (err.http_status, err.message) == (400, "Cannot convert empty RegressionResults to JSON")


@pytest.mark.parametrize("message", ['Bad key: "key"', "Bad key: 'key'", "Servable not found for request: Latest(m)"])
def test_error_body(message: str) -> None:
    assert rest_codec.error_body(message) == b'{"error":' + json.dumps(message).encode() + b"}"


def test_error_body_of_a_rejected_request_round_trips() -> None:
    err = error_of(rest_codec.parse_body, b"[1]")
    assert json.loads(rest_codec.error_body(err.message)) == {"error": "JSON Value: [1] Is not object"}
