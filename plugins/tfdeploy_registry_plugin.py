"""Airflow plugin: serves the model registry inside the api-server at /registry and links it from the
navigation, so `make up` needs no extra process."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tfdeploy.registry.api import create_app


class TfdeployRegistryPlugin(AirflowPlugin):
    name = "tfdeploy_registry"
    fastapi_apps = [{"app": create_app(), "url_prefix": "/registry", "name": "Model registry"}]
    external_views = [
        {"name": "Model registry", "href": "/registry/", "destination": "nav", "url_route": "model-registry"}
    ]
