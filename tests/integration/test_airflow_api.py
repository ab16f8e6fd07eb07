"""Airflow through its REST API: authentication, and a DAG run carried to success by the real scheduler."""

from __future__ import annotations

import uuid

import pytest
import requests

from tfdeploy.airflow_client import AirflowApiError, AirflowClient


def test_token_is_issued_for_the_configured_credentials(airflow, settings):
    resp = requests.post(
        f"{settings.airflow_url}/auth/token",
        json={"username": settings.airflow_user, "password": settings.airflow_password},
        timeout=10,
    )
    assert resp.status_code == 201
    assert resp.json()["access_token"].count(".") == 2  # a JWT


def test_wrong_password_and_missing_token_are_refused(settings):
    with pytest.raises(AirflowApiError, match="401"):
        AirflowClient(settings.airflow_url, settings.airflow_user, "not-the-password").token()
    assert requests.get(f"{settings.airflow_url}/api/v2/dags", timeout=10).status_code == 401


def test_stack_check_triggered_over_rest_reaches_success(airflow):
    airflow.wait_for_dag("stack_check")
    airflow.unpause("stack_check")
    run_id = f"test_{uuid.uuid4().hex[:10]}"
    run = airflow.trigger("stack_check", conf={"note": "from the test suite"}, run_id=run_id)
    assert run["dag_run_id"] == run_id
    final = airflow.wait_for_run("stack_check", run_id, timeout=180)
    states = {ti["task_id"]: ti["state"] for ti in airflow.task_instances("stack_check", run_id)}
    assert final["state"] == "success", states
    assert states == {"hdfs_roundtrip": "success", "docker_engine": "success"}
    assert final["conf"] == {"note": "from the test suite"}


def test_conf_breaking_a_param_is_refused_with_its_message(airflow):
    airflow.wait_for_dag("stack_check")
    with pytest.raises(AirflowApiError, match="400"):
        airflow.trigger("stack_check", conf={"note": "x" * 500})
