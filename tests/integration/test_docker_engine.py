"""A container on the real engine: started from a locally built image, reached over a published port, removed."""

from __future__ import annotations

import contextlib
import time
import uuid

import docker.errors
import pytest
import requests

IMAGE = "local/python:3.11-bookworm"


def test_container_serves_on_a_published_loopback_port_and_is_removed(docker_client):
    name = f"tfdeploy-test-{uuid.uuid4().hex[:8]}"
    container = docker_client.containers.run(
        IMAGE,
        ["python3", "-c", "import http.server as h; h.test(h.SimpleHTTPRequestHandler, port=8000, bind='0.0.0.0')"],
        name=name,
        detach=True,
        init=True,
        ports={"8000/tcp": ("127.0.0.1", None)},
        working_dir="/etc",
    )
    try:
        container.reload()
        host_port = container.ports["8000/tcp"][0]["HostPort"]
        deadline = time.monotonic() + 30
        while True:
            try:
                resp = requests.get(f"http://127.0.0.1:{host_port}/os-release", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        assert resp.status_code == 200
        assert "bookworm" in resp.text
        assert container.ports["8000/tcp"][0]["HostIp"] == "127.0.0.1"
    finally:
        container.remove(force=True)
    try:
        docker_client.containers.get(name)
        raise AssertionError(f"container {name} still exists after removal")
    except docker.errors.NotFound:
        pass


def test_local_images_were_built_without_a_registry(docker_client):
    image = docker_client.images.get(IMAGE)
    assert image.labels.get("tfdeploy.inputs"), "image lacks the build-input hash label set by build_images.sh"


def test_make_down_removes_only_this_checkouts_serving_containers(docker_client, settings):
    import stack

    labels = {"tfdeploy.serving.managed": "true"}
    ours = docker_client.containers.run(
        IMAGE,
        ["sleep", "300"],
        detach=True,
        init=True,
        name=f"tfdeploy-test-ours-{uuid.uuid4().hex[:6]}",
        labels={**labels, "tfdeploy.serving.model-root": str(settings.state_dir / "serving" / "x")},
    )
    theirs = docker_client.containers.run(
        IMAGE,
        ["sleep", "300"],
        detach=True,
        init=True,
        name=f"tfdeploy-test-theirs-{uuid.uuid4().hex[:6]}",
        labels={**labels, "tfdeploy.serving.model-root": "/elsewhere/.state/serving/x"},
    )
    try:
        removed = stack.stop_serving_containers(settings)
        assert ours.name in removed and theirs.name not in removed
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(ours.name)
        assert docker_client.containers.get(theirs.name).status == "running"
    finally:
        for c in (ours, theirs):
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True)
