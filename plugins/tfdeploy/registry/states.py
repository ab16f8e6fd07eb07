"""Model version states as an explicit state machine: every allowed transition is listed here, once."""

from __future__ import annotations

from enum import StrEnum

from .errors import IllegalTransition


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
