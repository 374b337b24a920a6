"""Who may do what at the counter (issue #5): staff roles, the actions they may take, unmasked personal data."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from backoffice.errors import Forbidden, InvalidInput


class Role(StrEnum):
    """A back-office role."""

    CLERK = "clerk"
    """Counter staff: registers residents, issues and services cards; sees personal numbers masked."""
    SUPERVISOR = "supervisor"
    """Counter supervisor: everything a clerk does, plus refunds, cancellations and unmasked personal data."""
    FINANCE = "finance"
    """Finance staff: pays out settled balances; sees personal numbers masked."""
    AUDITOR = "auditor"
    """Reads unmasked personal data (every read is in the audit log); changes nothing."""
    SYSTEM = "system"
    """Scheduled work (clearing completing pending transfers)."""


class Action(StrEnum):
    """A counter action (one service function each)."""

    REGISTER_RESIDENT = "register_resident"
    LINK_SOCIAL_SECURITY = "link_social_security"
    VIEW_RESIDENT = "view_resident"
    APPLY_FOR_CARD = "apply_for_card"
    ISSUE_CARD = "issue_card"
    ACTIVATE_CARD = "activate_card"
    PERSONALISE_PSAM = "personalise_psam"
    LOAD = "load"
    REPORT_LOSS = "report_loss"
    REPLACE_CARD = "replace_card"
    REFUND_CARD = "refund_card"
    CANCEL_CARD = "cancel_card"
    PAY_OUT = "pay_out"
    RESET_PIN = "reset_pin"
    BLOCK_CARD = "block_card"
    UNBLOCK_CARD = "unblock_card"
    CHANGE_CARDHOLDER_DATA = "change_cardholder_data"
    COMPLETE_TRANSFERS = "complete_transfers"


_COUNTER = frozenset({Role.CLERK, Role.SUPERVISOR})
PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.REGISTER_RESIDENT: _COUNTER,
    Action.LINK_SOCIAL_SECURITY: _COUNTER,
    Action.VIEW_RESIDENT: frozenset(Role) - {Role.SYSTEM},
    Action.APPLY_FOR_CARD: _COUNTER,
    Action.ISSUE_CARD: _COUNTER,
    Action.ACTIVATE_CARD: _COUNTER,
    Action.PERSONALISE_PSAM: frozenset({Role.SUPERVISOR}),
    Action.LOAD: _COUNTER,
    Action.REPORT_LOSS: _COUNTER,
    Action.REPLACE_CARD: _COUNTER,
    Action.REFUND_CARD: frozenset({Role.SUPERVISOR}),
    Action.CANCEL_CARD: frozenset({Role.SUPERVISOR}),
    Action.PAY_OUT: frozenset({Role.SUPERVISOR, Role.FINANCE}),
    Action.RESET_PIN: _COUNTER,
    Action.BLOCK_CARD: _COUNTER,
    Action.UNBLOCK_CARD: frozenset({Role.SUPERVISOR}),
    Action.CHANGE_CARDHOLDER_DATA: _COUNTER,
    Action.COMPLETE_TRANSFERS: frozenset({Role.SYSTEM, Role.FINANCE}),
}
"""The roles allowed to take each action."""

UNMASKED_PERSONAL_DATA = frozenset({Role.SUPERVISOR, Role.AUDITOR})
"""Roles shown ID and social-security numbers (and phones) in clear; each such read is audited."""


@dataclass(frozen=True, slots=True)
class Staff:
    """The member of staff (or system job) acting: an id for the records and a role for the checks."""

    staff_id: str
    role: Role

    def __post_init__(self) -> None:
        if not self.staff_id or len(self.staff_id) > 64:
            raise InvalidInput("a staff id is 1 to 64 characters")


SYSTEM_CLEARING = Staff("clearing", Role.SYSTEM)
"""The actor of work clearing triggers (pending transfers)."""


def require(staff: Staff, action: Action) -> None:
    """Raise :class:`Forbidden` unless ``staff``'s role may take ``action``."""
    if staff.role not in PERMISSIONS[action]:
        raise Forbidden(f"the role {staff.role} may not {action.replace('_', ' ')}", action=str(action))


def may_see_personal_data(staff: Staff) -> bool:
    """True when ``staff`` is shown personal numbers unmasked (and every such read is audited)."""
    return staff.role in UNMASKED_PERSONAL_DATA
