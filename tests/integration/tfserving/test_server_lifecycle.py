"""Start-up, config-file polling and the image contract (spec sections 2, 3 and 6)."""

from __future__ import annotations

import socket
import time

import requests

from .conftest import HP2_2V, IMAGE, answers, copy_model, free_port, start_server, version_states, wait_for, wait_ready


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_ports_open_only_once_every_model_is_available(tmp_path):
    root = tmp_path / "models"
    (root / "m").mkdir(parents=True)
    server = start_server("process", root, ["--model_name=m", "--model_base_path={root}/m"], tmp_path, wait=False)
    try:
        time.sleep(6)  # TensorFlow imported and the first polls done, but there is no version yet
        assert server.alive()
        assert not _port_open(server.rest_port) and not _port_open(server.grpc_port)
        copy_model(HP2_2V, root / "m", ["00000123"])
        wait_ready(server)
        assert _port_open(server.grpc_port)
        assert version_states(server, "m") == {123: "AVAILABLE"}
    finally:
        server.stop()


def test_startup_config_with_labels_fails_without_the_allow_flag(tmp_path):
    root = tmp_path / "models"
    copy_model(HP2_2V, root / "m", ["00000123"])
    (root / "models.config").write_text(
        f"model_config_list {{ config {{ name: 'm' base_path: '{root}/m' model_platform: 'tensorflow' "
        "version_labels { key: 'stable' value: 123 } } }"
    )
    server = start_server("process", root, ["--model_config_file={root}/models.config"], tmp_path, wait=False)
    try:
        assert server.proc is not None
        assert server.proc.wait(timeout=60) != 0
        assert "Request to assign label to version 123 of model m, which is not currently available" in server.logs()
    finally:
        server.stop()


def test_unknown_flags_are_reported_not_fatal(tmp_path):
    root = tmp_path / "models"
    copy_model(HP2_2V, root / "m", ["00000123"])
    server = start_server(
        "process",
        root,
        ["--model_name=m", "--model_base_path={root}/m", "--tensorflow_session_parallelism=2", "--no_such_flag=2"],
        tmp_path,
    )
    try:
        # main.cc: the first argument no flag takes is printed with the usage; the server starts anyway.
        # --tensorflow_session_parallelism is one of TF Serving's flags: taken, not reported.
        assert "unknown argument: --no_such_flag=2\nusage: tensorflow_model_server\n" in server.logs()
        assert "unknown argument: --tensorflow_session_parallelism" not in server.logs()
        assert version_states(server, "m") == {123: "AVAILABLE"}
    finally:
        server.stop()


def test_config_file_is_polled_and_a_bad_file_keeps_the_previous_state(tmp_path):
    root = tmp_path / "models"
    copy_model(HP2_2V, root / "a", ["00000123"])
    copy_model(HP2_2V, root / "b", ["00000124"])
    config = root / "models.config"
    entry = "config {{ name: '{0}' base_path: '{1}/{0}' model_platform: 'tensorflow' }}"
    config.write_text(f"model_config_list {{ {entry.format('a', root)} }}")
    server = start_server(
        "process",
        root,
        ["--model_config_file={root}/models.config", "--model_config_file_poll_wait_seconds=1"],
        tmp_path,
    )
    try:
        config.write_text(f"model_config_list {{ {entry.format('a', root)} {entry.format('b', root)} }}")
        wait_for(lambda: version_states(server, "b") == {124: "AVAILABLE"}, what="b added by polling")
        config.write_text("this is not a model config")
        time.sleep(2.5)
        assert version_states(server, "a") == {123: "AVAILABLE"}
        assert version_states(server, "b") == {124: "AVAILABLE"}
        assert "Failed to read ModelServerConfig file: " in server.logs()  # server.cc PollFilesystemAndReloadConfig
    finally:
        server.stop()


def test_image_contract_model_name_env_extra_args_and_prompt_stop(tmp_path, docker_client_or_none, serving_image):
    client = docker_client_or_none
    root = tmp_path / "models"
    copy_model(HP2_2V, root / "hp", ["00000123"])
    rest = free_port()
    container = client.containers.run(
        IMAGE,
        detach=True,
        environment={"MODEL_NAME": "hp"},
        ports={"8501/tcp": ("127.0.0.1", rest)},
        volumes={str(root): {"bind": "/models", "mode": "ro"}},
    )
    try:
        url = f"http://127.0.0.1:{rest}"
        wait_for(lambda: answers(f"{url}/v1/models/hp"), timeout=60, what="REST API")
        resp = requests.post(f"{url}/v1/models/hp:predict", json={"instances": [[1.0]]}, timeout=10)
        assert resp.json() == {"predictions": [[2.5]]}
        t0 = time.monotonic()
        container.stop(timeout=10)
        stopped_in = time.monotonic() - t0
        container.reload()
        # exit 0 means the server handled SIGTERM; 137 would mean docker killed it after the grace period
        assert container.attrs["State"]["ExitCode"] == 0, (stopped_in, container.logs()[-2000:])
    finally:
        container.remove(force=True)
    # extra arguments are appended: --model_config_file wins over MODEL_NAME
    (root / "models.config").write_text(
        "model_config_list { config { name: 'viaconfig' base_path: '/models/hp' model_platform: 'tensorflow' } }"
    )
    rest = free_port()
    container = client.containers.run(
        IMAGE,
        ["--model_config_file=/models/models.config"],
        detach=True,
        ports={"8501/tcp": ("127.0.0.1", rest)},
        volumes={str(root): {"bind": "/models", "mode": "ro"}},
    )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{rest}/v1/models/x"), timeout=60, what="REST API")
        resp = requests.get(f"http://127.0.0.1:{rest}/v1/models/viaconfig", timeout=10)
        assert resp.status_code == 200, container.logs()[-2000:]
        assert container.attrs["Config"]["ExposedPorts"].keys() >= {"8500/tcp", "8501/tcp"}
    finally:
        container.remove(force=True)
