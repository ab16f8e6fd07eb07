"""Typed errors of the serving layer: each says what failed and what to do about it."""

from __future__ import annotations


class ServingError(Exception):
    """Base class of every serving error."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidModelConfig(ServingError, ValueError):
    """A model config TF Serving would refuse (or that the pipeline cannot represent)."""


# --------------------------------------------------------------------------- talking to a server


class ServingRpcError(ServingError):
    """A gRPC call to TF Serving failed; ``code`` is the gRPC status code name, ``details`` TF Serving's message."""

    def __init__(self, message: str, *, code: str, details: str) -> None:
        super().__init__(message)
        self.code = code
        self.details = details


class ServingReloadError(ServingRpcError):
    """``HandleReloadConfigRequest`` was refused or failed.

    INVALID_ARGUMENT: the config is wrong (nothing changed); FAILED_PRECONDITION: a label points at a version
    that is not AVAILABLE yet (load it first, label it in a second reload); DEADLINE_EXCEEDED: the server may
    still be applying the config (poll model status).
    """


class ServingRequestError(ServingError):
    """A REST call answered an error. ``status_code`` is the HTTP status, ``error`` TF Serving's message."""

    def __init__(self, message: str, *, status_code: int | None, error: str, method: str, url: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.error = error
        self.method = method
        self.url = url


class ServingUnavailable(ServingRequestError):
    """The REST port did not answer at all (connection refused, reset or timed out): ``status_code`` is None."""


class VersionNotAvailable(ServingError):
    """A version did not become AVAILABLE: it ended (load failure) or the deadline passed."""

    def __init__(self, message: str, *, model: str, version: int, state: str | None, error_message: str) -> None:
        super().__init__(message)
        self.model = model
        self.version = version
        self.state = state  # last state seen (None: the server never listed the version)
        self.error_message = error_message


class VersionNotUnloaded(ServingError):
    """A version was still loaded when the deadline passed."""

    def __init__(self, message: str, *, model: str, version: int, state: str | None) -> None:
        super().__init__(message)
        self.model = model
        self.version = version
        self.state = state


# --------------------------------------------------------------------------- a serving host on Docker


class ServingHostError(ServingError):
    """Base class of errors about a serving host (its Docker engine, model directory or container)."""


class SharedDiskRequired(ServingHostError):
    """The Docker engine is not on this machine, so a bind-mounted model directory cannot be shared with it."""


class StagingConflict(ServingHostError):
    """A version directory already exists on the serving host with different content."""


class ServerStartError(ServingHostError):
    """The server container could not be created or did not answer in time; the message has its last log lines."""


class ServerNotFound(ServingHostError, LookupError):
    """No container with that name on the Docker engine."""
