"""Typed registry errors: each names what failed and what to do, and carries its HTTP status."""

from __future__ import annotations


class RegistryError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(RegistryError):
    """An unknown model or version: check the name, or register it first."""

    status_code = 404


class InvalidName(RegistryError):
    """A model name unsafe as a TF Serving model name or a path segment."""

    status_code = 422


class InvalidRequest(RegistryError):
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


class Unauthorized(RegistryError):
    status_code = 401
