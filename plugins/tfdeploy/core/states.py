"""Model version states as an explicit state machine: every allowed transition is listed here, once."""

from __future__ import annotations

from enum import StrEnum

from tfdeploy.core.errors import IllegalTransition


class ModelState(StrEnum):
    REGISTERED = "registered"
    VALIDATED = "validated"
    REJECTED = "rejected"
    CANARY = "canary"
    PRODUCTION = "production"
    SUPERSEDED = "superseded"
    ROLLED_BACK = "rolled_back"
    ARCHIVED = "archived"


S = ModelState
ALLOWED: dict[ModelState, frozenset[ModelState]] = {
    S.REGISTERED: frozenset({S.VALIDATED, S.REJECTED}),
    S.VALIDATED: frozenset({S.CANARY, S.REJECTED, S.ARCHIVED}),
    S.REJECTED: frozenset({S.ARCHIVED}),
    S.CANARY: frozenset({S.PRODUCTION, S.ROLLED_BACK}),
    S.PRODUCTION: frozenset({S.SUPERSEDED, S.ROLLED_BACK}),
    # a superseded version can be put back into production by a manual rollback
    S.SUPERSEDED: frozenset({S.PRODUCTION, S.ARCHIVED}),
    # a rolled-back version may be tried again as a canary once fixed infrastructure allows
    S.ROLLED_BACK: frozenset({S.CANARY, S.ARCHIVED}),
    S.ARCHIVED: frozenset(),
}
TERMINAL = frozenset(s for s, nxt in ALLOWED.items() if not nxt)


def check_transition(current: ModelState | str, target: ModelState | str) -> tuple[ModelState, ModelState]:
    """Return the two states if current -> target is allowed, else raise IllegalTransition naming both."""
    src, dst = ModelState(current), ModelState(target)
    if dst not in ALLOWED[src]:
        allowed = ", ".join(sorted(ALLOWED[src])) or "none (terminal state)"
        raise IllegalTransition(f"illegal transition {src.value} -> {dst.value}; from {src.value} allowed: {allowed}")
    return src, dst


class ReleaseAction(StrEnum):
    """What a deployment run does with content already known to the registry (decided before any change)."""

    RELEASE = "release"  # new content, or a release to resume: go on
    NOOP = "noop"  # already in production: change nothing, succeed
    REFUSE = "refuse"  # a release that must not happen again: fail before changing anything


def plan_release(model: str, version: int, state: ModelState | None) -> tuple[ReleaseAction, str]:
    """The action and its reason for releasing ``version`` of ``model``, now in ``state`` (None: not registered)."""
    if state is None:
        return ReleaseAction.RELEASE, f"{model} v{version} is new: release it"
    if state == S.PRODUCTION:
        return ReleaseAction.NOOP, f"{model} v{version} (same content) is already in production: nothing to do"
    if state == S.SUPERSEDED:
        return ReleaseAction.REFUSE, (
            f"{model} v{version} has this content and was superseded by a newer production version; a release "
            f"does not go back in time: to serve v{version} again, run model_rollback with version {version}"
        )
    if state in (S.REJECTED, S.ARCHIVED):
        return ReleaseAction.REFUSE, (
            f"{model} v{version} has this content and is {state.value}; fix the model and export it again "
            "(new content gets a new version)"
        )
    return ReleaseAction.RELEASE, f"{model} v{version} is {state.value}: resume its release"
