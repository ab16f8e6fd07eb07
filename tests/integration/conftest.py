"""Integration tests run against the real stack that `make up` started; they fail (not skip) without it."""

from __future__ import annotations

import pytest

import stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def hdfs_ready(settings) -> None:
    state = stack._namenode_state(settings)
    assert state["FSState"] == "Operational" and state["NumLiveDataNodes"] >= 1, (
        f"HDFS is not ready ({state.get('FSState')}, {state.get('NumLiveDataNodes')} DataNodes): run `make up`"
    )


@pytest.fixture(scope="session")
def docker_client(settings):
    import docker

    client = docker.DockerClient(base_url=settings.docker_host, timeout=30)
    assert client.ping(), f"no Docker engine at {settings.docker_host}: run `make up`"
    yield client
    client.close()


@pytest.fixture(scope="session")
def airflow(settings):
    from tfdeploy.airflow_client import AirflowClient

    return AirflowClient(settings.airflow_url, settings.airflow_user, settings.airflow_password)
