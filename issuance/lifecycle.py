"""The card's back-office life cycle (issue #5) and the enumerations the records use. Pure.

``applied → personalised → active → lost (hotlisted) → replaced / refunded / cancelled``, with a temporary
block (``blocked``, reversible: APPLICATION BLOCK ``00``) and a permanent one (``locked``: APPLICATION BLOCK
``01``) beside ``active`` (spec §2.3). Every transition not listed in :data:`TRANSITIONS` is refused.
"""

from __future__ import annotations

from enum import IntFlag, StrEnum

from backoffice.errors import Conflict
from cardos import layout


class CardState(StrEnum):
    """Where a card is in its life."""

    APPLIED = "applied"
    PERSONALISED = "personalised"
    ACTIVE = "active"
    BLOCKED = "blocked"
    LOCKED = "locked"
    LOST = "lost"
    REPLACED = "replaced"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"


TRANSITIONS: dict[CardState, frozenset[CardState]] = {
    CardState.APPLIED: frozenset({CardState.PERSONALISED, CardState.CANCELLED}),
    CardState.PERSONALISED: frozenset({CardState.ACTIVE, CardState.LOST, CardState.CANCELLED}),
    CardState.ACTIVE: frozenset(
        {CardState.BLOCKED, CardState.LOCKED, CardState.LOST, CardState.REFUNDED, CardState.CANCELLED}
    ),
    CardState.BLOCKED: frozenset(
        {CardState.ACTIVE, CardState.LOCKED, CardState.LOST, CardState.REFUNDED, CardState.CANCELLED}
    ),
    CardState.LOCKED: frozenset({CardState.LOST, CardState.REFUNDED, CardState.CANCELLED}),
    CardState.LOST: frozenset({CardState.REPLACED, CardState.REFUNDED, CardState.CANCELLED}),
    CardState.REPLACED: frozenset(),
    CardState.REFUNDED: frozenset(),
    CardState.CANCELLED: frozenset(),
}
"""The allowed transitions, from each state."""

CLOSED_STATES = frozenset({CardState.REPLACED, CardState.REFUNDED, CardState.CANCELLED})
"""States no card leaves: the resident may hold another card."""
HOTLISTED_STATES = frozenset({CardState.LOCKED, CardState.LOST, CardState.REPLACED, CardState.REFUNDED})
"""States of a card that must be on the validators' hotlist (if it was ever personalised)."""


class InvalidTransition(Conflict):
    """A life-cycle change the card's state does not allow (409)."""

    code = "invalid_transition"


def check_transition(current: CardState, target: CardState) -> None:
    """Raise :class:`InvalidTransition` unless ``current → target`` is allowed."""
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(
            f"a card that is {current} cannot become {target}", state=str(current), target=str(target)
        )


class CardType(StrEnum):
    """The card types of EF 0015 byte 28 (spec §2.1)."""

    ADULT = "adult"
    STUDENT = "student"
    SENIOR = "senior"
    DISABLED = "disabled"
    STAFF = "staff"

    @property
    def code(self) -> int:
        """The EF 0015 code (``01`` adult … ``05`` staff)."""
        return int(layout.CardType[self.name])


class InsuredScheme(IntFlag):
    """Insurance flags of EF 0005 (spec §2.1): bit 0 pension … bit 4 maternity."""

    PENSION = 0x01
    MEDICAL = 0x02
    UNEMPLOYMENT = 0x04
    WORK_INJURY = 0x08
    MATERNITY = 0x10


ALL_SCHEMES = InsuredScheme(0x1F)


class SocialSecurityStatus(StrEnum):
    """Status of a social-security record."""

    ACTIVE = "active"
    SUSPENDED = "suspended"
    TERMINATED = "terminated"


class LoadStatus(StrEnum):
    """A load's progress; ``ok`` / ``proof`` / ``unconfirmed`` are the spec §5 statuses."""

    AUTHORIZED = "authorized"
    """MAC2 given; no outcome yet (not a record)."""
    OK = "ok"
    PROOF = "proof"
    UNCONFIRMED = "unconfirmed"
    VOID = "void"
    """Proven not to have reached the card (its counter had not moved); never counted."""
    REJECTED = "rejected"
    """The card answered a TAC that does not verify; never counted, reported to clearing."""


class SettlementKind(StrEnum):
    """Why a card's settled balance is moved."""

    TRANSFER = "transfer"
    """Replacement: to the new card."""
    REFUND = "refund"
    CANCEL = "cancel"


class SettlementStatus(StrEnum):
    """A settlement waits for clearing (``pending``), then holds the amount (``ready``), then is ``done``."""

    PENDING = "pending"
    READY = "ready"
    DONE = "done"


class HotlistReason(StrEnum):
    """Why a card is on the hotlist."""

    LOST = "lost"
    STOLEN = "stolen"
    DAMAGED = "damaged"
    LOCKED = "locked"
    REFUNDED = "refunded"
    CANCELLED = "cancelled"
