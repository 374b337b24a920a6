"""The card life cycle: allowed transitions and refusals; card types; roles."""

from __future__ import annotations

import itertools

import pytest

from backoffice.errors import Forbidden
from issuance.access import Action, Role, Staff, may_see_personal_data, require
from issuance.lifecycle import TRANSITIONS, CardState, CardType, InvalidTransition, check_transition

HAPPY_PATH = [CardState.APPLIED, CardState.PERSONALISED, CardState.ACTIVE, CardState.LOST, CardState.REPLACED]


def test_the_issue_path_is_allowed() -> None:
    for current, target in itertools.pairwise(HAPPY_PATH):
        check_transition(current, target)
    for end in (CardState.REFUNDED, CardState.CANCELLED):
        check_transition(CardState.LOST, end)
    check_transition(CardState.ACTIVE, CardState.BLOCKED)
    check_transition(CardState.BLOCKED, CardState.ACTIVE)
    check_transition(CardState.ACTIVE, CardState.LOCKED)


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (CardState.APPLIED, CardState.ACTIVE),  # never personalised
        (CardState.ACTIVE, CardState.REPLACED),  # replacement only after a loss report
        (CardState.ACTIVE, CardState.PERSONALISED),
        (CardState.LOCKED, CardState.ACTIVE),  # a permanent block is permanent
        (CardState.LOST, CardState.ACTIVE),  # a hotlisted card never comes back
        (CardState.REPLACED, CardState.REFUNDED),  # its balance moved once already
        (CardState.REFUNDED, CardState.ACTIVE),
        (CardState.CANCELLED, CardState.LOST),
        (CardState.LOST, CardState.LOST),
    ],
)
def test_refusals(current: CardState, target: CardState) -> None:
    with pytest.raises(InvalidTransition) as caught:
        check_transition(current, target)
    assert caught.value.http_status == 409 and caught.value.details == {"state": current, "target": target}


def test_closed_states_are_final() -> None:
    for state in (CardState.REPLACED, CardState.REFUNDED, CardState.CANCELLED):
        assert TRANSITIONS[state] == frozenset()
    assert set(TRANSITIONS) == set(CardState)


def test_card_type_codes() -> None:
    assert [t.code for t in CardType] == [1, 2, 3, 4, 5]


def test_roles() -> None:
    clerk, supervisor = Staff("c1", Role.CLERK), Staff("s1", Role.SUPERVISOR)
    require(clerk, Action.LOAD)
    with pytest.raises(Forbidden):
        require(clerk, Action.REFUND_CARD)
    require(supervisor, Action.REFUND_CARD)
    assert not may_see_personal_data(clerk) and may_see_personal_data(supervisor)
    assert may_see_personal_data(Staff("a1", Role.AUDITOR))
