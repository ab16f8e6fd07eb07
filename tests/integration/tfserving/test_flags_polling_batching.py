"""Issue 10: flag parsing, config-file polling and batching, against the server as a process and a container.

- tensorflow_serving/model_servers/main.cc + tensorflow/core/util/command_line_flags.cc: flag parsing;
- tensorflow_serving/model_servers/server.cc, Server::PollFilesystemAndReloadConfig: every poll reloads the file;
- tensorflow_serving/model_servers/server.cc (batching block), batching/batching_session.cc: batching.
"""

from __future__ import annotations

import concurrent.futures
import time

import grpc
import pytest
import requests
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

from .conftest import HP2_CPU, copy_model, seen_root, version_states, wait_for

METRIC = ":tensorflow:serving:batching_session:wrapped_run_count"


def _config_text(models: dict[str, str]) -> str:
    entries = "".join(
        f'config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
        for name, path in models.items()
    )
    return f"model_config_list {{\n{entries}}}\n"


def test_unknown_argument_is_reported_and_server_starts_with_default(launcher, tmp_path):
    # main.cc: `--rest_api_port 8501` leaves "8501" unknown -> "unknown argument: 8501" + usage, server starts.
    root = tmp_path / "models"
    copy_model(HP2_CPU, root / "hp")
    server = launcher(root, ["--model_name=hp", "--model_base_path={root}/hp", "--enable_batching", "extra_arg"])
    assert "unknown argument: extra_arg\nusage: tensorflow_model_server\nFlags:\n" in server.logs()
    assert version_states(server, "hp") == {123: "AVAILABLE"}


def test_config_file_poll_replaces_config_applied_over_grpc(launcher, kind, tmp_path):
    # server.cc PollFilesystemAndReloadConfig: ReloadConfig on every poll, changed file or not, so a config
    # applied over gRPC (HandleReloadConfigRequest) is replaced by the file's on the next poll.
    root = tmp_path / "models"
    copy_model(HP2_CPU, root / "a")
    copy_model(HP2_CPU, root / "b")
    seen = seen_root(kind, root)
    (root / "models.config").write_text(_config_text({"a": f"{seen}/a"}))
    server = launcher(root, ["--model_config_file={root}/models.config", "--model_config_file_poll_wait_seconds=2"])
    assert version_states(server, "a") == {123: "AVAILABLE"}
    time.sleep(3)  # past the first poll (a server that reloads only a changed file has now seen this one)
    new = model_server_config_pb2.ModelServerConfig()
    new.model_config_list.config.add(name="b", base_path=f"{seen}/b", model_platform="tensorflow")
    with grpc.insecure_channel(server.grpc_target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        resp = stub.HandleReloadConfigRequest(model_management_pb2.ReloadConfigRequest(config=new), timeout=60)
    assert resp.status.error_code == 0  # the gRPC config took effect (a unloaded, b loaded)...
    # ...until the next poll re-applies the unchanged file: b is unloaded and a serves again.
    wait_for(
        lambda: version_states(server, "a") == {123: "AVAILABLE"} and version_states(server, "b") != {123: "AVAILABLE"},
        timeout=30,
        what="the file's config re-applied",
    )


@pytest.fixture()
def batching_server(launcher, tmp_path):
    root = tmp_path / "models"
    copy_model(HP2_CPU, root / "hp")
    (root / "batching.txt").write_text(
        "max_batch_size { value: 4 }\nbatch_timeout_micros { value: 500000 }\n"
        "num_batch_threads { value: 1 }\nallowed_batch_sizes: 2\nallowed_batch_sizes: 4\n"
    )
    (root / "monitoring.config").write_text("prometheus_config { enable: true }\n")
    return launcher(
        root,
        [
            "--model_name=hp",
            "--model_base_path={root}/hp",
            "--enable_batching",
            "--batching_parameters_file={root}/batching.txt",
            "--monitoring_config_file={root}/monitoring.config",
        ],
    )


def _wrapped_runs(server) -> int:
    text = requests.get(f"{server.url}/monitoring/prometheus/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(METRIC + "{"):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def test_concurrent_predicts_run_as_one_batch(batching_server):
    url = f"{batching_server.url}/v1/models/hp:predict"
    before = _wrapped_runs(batching_server)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(requests.post, url, json={"instances": [float(i)]}, timeout=30) for i in range(4)]
        answers = [f.result() for f in futures]
    assert [a.status_code for a in answers] == [200] * 4
    assert [a.json()["predictions"] for a in answers] == [[2.0], [2.5], [3.0], [3.5]]  # half_plus_two
    assert 1 <= _wrapped_runs(batching_server) - before < 4  # batched session runs, fewer than requests


def test_request_larger_than_max_batch_size_is_refused(batching_server):
    url = f"{batching_server.url}/v1/models/hp:predict"
    resp = requests.post(url, json={"instances": [1.0, 2.0, 3.0, 4.0, 5.0]}, timeout=30)
    assert resp.status_code == 400
    assert resp.json() == {"error": "Task size 5 is larger than maximum input batch size 4"}
    # a padded single request: 3 rows run as 4, answers unchanged
    resp = requests.post(url, json={"instances": [1.0, 2.0, 3.0]}, timeout=30)
    assert resp.json()["predictions"] == [2.5, 3.0, 3.5]


def test_batching_file_without_enable_batching_fails_start(launcher, tmp_path):
    root = tmp_path / "models"
    copy_model(HP2_CPU, root / "hp")
    (root / "batching.txt").write_text("max_batch_size { value: 4 }\n")
    server = launcher(
        root,
        ["--model_name=hp", "--model_base_path={root}/hp", "--batching_parameters_file={root}/batching.txt"],
        wait=False,
    )
    wait_for(lambda: not server.alive(), timeout=60, what="server exit")
    assert (
        "Failed to start server. Error: INVALID_ARGUMENT: server_options.batching_parameters_file is set without "
        "setting server_options.enable_batching to true." in server.logs()
    )
