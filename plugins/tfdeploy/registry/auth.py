"""Bearer-token authentication for the registry.

Airflow serves plugin FastAPI apps without authenticating them, so the registry checks tokens itself:
 - the configured machine token (REGISTRY_API_TOKEN), compared in constant time;
 - Airflow's own JWT (what `POST /auth/token` issues, or the UI's `_token` cookie), validated by
   Airflow's auth manager with the shared JWT secret.
Writes always need a token; reads too unless REGISTRY_PUBLIC_READS is set.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from tfdeploy.core.errors import Forbidden, Unauthorized

from .config import RegistryConfig

COOKIE = "_token"  # Airflow UI's JWT cookie


@dataclass(frozen=True)
class Principal:
    name: str
    kind: str  # "token", "airflow" or "anonymous"


def _token(request: Request) -> str:
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return request.cookies.get(COOKIE, "")


async def _authenticate(request: Request, config: RegistryConfig) -> Principal:
    token = _token(request)
    if not token:
        raise Unauthorized("missing bearer token: send `Authorization: Bearer <token>` (Airflow JWT or API token)")
    if config.api_token and hmac.compare_digest(token.encode(), config.api_token.encode()):
        return Principal("api-token", "token")
    try:
        from airflow.api_fastapi.app import create_auth_manager
        from jwt import ExpiredSignatureError, InvalidTokenError
    except ImportError as exc:  # standalone without Airflow installed
        raise Forbidden(f"token is not the registry API token and Airflow JWTs cannot be checked here: {exc}") from exc
    try:
        user = await create_auth_manager().get_user_from_token(token)
    except ExpiredSignatureError:
        raise Unauthorized("token expired: get a new one from POST /auth/token") from None
    except InvalidTokenError:
        raise Forbidden("invalid token: neither the registry API token nor a valid Airflow JWT") from None
    return Principal(f"airflow:{user.get_name()}", "airflow")


def require_read(config: RegistryConfig):
    async def dependency(request: Request) -> Principal:
        if config.public_reads and not _token(request):
            return Principal("anonymous", "anonymous")
        return await _authenticate(request, config)

    return dependency


def require_write(config: RegistryConfig):
    async def dependency(request: Request) -> Principal:
        return await _authenticate(request, config)

    return dependency
