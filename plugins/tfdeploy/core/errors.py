"""Every typed error of tfdeploy, in one place: each says what failed and what to do about it.

Sections: names, the model registry (each carries its HTTP status, so the registry's API answers with it
and the registry hook raises the same class back), the model store (HDFS), and serving (TF Serving and
its hosts). Every class derives from :class:`TfdeployError`.
"""

from __future__ import annotations


class TfdeployError(Exception):
    """Base class of every tfdeploy error; ``message`` is the whole explanation."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --------------------------------------------------------------------------- the model registry


class RegistryError(TfdeployError):
    """An error of the model registry; ``status_code`` is the HTTP status its API answers with."""

    status_code = 400


class NotFound(RegistryError):
    """An unknown model or version: check the name, or register it first."""

    status_code = 404


class InvalidRequest(RegistryError):
    """The request breaks a rule (a field's value or combination); the message names it."""

    status_code = 422


class Conflict(RegistryError):
    """The request conflicts with the current state: re-read it and retry if still wanted."""

    status_code = 409


class IllegalTransition(Conflict):
    """The state machine does not allow this transition."""


class LostRace(Conflict):
    """Another writer changed the version first."""


class LockHeld(Conflict):
    """The model's deployment lock is held by another run and has not expired."""


class LeaseLost(TfdeployError):
    """This run's deployment lease expired or was taken over while it ran: it must stop changing serving."""


class Unauthorized(RegistryError):
    """No valid credentials were sent."""

    status_code = 401


class Forbidden(RegistryError):
    """The credentials are not good for this request."""

    status_code = 403


class RegistryUnavailable(RegistryError):
    """The registry (or its database) cannot answer now; the request changed nothing: retry later."""

    status_code = 503


class RollbackNotStarted(RegistryError):
    """The registry asked Airflow to start a ``model_rollback`` run and it did not (the DAG is missing or paused,
    Params refused, Airflow's database unreachable, or this registry runs outside Airflow and cannot start
    runs). No run was started; whatever else the request carried (an alert) was recorded. The message says why."""

    status_code = 502


# --------------------------------------------------------------------------- names


class InvalidModelName(InvalidRequest, ValueError):
    """A model name unsafe as a TF Serving model name, a URL path segment or a directory name."""


class InvalidRunInputs(TfdeployError, ValueError):
    """A run's inputs (model, source, version, golden examples) are missing or break a Param's rule, e.g. an
    Asset-triggered run whose event has no valid ``extra``; the message names the key. Nothing was changed."""


# --------------------------------------------------------------------------- the model store (HDFS)


class ModelStoreError(TfdeployError):
    """Base of the model store's errors."""


class ModelNotFound(ModelStoreError):
    """The model version (or its manifest) is not in the store."""

    def __init__(self, message: str, *, model: str, version: int | None = None) -> None:
        super().__init__(message)
        self.model = model
        self.version = version


class VersionConflict(ModelStoreError):
    """The version already exists with different content; versions are immutable."""

    def __init__(self, *, model: str, version: int, path: str, existing_sha256: str | None, new_sha256: str) -> None:
        existing = f"manifest sha256 {existing_sha256}" if existing_sha256 else "no readable manifest"
        super().__init__(
            f"{model} version {version} already exists at {path} with different content ({existing}; the content "
            f"being published has manifest sha256 {new_sha256}). Versions are never overwritten: publish under a "
            f"new version (next_version()) or, if the existing one is garbage, delete it deliberately first"
        )
        self.model = model
        self.version = version
        self.path = path
        self.existing_sha256 = existing_sha256
        self.new_sha256 = new_sha256


class ChecksumMismatch(ModelStoreError):
    """A file's size or sha256 differs from the manifest (``path`` is relative to the version dir)."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class PublishError(ModelStoreError):
    """Publishing failed; nothing was written under the version's numeric directory."""


class ModelStoreUnavailable(ModelStoreError):
    """HDFS (a NameNode or DataNode) refused the connection or did not answer within the timeout; the message
    names the server. Nothing is left half-written (publishing and fetching work in temp dirs): retry later."""


# --------------------------------------------------------------------------- serving


class ServingError(TfdeployError):
    """Base class of every serving error."""


class InvalidModelConfig(ServingError, ValueError):
    """A model config TF Serving would refuse (or that the pipeline cannot represent)."""


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


class ServingHostError(ServingError):
    """Base class of errors about a serving host (its Docker engine, model directory or container)."""


class SharedDiskRequired(ServingHostError):
    """The Docker engine is not on this machine, so a bind-mounted model directory cannot be shared with it."""


class DockerEngineUnavailable(ServingHostError):
    """The serving host's Docker engine refused the connection or did not answer within the timeout; the message
    names the engine and the call. Retry once the engine answers."""


class StagingConflict(ServingHostError):
    """A version directory already exists on the serving host with different content."""


class ServerStartError(ServingHostError):
    """The server container could not be created or did not answer in time; the message has its last log lines."""


class ServerNotFound(ServingHostError, LookupError):
    """No container with that name on the Docker engine."""


class RouterError(ServingError):
    """The traffic router (HAProxy) could not be reached or refused a runtime change; nothing was changed."""


class ServingImageNotAllowed(ServingError, ValueError):
    """A serving image outside the configured allowlist (``SERVING_IMAGES``); the message lists the allowed images.
    Nothing was started."""


class PrometheusError(TfdeployError):
    """A Prometheus query failed (unreachable, refused, or a bad expression); says which."""


# --------------------------------------------------------------------------- the sandbox and golden files


class SandboxError(TfdeployError):
    """Base of the errors of the sandbox, the container where model code runs (``hooks/sandbox.py``)."""


class SandboxFailed(SandboxError):
    """A sandbox job failed: it exited non-zero (or was killed for memory), reported an error, or wrote something
    other than regular files and directories. The message says what ran, how it ended and its last log lines."""


class SandboxTimeout(SandboxError):
    """A sandbox job ran past its wall-clock limit: its container was killed and removed. The message says what
    ran, for how long, and its last log lines."""


class GoldenPathNotAllowed(TfdeployError, ValueError):
    """A golden examples file outside the configured roots (``GOLDEN_ROOTS``), after resolving links and ``..``;
    the message lists the allowed roots and how to add one."""
