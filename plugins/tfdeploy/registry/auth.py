"""Who may read and write the registry.

Airflow serves plugin FastAPI apps without authenticating them, so the registry checks credentials itself:
 - the pipeline's service token (REGISTRY_API_TOKEN, the `tfdeploy_registry` Connection's password), compared in
   constant time: the principal ``tfdeploy-service``, allowed every write. It acts for Airflow runs: what it
   records names the run's triggering user, looked up server-side (never a name the client sends);
 - Airflow's own JWT (``POST /auth/token``, or the UI's ``_token`` cookie), validated by Airflow's auth manager.
   Reads need any authenticated user (or none with REGISTRY_PUBLIC_READS). Writes are decided by Airflow's auth
   manager: a user may change the registry where Airflow lets them trigger the DAG the change belongs to
   (``model_deploy``, or ``model_rollback`` for starting a rollback): with the simple auth manager the roles User,
   Op and Admin, not Viewer; with FAB, a role with "can create" on DAG Runs and "can edit" on that DAG.

Writes with the UI's cookie (no Authorization header) also need the ``X-CSRF-Token`` header, the HMAC of that
cookie under the service token that only a same-origin page can read (``GET /registry/config.json``): another
site's form or script cannot make a signed-in browser write. GETs that need write access (the replica logs)
change nothing and their answers are unreadable to another site, so they need no CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from tfdeploy.core.errors import Forbidden, Unauthorized

from .config import RegistryConfig

COOKIE = "_token"  # Airflow UI's JWT cookie
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = ("GET", "HEAD")  # change nothing: no CSRF token needed
SERVICE = "tfdeploy-service"  # the pipeline's principal (the service token)
DEPLOY_DAG = "model_deploy"
ROLLBACK_DAG = "model_rollback"


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str  # "service", "airflow" or "anonymous"
    user: Any = field(default=None, compare=False, repr=False)  # Airflow's user object (kind "airflow")


# (Airflow user, DAG id) -> may this user trigger that DAG? The default asks Airflow's auth manager.
Authorizer = Callable[[Any, str], Awaitable[bool] | bool]


def csrf_token(config: RegistryConfig, cookie: str) -> str:
    """The CSRF token of a UI session: bound to its cookie, keyed by a secret only the server knows."""
    key = (config.api_token or "tfdeploy-registry").encode()
    return hmac.new(key, b"csrf:" + cookie.encode(), hashlib.sha256).hexdigest()


def _bearer(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    return header[7:].strip() if header.lower().startswith("bearer ") else ""


async def _from_token(token: str, config: RegistryConfig) -> Principal:
    if config.api_token and hmac.compare_digest(token.encode(), config.api_token.encode()):
        return Principal(SERVICE, "service")
    try:
        from airflow.api_fastapi.app import create_auth_manager
        from jwt import ExpiredSignatureError, InvalidTokenError
    except ImportError as exc:  # standalone without Airflow installed
        raise Forbidden(
            f"token is not the registry's service token and Airflow JWTs cannot be checked here: {exc}"
        ) from exc
    try:
        user = await create_auth_manager().get_user_from_token(token)
    except ExpiredSignatureError:
        raise Unauthorized("token expired: get a new one from POST /auth/token") from None
    except InvalidTokenError:
        raise Forbidden("invalid token: neither the registry's service token nor a valid Airflow JWT") from None
    return Principal(f"airflow:{user.get_name()}", "airflow", user)


async def airflow_may_trigger(user: Any, dag_id: str) -> bool:
    """Airflow's auth manager: may ``user`` trigger runs of ``dag_id``?"""
    from airflow.api_fastapi.app import create_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return bool(
        create_auth_manager().is_authorized_dag(
            method="POST", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
        )
    )


def require_read(config: RegistryConfig):
    async def dependency(request: Request) -> Principal:
        token = _bearer(request) or request.cookies.get(COOKIE, "")
        if not token:
            if config.public_reads:
                return Principal("anonymous", "anonymous")
            raise Unauthorized("missing bearer token: send `Authorization: Bearer <token>` (Airflow JWT or API token)")
        return await _from_token(token, config)

    return dependency


def require_write(config: RegistryConfig, dag_id: str = DEPLOY_DAG, authorize: Authorizer | None = None):
    """A write: the service token, or an Airflow user whom the auth manager lets trigger ``dag_id``."""
    check = authorize or airflow_may_trigger

    async def dependency(request: Request) -> Principal:
        token = _bearer(request)
        if not token:
            cookie = request.cookies.get(COOKIE, "")
            if not cookie:
                raise Unauthorized("writes need `Authorization: Bearer <token>` (an Airflow JWT or the service token)")
            sent = request.headers.get(CSRF_HEADER, "")
            if request.method not in SAFE_METHODS and not hmac.compare_digest(
                sent.encode(), csrf_token(config, cookie).encode()
            ):
                raise Forbidden(
                    f"a write with the Airflow UI's cookie needs the {CSRF_HEADER} header the registry page sends "
                    "(CSRF protection); API clients send `Authorization: Bearer <token>`"
                )
            token = cookie
        principal = await _from_token(token, config)
        if principal.kind == "airflow":
            allowed = check(principal.user, dag_id)
            if not isinstance(allowed, bool):
                allowed = await allowed
            if not allowed:
                raise Forbidden(
                    f"{principal.name} may read the registry but not change it: writes need permission to trigger "
                    f"the {dag_id} DAG in Airflow (simple auth manager: role User, Op or Admin; FAB: can create DAG "
                    f"Runs and can edit {dag_id}); ask an Airflow admin"
                )
        return principal

    return dependency
