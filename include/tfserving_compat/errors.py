"""Typed serving errors carrying a canonical gRPC status code, mapped to HTTP as TF Serving does."""

from __future__ import annotations

import grpc

# TF Serving's ToHTTPStatusCode (model_servers/http_rest_api_handler / util/net_http).
_HTTP = {
    "OK": 200,
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNIMPLEMENTED": 501,
    "UNKNOWN": 500,
    "INTERNAL": 500,
    "DATA_LOSS": 500,
    "RESOURCE_EXHAUSTED": 429,
    "PERMISSION_DENIED": 403,
    "UNAUTHENTICATED": 401,
}


class ServingError(Exception):
    """A request or load failed with a canonical status ``code`` (e.g. "INVALID_ARGUMENT") and a message."""

    code = "UNKNOWN"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            if code not in _HTTP:
                raise ValueError(f"unknown status code {code!r}")
            self.code = code

    @property
    def http_status(self) -> int:
        return _HTTP[self.code]

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return grpc.StatusCode[self.code]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code}: {self.message})"


class InvalidArgument(ServingError):
    code = "INVALID_ARGUMENT"


class NotFound(ServingError):
    code = "NOT_FOUND"


class FailedPrecondition(ServingError):
    code = "FAILED_PRECONDITION"


class Unimplemented(ServingError):
    code = "UNIMPLEMENTED"


class Unavailable(ServingError):
    code = "UNAVAILABLE"


class Internal(ServingError):
    code = "INTERNAL"
