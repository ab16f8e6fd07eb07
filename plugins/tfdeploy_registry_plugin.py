"""Airflow plugin: serves the model registry inside the api-server at /registry and links it from the
navigation, so `make up` needs no extra process.

The registry keeps each model's rate limit; the router applies it. This file, where the api-server composes the
registry, hands the registry a sink that sets the limit in the `local` target's router (RouterHook, the runtime
API: no reload): a limit the router refuses is not stored."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from tfdeploy.registry.api import create_app


def apply_rate_limit(model: str, rps: float | None) -> None:
    from tfdeploy.hooks.router import RouterHook
    from tfdeploy.services.targets import get_target

    RouterHook(get_target("local").router_conn_id).set_limit(model, rps)


class TfdeployRegistryPlugin(AirflowPlugin):
    name = "tfdeploy_registry"
    fastapi_apps = [
        {"app": create_app(rate_limit_sink=apply_rate_limit), "url_prefix": "/registry", "name": "Model registry"}
    ]
    external_views = [
        {"name": "Model registry", "href": "/registry/", "destination": "nav", "url_route": "model-registry"}
    ]
