"""The registry's state machine: allowed transitions live in one table; illegal ones name both states."""

from __future__ import annotations

import pytest

from tfdeploy.core.errors import IllegalTransition, InvalidModelName
from tfdeploy.core.names import validate_model_name
from tfdeploy.core.states import ALLOWED, TERMINAL, ModelState, check_transition

S = ModelState


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (S.REGISTERED, S.VALIDATED),
        (S.REGISTERED, S.REJECTED),
        (S.VALIDATED, S.CANARY),
        (S.CANARY, S.PRODUCTION),
        (S.CANARY, S.ROLLED_BACK),
        (S.PRODUCTION, S.SUPERSEDED),
        (S.PRODUCTION, S.ROLLED_BACK),
        (S.SUPERSEDED, S.PRODUCTION),
        (S.SUPERSEDED, S.ARCHIVED),
    ],
)
def test_allowed_transitions(src, dst):
    assert check_transition(src, dst) == (src, dst)


@pytest.mark.parametrize(
    ("src", "dst"),
    [(S.REGISTERED, S.PRODUCTION), (S.REJECTED, S.CANARY), (S.ARCHIVED, S.PRODUCTION), (S.VALIDATED, S.PRODUCTION)],
)
def test_illegal_transitions_name_both_states(src, dst):
    with pytest.raises(IllegalTransition, match=f"illegal transition {src.value} -> {dst.value}"):
        check_transition(src, dst)


def test_every_state_has_an_entry_and_archived_is_terminal():
    assert set(ALLOWED) == set(ModelState)
    assert {S.ARCHIVED} == TERMINAL
    assert all(dst in ModelState for nxt in ALLOWED.values() for dst in nxt)


def test_unknown_state_is_rejected():
    with pytest.raises(ValueError):
        check_transition("registered", "deployed")


@pytest.mark.parametrize("name", ["half_plus_two", "fraud-v2", "m.1", "A"])
def test_safe_model_names(name):
    assert validate_model_name(name) == name


@pytest.mark.parametrize("name", ["", "a/b", "..", "a..b", "has space", "-lead", ".hidden", "x" * 129, "é"])
def test_unsafe_model_names(name):
    with pytest.raises(InvalidModelName, match="invalid model name"):
        validate_model_name(name)
