"""tensorflow_model_server's command line (flags.py, server.main) and the batching layer (batching.py).

Each test names the TF Serving / TensorFlow source it follows:
- tensorflow/core/util/command_line_flags.cc (Flags::Parse, ParseBoolFlag, ParseInt32Flag, Flags::Usage)
- tensorflow_serving/model_servers/main.cc (usage + return -1, `unknown argument: `)
- tensorflow_serving/model_servers/server.cc (Server::BuildAndStart checks)
- tensorflow_serving/batching/batching_session.cc, batching_util.cc; shared_batch_scheduler.h
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "include"))

from tfserving_compat import batching, flags, server  # noqa: E402
from tfserving_compat import config as cfg  # noqa: E402
from tfserving_compat.errors import InvalidArgument, ServingError  # noqa: E402

# --------------------------------------------------------------------------- command_line_flags.cc


def test_values_only_as_name_equals_value():
    # ParseInt32Flag/ParseStringFlag: "--" + name + "=" + value; `--rest_api_port 8501` is two unknown arguments.
    r = flags.parse(["--rest_api_port", "8501", "--model_name=m", "--port=9000"])
    assert r.ok and r.unknown == ["--rest_api_port", "8501"]
    assert (r.flags.rest_api_port, r.flags.model_name, r.flags.port) == (0, "m", 9000)


@pytest.mark.parametrize(
    ("arg", "ok", "value"),
    [
        ("--enable_batching", True, True),
        ("--enable_batching=true", True, True),
        ("--enable_batching=false", True, False),
        ("--enable_batching=1", False, None),  # ParseBoolFlag: only "", "=true", "=false"
        ("--enable_batching=True", False, None),
        ("--enable_batchingX", False, None),  # the bool flag claims any argument it prefixes
    ],
)
def test_booleans_as_parse_bool_flag(arg, ok, value):
    r = flags.parse([arg])
    assert r.ok is ok and r.unknown == []
    if ok:
        assert r.flags.enable_batching is value


def test_absl_no_prefix_is_not_a_tensorflow_flag():
    r = flags.parse(["--noenable_model_warmup"])
    assert r.ok and r.unknown == ["--noenable_model_warmup"] and r.flags.enable_model_warmup is True


@pytest.mark.parametrize(
    ("arg", "ok", "value"),
    [
        ("--port=12", True, 12),
        ("--port= +7", True, 7),
        ("--port=-3", True, -3),
        ("--port=12x", False, None),
        ("--port=", False, None),
        ("--port=1.5", False, None),
        ("--port=4294967297", True, 1),
    ],
)
def test_int32_values_as_sscanf(arg, ok, value):
    r = flags.parse([arg])
    assert r.ok is ok
    if ok:
        assert r.flags.port == value


def test_double_dash_and_help():
    r = flags.parse(["--model_name=a", "--", "--model_name=b"])
    assert r.ok and r.unknown == ["--", "--model_name=b"] and r.flags.model_name == "a"
    assert flags.parse(["--help"]).ok is False  # Flags::Parse: false when the first unknown is --help
    assert flags.parse(["--x", "--help"]).ok is True


def test_defaults_are_server_h_options():
    r = flags.parse([])
    f = r.flags
    assert (f.port, f.rest_api_port, f.model_name, f.model_base_path) == (8500, 0, "default", "")
    assert (f.file_system_poll_wait_seconds, f.model_config_file_poll_wait_seconds) == (1, 0)
    assert (f.max_num_load_retries, f.load_retry_interval_micros, f.num_load_threads) == (5, 60_000_000, 0)
    assert f.enable_model_warmup is True and f.enable_batching is False and f.batching_parameters_file == ""
    assert f.saved_model_tags == "serve" and f.bind_address == "0.0.0.0"
    assert len(flags.FLAGS) == 48  # main.cc's flag_list


def test_usage_is_flags_usage_format():
    text = flags.usage()
    lines = text.splitlines()
    assert lines[:2] == ["usage: tensorflow_model_server", "Flags:"]
    assert lines[2] == (
        "\t--port=8500                      \tint32\t"
        "TCP port to listen on for gRPC/HTTP API. Disabled if port set to zero."
    )
    assert '\t--model_name="default"' in text and "\t--enable_batching=false          \tbool\tenable batching" in text
    assert "--per_process_gpu_memory_fraction=0.000000" in text and lines[-1].startswith("\t--bind_address=")


# --------------------------------------------------------------------------- main.cc


def test_main_value_error_prints_usage_and_returns_255(capsys, caplog):
    assert server.main(["--enable_batching=1"]) == 255
    assert capsys.readouterr().out.startswith("usage: tensorflow_model_server\nFlags:\n")
    assert "Couldn't interpret value =1 for flag enable_batching." in caplog.text


def test_main_port_zero_is_refused_as_server_cc(capsys):
    assert server.main(["--port=0", "--model_base_path=/nonexistent", "--rest_api_port", "8501"]) == 255
    out = capsys.readouterr().out
    assert out.startswith("unknown argument: --rest_api_port\nusage: tensorflow_model_server\n")
    assert out.endswith(
        "Failed to start server. Error: INVALID_ARGUMENT: At least one of server_options.grpc_port or "
        "server_options.grpc_socket_path must be set.\n"
    )


def test_main_without_model_is_refused_as_server_cc(capsys):
    assert server.main(["--port=1"]) == 255
    assert capsys.readouterr().out == (
        "Failed to start server. Error: INVALID_ARGUMENT: Both server_options.model_base_path and "
        "server_options.model_config_file are empty!\n"
    )


# --------------------------------------------------------------------------- server.cc batching block


def test_batching_file_without_enable_batching_is_refused(tmp_path):
    path = tmp_path / "b.txt"
    path.write_text("max_batch_size { value: 4 }")
    f = flags.parse([f"--batching_parameters_file={path}"]).flags
    with pytest.raises(InvalidArgument, match="batching_parameters_file is set without setting"):
        server.build_batching(f)
    f = flags.parse([f"--batching_parameters_file={path}", "--enable_batching"]).flags
    assert server.build_batching(f).max_batch_size.value == 4
    assert server.build_batching(flags.parse(["--enable_batching"]).flags).thread_pool_name.value == (
        "model_server_batch_threads"
    )


def test_batching_file_errors(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("max_batch_size: 4")  # a wrapper message, not a scalar
    with pytest.raises(InvalidArgument, match="Invalid protobuf file"):
        cfg.read_batching_parameters(str(bad))
    with pytest.raises(ServingError, match="No such file or directory"):
        cfg.read_batching_parameters(str(tmp_path / "missing.txt"))
    params = cfg.BatchingParameters()
    params.max_batch_size.value = 8
    params.allowed_batch_sizes.extend([2, 4])
    with pytest.raises(
        InvalidArgument,
        match="Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8",
    ):
        batching.BatchingOptions.from_proto(params, 1).validate()
    params.num_batch_threads.value = 0
    params.allowed_batch_sizes.append(8)
    with pytest.raises(InvalidArgument, match="num_batch_threads must be positive; was 0"):
        batching.BatchingOptions.from_proto(params, 1).validate()


# --------------------------------------------------------------------------- batching_session.cc


class _Owner:  # a model version stands here (queues are kept per owner, weakly)
    pass


def _run_concurrently(scheduler, inputs, runner):
    results: dict[int, object] = {}

    def call(i, x):
        try:
            results[i] = scheduler.run(_Owner, "sig", runner, ["x:0"], [x])
        except ServingError as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i, x)) for i, x in enumerate(inputs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return [results[i] for i in range(len(inputs))]


def test_concurrent_tasks_run_as_one_padded_batch_and_split_back():
    seen = []

    def runner(x):
        seen.append(x.shape[0])
        return [x * 2, np.full((x.shape[0],), x.shape[0])]

    scheduler = batching.Scheduler(
        batching.BatchingOptions(max_batch_size=4, batch_timeout_micros=300_000, allowed_batch_sizes=(4,))
    )
    try:
        out = _run_concurrently(scheduler, [np.array([[1.0]]), np.array([[2.0]]), np.array([[3.0]])], runner)
    finally:
        scheduler.stop()
    assert seen == [4]  # 3 rows padded to the allowed size 4, one session run
    assert [o[0].tolist() for o in out] == [[[2.0]], [[4.0]], [[6.0]]]
    assert [o[1].tolist() for o in out] == [[4], [4], [4]]
    assert scheduler.wrapped_run_count == 1
    assert b":tensorflow:serving:batching_session:wrapped_run_count{} 1" in scheduler.exposition()


def test_task_larger_than_max_batch_size_is_refused():
    scheduler = batching.Scheduler(batching.BatchingOptions(max_batch_size=2))
    try:
        (err,) = _run_concurrently(scheduler, [np.zeros((3, 1))], lambda x: [x])
    finally:
        scheduler.stop()
    assert isinstance(err, InvalidArgument)
    assert err.message == "Task size 3 is larger than maximum input batch size 2"
    assert scheduler.wrapped_run_count == 0
