"""models.config as data: build, print (protobuf text format), parse, read back, and the checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

from tfdeploy.core.errors import InvalidModelConfig
from tfdeploy.core.models_config import ServedModel, build_model_config, parse_text, served_models, to_text

TESTDATA = Path(__file__).resolve().parents[2] / "tests" / "data" / "tfserving-testdata"


def one_line(text: str) -> str:
    return " ".join(text.split())


MODELS = [
    ServedModel("m", "/models/m", (42, 43), {"stable": 42, "canary": 43}),
    ServedModel("other", "/models/other", (7,)),
]


def test_round_trip_through_text():
    config = build_model_config(MODELS)
    text = to_text(config)
    assert parse_text(text) == config
    assert served_models(parse_text(text)) == MODELS


def test_text_is_tf_serving_models_config():
    text = one_line(to_text(build_model_config(MODELS)))
    assert "specific { versions: 42 versions: 43 }" in text
    assert 'name: "m" base_path: "/models/m" model_platform: "tensorflow"' in text
    assert 'version_labels { key: "canary" value: 43 } version_labels { key: "stable" value: 42 }' in text
    assert text.startswith("model_config_list { config {")


def test_text_is_deterministic():
    a = ServedModel("m", "/models/m", (1, 2), {"b": 1, "a": 2})
    b = ServedModel("m", "/models/m", (1, 2), {"a": 2, "b": 1})
    assert to_text(build_model_config([a])) == to_text(build_model_config([b]))


def test_config_fields():
    config = build_model_config(MODELS)
    entry = config.model_config_list.config[0]
    assert entry.model_platform == "tensorflow"
    assert list(entry.model_version_policy.specific.versions) == [42, 43]
    assert dict(entry.version_labels) == {"stable": 42, "canary": 43}
    assert not config.model_config_list.config[1].version_labels


def test_empty_model_list_is_an_explicit_empty_config():
    config = build_model_config([])
    assert config.WhichOneof("config") == "model_config_list"
    assert served_models(parse_text(to_text(config))) == []


def test_served_model_is_an_immutable_value():
    model = ServedModel("m", "/models/m", [1, 2], {"stable": 1})  # type: ignore[arg-type]
    assert model.versions == (1, 2)
    assert model.labels == {"stable": 1}
    with pytest.raises(TypeError):
        model.labels["canary"] = 2  # type: ignore[index]
    assert model == ServedModel("m", "/models/m", (1, 2), {"stable": 1})
    assert len({model, ServedModel("m", "/models/m", (1, 2), {"stable": 1})}) == 1
    assert ServedModel("m", "/models/m", (1,)).labels == {}


@pytest.mark.parametrize(
    ("models", "message"),
    [
        (
            [ServedModel("m", "/models/m", (1,)), ServedModel("m", "/models/m2", (2,))],
            "model 'm' is listed more than once",
        ),
        ([ServedModel("m", "models/m", (1,))], "is not an absolute path"),
        ([ServedModel("m", "", (1,))], "is not an absolute path"),
        ([ServedModel("m", "/models/m", ())], "model 'm' lists no versions"),
        ([ServedModel("m", "/models/m", (1, 1))], "lists a version twice"),
        ([ServedModel("m", "/models/m", (-1,))], "is not a version number"),
        ([ServedModel("m", "/models/m", ("1",))], "is not a version number"),  # type: ignore[arg-type]
        ([ServedModel("m", "/models/m", (True,))], "is not a version number"),
        (
            [ServedModel("m", "/models/m", (1,), {"canary": 2})],
            "label 'canary' of model 'm' points at version 2, which is not among the versions served [1]",
        ),
        ([ServedModel("m", "/models/m", (1,), {"": 1})], "empty or non-string label"),
        ([ServedModel("bad/name", "/models/x", (1,))], "invalid model name 'bad/name'"),
        ([ServedModel("", "/models/x", (1,))], "invalid model name ''"),
    ],
)
def test_invalid_models_are_refused_with_a_clear_message(models, message):
    with pytest.raises(ValueError) as err:
        build_model_config(models)
    assert isinstance(err.value, InvalidModelConfig)
    assert message in str(err.value)


def test_parse_error_is_a_value_error():
    with pytest.raises(InvalidModelConfig, match="not a valid models.config"):
        parse_text("model_config_list { config { name: 'm' ")
    with pytest.raises(InvalidModelConfig, match="not a valid models.config"):
        parse_text("no_such_field: 1")


def test_parse_tf_servings_own_example_config():
    config = parse_text((TESTDATA / "good_model_config.txt").read_text())
    assert config.WhichOneof("config") == "model_config_list"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "config { name: 'm' base_path: '/m' model_platform: 'tensorflow' }",
            "has version policy none (default: latest 1)",
        ),
        (
            "config { name: 'm' base_path: '/m' model_platform: 'tensorflow' model_version_policy { all {} } }",
            "has version policy all",
        ),
        (
            "config { name: 'm' base_path: '/m' model_platform: 'tensorflow' "
            "model_version_policy { latest { num_versions: 2 } } }",
            "has version policy latest",
        ),
        ("config { name: 'm' base_path: '/m' model_platform: 'tflite' }", "model_platform 'tflite'"),
    ],
)
def test_served_models_refuses_configs_without_explicit_versions(body, message):
    config = text_format.Parse(f"model_config_list {{ {body} }}", ModelServerConfig())
    with pytest.raises(InvalidModelConfig, match="only"):
        served_models(config)
    with pytest.raises(InvalidModelConfig) as err:
        served_models(config)
    assert message in str(err.value)


def test_served_models_of_an_empty_config():
    assert served_models(ModelServerConfig()) == []
