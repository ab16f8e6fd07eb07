"""ServingHostHook + TFServingHook against the real Docker engine and the serving image (SERVING_IMAGE_TAG).

One server container for the module, driven as the pipeline drives it: stage a version, write the config,
ensure the server, reload (versions, then labels), wait for AVAILABLE / unloaded, predict. Every container
started here is removed at the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from pathlib import Path
from types import SimpleNamespace

import docker.errors
import pytest

from tfdeploy.core.errors import (
    ServerNotFound,
    ServerStartError,
    ServingReloadError,
    ServingRequestError,
    ServingUnavailable,
    VersionNotAvailable,
)
from tfdeploy.core.models_config import ServedModel, build_model_config
from tfdeploy.hooks.serving_host import ServingHostHook
from tfdeploy.hooks.tfserving import TFServingHook

ROOT = Path(__file__).resolve().parents[2]
TESTDATA = ROOT / "tests" / "data" / "tfserving-testdata"
HP_V1 = TESTDATA / "saved_model_half_plus_two_2_versions" / "00000123"
HP_V2 = TESTDATA / "saved_model_half_plus_two_2_versions" / "00000124"
BAD = TESTDATA / "bad_half_plus_two" / "00000123"
IMAGE = os.environ.get("SERVING_IMAGE_TAG", "local/tfserving-compat:latest")
MODEL = "hp"
DEADLINE = 90.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def container_names(docker_client):
    """Names of containers the tests start; all are removed at module end."""
    names: list[str] = []
    yield names
    for name in names:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.containers.get(name).remove(force=True)


def new_name(names: list[str]) -> str:
    name = f"tfdeploy-test-serving-{uuid.uuid4().hex[:8]}"
    names.append(name)
    return name


@pytest.fixture(scope="module")
def host(settings, tmp_path_factory, docker_client):
    docker_client.images.get(IMAGE)  # built by `make setup`
    hook = ServingHostHook(model_root=str(tmp_path_factory.mktemp("model-root")), base_url=settings.docker_host)
    yield hook
    hook.close()


def served(host: ServingHostHook, versions: tuple[int, ...], labels: dict[str, int] | None = None) -> ServedModel:
    return ServedModel(MODEL, host.container_base_path(MODEL), versions, labels or {})


def apply(host: ServingHostHook, serving: TFServingHook, *models: ServedModel) -> None:
    """What the pipeline does: the file (so a restarted container gets it) and a reload (so the running one does)."""
    config = build_model_config(models)
    host.write_config(config)
    serving.reload(config, timeout=DEADLINE)


@pytest.fixture(scope="module")
def server(host, container_names) -> SimpleNamespace:
    assert host.stage_version(HP_V1, MODEL, 1) == "/models/hp"
    assert host.write_config(build_model_config([served(host, (1,))])) == "/models/models.config"
    name = new_name(container_names)
    grpc_port, rest_port = free_port(), free_port()
    first = host.ensure_server(name=name, image=IMAGE, grpc_port=grpc_port, rest_port=rest_port)
    assert first.created
    again = host.ensure_server(name=name, image=IMAGE, grpc_port=grpc_port, rest_port=rest_port)
    assert (again.created, again.container_id) == (False, first.container_id)
    # A changed argument replaces the container. --max_num_load_retries=0 makes a broken version fail fast.
    replaced = host.ensure_server(
        name=name, image=IMAGE, grpc_port=grpc_port, rest_port=rest_port, extra_args=("--max_num_load_retries=0",)
    )
    assert replaced.created and replaced.container_id != first.container_id
    return SimpleNamespace(
        name=replaced.name,
        container_id=replaced.container_id,
        grpc_target=f"127.0.0.1:{grpc_port}",
        rest_url=f"http://127.0.0.1:{rest_port}",
    )


@pytest.fixture(scope="module")
def serving(server):
    hook = TFServingHook(grpc_target=server.grpc_target, rest_url=server.rest_url, timeout=30)
    yield hook
    hook.close()


def test_container_runs_the_image_with_the_contract(server, docker_client, host):
    container = docker_client.containers.get(server.name)
    assert container.status == "running"
    assert container.image.id == docker_client.images.get(IMAGE).id
    args = container.attrs["Args"]
    assert "--model_config_file=/models/models.config" in args
    assert "--model_config_file_poll_wait_seconds=0" in args
    assert "--allow_version_labels_for_unavailable_models=true" in args  # a restart keeps the file's labels
    assert args[-1] == "--max_num_load_retries=0"
    assert container.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    mounts = {m["Destination"]: m["Source"] for m in container.attrs["Mounts"]}
    assert mounts["/models"] == str(host.model_root)
    bindings = container.attrs["HostConfig"]["PortBindings"]
    assert {b["HostIp"] for k in ("8500/tcp", "8501/tcp") for b in bindings[k]} == {"127.0.0.1"}
    assert "tfdeploy.serving.spec-hash" in container.labels
    assert host.server_logs(server.name, tail=5).strip()


def test_predict_and_metadata(serving):
    assert serving.is_ready()
    assert serving.predict(MODEL, [[1.0]]) == {"predictions": [[2.5]]}
    assert serving.predict(MODEL, [1.0, 2.0], version=1) == {"predictions": [2.5, 3.0]}
    meta = serving.metadata(MODEL, version=1)
    assert meta["model_spec"]["version"] == "1"
    assert "serving_default" in meta["metadata"]["signature_def"]["signature_def"]
    assert serving.model_status(MODEL) == {1: ("AVAILABLE", "")}
    assert serving.model_status("no-such-model") == {}


def test_rest_errors_carry_tf_servings_message(serving):
    with pytest.raises(ServingRequestError) as err:
        serving.predict("no-such-model", [[1.0]])
    assert err.value.status_code == 404
    assert "Servable not found for request" in err.value.error
    with pytest.raises(ServingRequestError) as err:
        serving.predict(MODEL, [[1.0]], label="nope")
    assert err.value.status_code == 400
    assert "Unrecognized servable version label: nope" in err.value.error
    with pytest.raises(ServingRequestError) as err:
        serving.predict(MODEL, [[1.0]], signature_name="nope")
    assert err.value.status_code == 400 and "nope" in str(err.value)
    with pytest.raises(ValueError, match="not both"):
        serving.predict(MODEL, [[1.0]], version=1, label="x")


def test_unreachable_server(server):
    hook = TFServingHook(grpc_target=f"127.0.0.1:{free_port()}", rest_url=f"http://127.0.0.1:{free_port()}", timeout=3)
    assert not hook.is_ready()
    with pytest.raises(ServingUnavailable) as err:
        hook.predict(MODEL, [[1.0]])
    assert err.value.status_code is None
    with pytest.raises(ServingReloadError) as rerr:
        hook.reload(build_model_config([ServedModel(MODEL, "/models/hp", (1,))]), timeout=3)
    assert rerr.value.code in ("UNAVAILABLE", "DEADLINE_EXCEEDED")


def test_new_version_then_label_then_retire_the_old_one(host, serving):
    assert host.stage_version(HP_V2, MODEL, 2) == "/models/hp"
    apply(host, serving, served(host, (1, 2)))
    serving.wait_until_available(MODEL, 2, deadline_s=DEADLINE)
    # Labels need the version AVAILABLE first: this is the second reload.
    apply(host, serving, served(host, (1, 2), {"stable": 1, "canary": 2}))
    assert serving.predict(MODEL, [[1.0]], label="canary") == {"predictions": [[2.5]]}
    assert serving.metadata(MODEL, label="canary")["model_spec"]["version"] == "2"
    assert serving.metadata(MODEL, label="stable")["model_spec"]["version"] == "1"
    # Retire version 1.
    apply(host, serving, served(host, (2,)))
    serving.wait_until_unloaded(MODEL, 1, deadline_s=DEADLINE)
    assert serving.model_status(MODEL) == {2: ("AVAILABLE", ""), 1: ("END", "")}
    assert serving.predict(MODEL, [[3.0]]) == {"predictions": [[3.5]]}
    host.remove_staged(MODEL, 1)
    assert not (host.model_root / MODEL / "1").exists()
    # the file on disk is what the last reload sent
    assert host.read_config() == [served(host, (2,))]


def test_a_retired_version_can_come_back(host, serving):
    # Version 1 is listed as END (unloaded earlier): waiting must not take that stale END as a failure.
    assert serving.model_status(MODEL)[1] == ("END", "")
    host.stage_version(HP_V1, MODEL, 1)
    apply(host, serving, served(host, (1, 2)))
    serving.wait_until_available(MODEL, 1, deadline_s=DEADLINE)
    assert serving.predict(MODEL, [[1.0]], version=1) == {"predictions": [[2.5]]}
    apply(host, serving, served(host, (2,)))
    serving.wait_until_unloaded(MODEL, 1, deadline_s=DEADLINE)


def test_the_container_accepts_labels_for_versions_not_yet_available(host, serving):
    # The pipeline's containers run with --allow_version_labels_for_unavailable_models=true, so that a restarted
    # container accepts the labels in models.config (TF Serving assigns them before loading at start-up); the
    # refusal without the flag is covered by the stand-in's conformance tests (tfserving/test_grpc_api.py).
    serving.reload(build_model_config([served(host, (2, 4), {"canary": 4})]))  # version 4 is not even staged
    with pytest.raises(ServingRequestError) as err:
        serving.predict(MODEL, [[1.0]], label="canary")
    assert err.value.status_code == 404
    assert serving.predict(MODEL, [[1.0]], version=2) == {"predictions": [[2.5]]}  # version 2 serves on
    apply(host, serving, served(host, (2,)))


def test_invalid_config_is_refused_with_invalid_argument(serving):
    config = build_model_config([ServedModel(MODEL, "/models/hp", (2,))])
    config.model_config_list.config[0].base_path = "relative/hp"  # bypass the client-side check
    with pytest.raises(ServingReloadError) as err:
        serving.reload(config)
    assert err.value.code == "INVALID_ARGUMENT"
    assert "absolute path" in err.value.details


def test_broken_version_ends_with_its_load_error(host, serving):
    host.stage_version(BAD, MODEL, 3)
    apply(host, serving, served(host, (2, 3)))
    with pytest.raises(VersionNotAvailable) as err:
        serving.wait_until_available(MODEL, 3, deadline_s=DEADLINE)
    assert err.value.state == "END"
    assert err.value.error_message
    assert "reached END with error" in str(err.value) and err.value.error_message in str(err.value)
    assert serving.predict(MODEL, [[1.0]]) == {"predictions": [[2.5]]}  # version 2 keeps serving
    apply(host, serving, served(host, (2,)))
    serving.wait_until_unloaded(MODEL, 3, deadline_s=DEADLINE)
    host.remove_staged(MODEL, 3)


def test_wait_until_available_times_out_for_a_version_never_staged(host, serving):
    apply(host, serving, served(host, (2, 9)))
    with pytest.raises(VersionNotAvailable) as err:
        serving.wait_until_available(MODEL, 9, deadline_s=2, poll_interval_s=0.2)
    assert "was not AVAILABLE after 2s" in str(err.value)
    apply(host, serving, served(host, (2,)))


def test_ensure_server_reports_a_server_that_cannot_start(settings, tmp_path, container_names):
    host = ServingHostHook(model_root=str(tmp_path / "root"), base_url=settings.docker_host)
    with pytest.raises(ServerStartError, match="call write_config"):
        host.ensure_server(name=new_name(container_names), image=IMAGE, grpc_port=free_port(), rest_port=free_port())
    host.stage_version(BAD, "broken", 1)
    host.write_config(build_model_config([ServedModel("broken", "/models/broken", (1,))]))
    name = new_name(container_names)
    with pytest.raises(ServerStartError) as err:
        host.ensure_server(
            name=name,
            image=IMAGE,
            grpc_port=free_port(),
            rest_port=free_port(),
            extra_args=("--max_num_load_retries=0",),
            start_timeout_s=DEADLINE,
        )
    assert "last log lines" in str(err.value)
    assert "broken" in str(err.value)
    host.stop_server(name)
    with pytest.raises(ServerNotFound):
        host.server_logs(name)
    host.stop_server(name)  # no-op when absent
