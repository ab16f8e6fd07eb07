"""Flags, models.config checks, version policies and metric names of the TF-Serving-compatible server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "include"))
TESTDATA = ROOT / "tests" / "data" / "tfserving-testdata"

from tfserving_compat import config as cfg  # noqa: E402
from tfserving_compat.errors import ServingError  # noqa: E402
from tfserving_compat.metrics import Metrics  # noqa: E402
from tfserving_compat.monitoring_config import prometheus_path  # noqa: E402
from tfserving_compat.server import parse_flags  # noqa: E402


def test_flag_defaults_match_tensorflow_model_server():
    # tensorflow_serving/model_servers/server.h (Server::Options); more in test_flags.py
    flags, unknown = parse_flags([])
    assert (flags.port, flags.rest_api_port, flags.model_name) == (8500, 0, "default")
    assert flags.file_system_poll_wait_seconds == 1 and flags.model_config_file_poll_wait_seconds == 0
    assert flags.enable_model_warmup is True and flags.allow_version_labels_for_unavailable_models is False
    assert (flags.max_num_load_retries, flags.load_retry_interval_micros) == (5, 60_000_000)
    assert unknown == []


def test_tensorflow_flags_booleans_and_values():
    # tensorflow/core/util/command_line_flags.cc: `--name=value` only; bools `--name`, `=true`, `=false`
    flags, unknown = parse_flags(
        ["--enable_model_warmup=false", "--allow_version_labels_for_unavailable_models", "--port", "9000"]
    )
    assert flags.enable_model_warmup is False and flags.allow_version_labels_for_unavailable_models is True
    assert flags.port == 8500 and unknown == ["--port", "9000"]
    with pytest.raises(ValueError):
        parse_flags(["--enable_model_warmup=0"])


def test_unknown_flags_are_returned_for_reporting():
    # xla_cpu_compilation_enabled and grpc_channel_arguments are TF Serving flags (main.cc): taken, not unknown
    _, unknown = parse_flags(["--model_name=m", "--xla_cpu_compilation_enabled=true", "--no_such_flag=x"])
    assert unknown == ["--no_such_flag=x"]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (cfg.VersionPolicy("latest"), {9}),
        (cfg.VersionPolicy("latest", num_versions=2), {9, 7}),
        (cfg.VersionPolicy("all"), {1, 7, 9}),
        (cfg.VersionPolicy("specific", versions=frozenset({1, 5})), {1}),
    ],
)
def test_version_policies(policy, expected):
    assert policy.select([1, 9, 7]) == expected


def test_policy_from_proto_defaults_to_latest_one():
    config = cfg.parse_text("model_config_list { config { name: 'm' base_path: '/m' model_platform: 'tensorflow' } }")
    assert cfg.VersionPolicy.from_proto(config.model_config_list.config[0]) == cfg.VersionPolicy("latest", 1)


def test_shared_example_configs_parse_or_fail_clearly():
    good = cfg.parse_text((TESTDATA / "good_model_config.txt").read_text())
    assert [m.name for m in good.model_config_list.config] == ["half_plus_two", "half_plus_three"]
    with pytest.raises(ServingError) as err:
        cfg.parse_text((TESTDATA / "bad_model_config.txt").read_text(), "bad_model_config.txt")
    assert err.value.code == "INVALID_ARGUMENT" and "bad_model_config.txt" in err.value.message


@pytest.mark.parametrize(
    ("text", "code", "fragment"),
    [
        (
            "config { name: 'm' base_path: '/a' model_platform: 'tensorflow' } " * 2,
            "INVALID_ARGUMENT",
            "Illegal to list model m multiple times in config list",
        ),
        (
            "config { name: 'm' base_path: 'rel/m' model_platform: 'tensorflow' }",
            "INVALID_ARGUMENT",
            "Expected model m to have an absolute path or URI; got base_path()=rel/m",
        ),
        (
            "config { name: 'm' base_path: '/m' }",
            "INVALID_ARGUMENT",
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor ModelServerConfig::model_platform",
        ),
    ],
)
def test_invalid_configs_are_refused_with_tf_servings_messages(text, code, fragment):
    with pytest.raises(ServingError) as err:
        cfg.validate(cfg.parse_text(f"model_config_list {{ {text} }}"), None)
    assert err.value.code == code and fragment in err.value.message


def test_uri_base_paths_are_accepted_and_platform_changes_refused():
    uri = cfg.parse_text(
        "model_config_list { config { name: 'm' base_path: 'gs://b/m' model_platform: 'tensorflow' } }"
    )
    cfg.validate(uri, None)
    other = cfg.parse_text("model_config_list { config { name: 'm' base_path: '/m' model_platform: 'tensorflow' } }")
    other.model_config_list.config[0].model_platform = "tflite"
    with pytest.raises(ServingError):
        cfg.validate(other, uri)


def test_custom_model_config_is_refused():
    config = cfg.parse_text("custom_model_config { }")
    with pytest.raises(ServingError) as err:
        cfg.validate(config, None)
    assert err.value.code == "FAILED_PRECONDITION"


def test_monitoring_config_from_tf_servings_example():
    assert prometheus_path((TESTDATA / "monitoring_config.txt").read_text()) == "/monitoring/prometheus/metrics"
    assert prometheus_path("prometheus_config { enable: true }") == "/monitoring/prometheus/metrics"
    assert prometheus_path("prometheus_config { enable: false path: '/x' }") is None


def test_metrics_use_tf_servings_names_without_total_suffix():
    metrics = Metrics()
    metrics.request("m", "predict", "REST", "OK", 0.002)
    metrics.request("m", "predict", "REST", "NOT_FOUND", 0.001)
    metrics.loaded("/models/m/1", 0.5, 0.0)
    text = metrics.exposition().decode()
    assert "# TYPE :tensorflow:serving:request_count counter" in text
    assert ':tensorflow:serving:request_count{model_name="m",status="OK"} 1' in text
    assert ':tensorflow:serving:request_count{model_name="m",status="NOT_FOUND"} 1' in text
    assert ':tensorflow:cc:saved_model:load_latency{model_path="/models/m/1"} 500000' in text
    assert "_total" not in text
    # latency is recorded for successful requests only, in microseconds; labels in declaration order and
    # counts as integers, as TF Serving's exporter prints them (prometheus_exporter.cc)
    assert ':tensorflow:serving:request_latency_count{model_name="m",API="predict",entrypoint="REST"} 1' in text
    assert ':tensorflow:serving:request_latency_sum{model_name="m",API="predict",entrypoint="REST"} 2000' in text
