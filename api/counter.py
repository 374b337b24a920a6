"""The counter staff endpoints (issue #7): residents, social-security links, cards, loads, losses, replacements,
refunds, PIN resets, card look-up. Roles come from issuance/access.py (``counter`` acts as issuance's clerk).

| endpoint | roles |
|---|---|
| ``POST /counter/residents`` | counter, supervisor |
| ``POST /counter/residents/search``, ``GET /counter/residents/{id}`` | counter, supervisor, finance, auditor |
| ``PUT /counter/residents/{id}/social-security`` | counter, supervisor |
| ``GET /counter/residents/{id}/social-security`` | counter, supervisor, finance, auditor |
| ``POST /counter/cards`` | counter, supervisor |
| ``GET /counter/cards/{card_no}`` | counter, supervisor, finance, auditor |
| ``GET /counter/desks/{desk_id}/card`` | counter, supervisor (own desk) |
| ``POST /counter/cards/{card_no}/issue`` | counter, supervisor (own desk) |
| ``POST /counter/cards/{card_no}/loads`` | counter, supervisor (own desk; ``Idempotency-Key``) |
| ``POST /counter/cards/{card_no}/loss``, ``…/replacement`` | counter, supervisor |
| ``POST /counter/cards/{card_no}/pin-reset`` | counter, supervisor (own desk) |
| ``POST /counter/cards/{card_no}/refund`` | supervisor (own desk when the card is present) |
| ``POST /counter/settlements/{id}/payout`` | supervisor, finance |
| ``POST /counter/cards/{card_no}/block`` | counter, supervisor (own desk) |
| ``POST /counter/cards/{card_no}/unblock`` | supervisor (own desk) |
| ``POST /counter/cards/{card_no}/cancel`` | supervisor (own desk when the card is present) |
| ``POST /counter/cards/{card_no}/activate`` | counter, supervisor |
| ``PATCH /counter/cards/{card_no}/cardholder`` | counter, supervisor (own desk) |
| ``POST /counter/cards/{card_no}/loads/resolution`` | counter, supervisor (own desk) |
| ``POST /counter/settlements/{id}/collection`` | counter, supervisor (own desk; the new card in the reader) |

Personal numbers are masked unless ``?unmasked=true`` is asked for by a role that may see them (supervisor,
auditor); issuance audits every unmasked read.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from pydantic import Field

from api import counter_service
from api.auth import CurrentStaff, staff_route
from api.counter_service import CounterContext, LoadResult
from api.deps import AppState, get_state, unit_of_work
from api.schemas import (
    CARD_NO,
    DESK_ID,
    ID_NUMBER,
    IDEMPOTENCY_KEY,
    MAX_ID,
    MAX_LOAD_FEN,
    PIN,
    SAFE_TEXT,
    BlockIn,
    CancelIn,
    CardholderChangeIn,
    In,
    LoadResolutionIn,
    Out,
    TransferCollectionIn,
    UnblockIn,
)
from api.staff_auth import ApiRole, roles_for
from backoffice.db import UnitOfWork
from issuance import services
from issuance.access import Action

router = APIRouter(prefix="/counter", tags=["counter"])

Work = Annotated[UnitOfWork, Depends(unit_of_work)]
State = Annotated[AppState, Depends(get_state)]


def counter_context(request: Request) -> CounterContext:
    """The counter's keys, vault and issuer profile (503 when this deployment has none)."""
    return get_state(request).counter_context()


Counter = Annotated[CounterContext, Depends(counter_context)]
CardNo = Annotated[str, Path(pattern=CARD_NO, description="16 digits: city code and serial")]
ResidentId = Annotated[int, Path(ge=1, le=MAX_ID)]
SettlementId = Annotated[int, Path(ge=1, le=MAX_ID)]
DeskIdPath = Annotated[str, Path(pattern=DESK_ID, max_length=32)]
Unmasked = Annotated[bool, Query(description="show personal numbers unmasked (supervisor, auditor; audited)")]
DeskId = Annotated[str, Field(pattern=DESK_ID, max_length=32, description="your desk, whose reader holds the card")]
CardType = Literal["adult", "student", "senior", "disabled", "staff"]


def _roles(action: Action) -> frozenset[ApiRole]:
    return roles_for(action)


# --- schemas ---------------------------------------------------------------------------------------------------


class ResidentIn(In):
    """A resident to register."""

    name: Annotated[str, Field(min_length=1, max_length=20, pattern=SAFE_TEXT)]
    id_number: Annotated[str, Field(pattern=ID_NUMBER, description="18-character resident ID number (GB 11643)")]
    phone: Annotated[str, Field(pattern=r"^[0-9]{11}$")]
    address: Annotated[str, Field(min_length=1, max_length=200, pattern=SAFE_TEXT)]


class ResidentSearchIn(In):
    """Find a resident by ID number (sent in the body, so it stays out of URLs and logs)."""

    id_number: Annotated[str, Field(min_length=1, max_length=18, pattern=r"^[0-9A-Za-z]*$")]


class ResidentOut(Out):
    """A resident; ``id_number`` and ``phone`` are masked unless ``unmasked``."""

    resident_id: int
    name: str
    id_number: str
    phone: str
    address: str
    unmasked: bool


class SocialSecurityIn(In):
    """Link the resident's social-security record (its number is the resident's ID number)."""

    ss_number: Annotated[str, Field(pattern=ID_NUMBER)]
    schemes: Annotated[
        int, Field(ge=0, le=31, description="bits: 1 pension, 2 medical, 4 unemployment, 8 work injury, 16 maternity")
    ]
    agency_code: Annotated[str, Field(pattern=r"^[A-Za-z0-9]{6}$")]
    status: Literal["active", "suspended", "terminated"] = "active"


class SocialSecurityOut(Out):
    """A social-security record; ``ss_number`` masked unless ``unmasked``."""

    record_id: int
    resident_id: int | None
    ss_number: str
    schemes: int
    agency_code: str
    status: Literal["active", "suspended", "terminated"]
    unmasked: bool


class CardApplicationIn(In):
    """Apply for a card: registered to a resident, or anonymous (no ``resident_id``)."""

    card_type: CardType = "adult"
    city_code: Annotated[str, Field(pattern=r"^[0-9]{4}$")]
    resident_id: Annotated[int | None, Field(ge=1, le=MAX_ID)] = None


class CardOut(Out):
    """A card's record: state and the back office's shadow of its purse (fen)."""

    card_no: str
    card_type: CardType
    registered: bool
    state: Literal[
        "applied", "personalised", "active", "blocked", "locked", "lost", "replaced", "refunded", "cancelled"
    ]
    resident_id: int | None
    purse_limit: int
    shadow_balance: int
    shadow_online_seq: int
    shadow_offline_seq: int
    chip_serial: str | None
    hotlisted_at: datetime | None


class CardInReaderOut(Out):
    """The card in one's desk reader, and its record when it is one of ours (``null``: a factory chip or a
    foreign card)."""

    desk_id: str
    card_no: str
    card: CardOut | None


class IssueIn(In):
    """Issue an applied card onto the factory chip in your desk's reader, with the PIN the resident chose."""

    desk_id: DeskId
    pin: Annotated[str, Field(pattern=PIN)]
    social_pin: Annotated[str | None, Field(pattern=PIN)] = None


class LoadIn(In):
    """Load cash onto the card in your desk's reader (fen)."""

    desk_id: DeskId
    amount: Annotated[int, Field(ge=1, le=MAX_LOAD_FEN)]


class LoadOut(Out):
    """A load's outcome; ``ok`` and ``proof`` are counted (``balance_after`` given), ``unconfirmed`` awaits
    resolution with the card. The record fields are those of the spec §5 load record."""

    card_no: str
    desk_id: str
    amount: int
    status: Literal["authorized", "ok", "proof", "unconfirmed", "void", "rejected"]
    balance_after: int | None
    term_id: str | None
    term_seq: int | None
    device_seq: int | None
    card_seq: int | None
    txn_date: str | None
    txn_time: str | None
    tac: str | None


class LossIn(In):
    """Why the card is reported."""

    reason: Literal["lost", "stolen", "damaged"] = "lost"


class HotlistOut(Out):
    """The hotlist entry a loss report made."""

    version: int
    card_no: str
    reason: str
    listed_at: datetime


class SettlementOut(Out):
    """A card's balance on its way out (fen; ``amount`` is known once ``ready``)."""

    settlement_id: int
    kind: Literal["transfer", "refund", "cancel"]
    from_card_no: str
    to_card_no: str | None
    status: Literal["pending", "ready", "done"]
    amount: int | None
    cutoff_at: datetime


class ReplacementOut(Out):
    """The new card (applied: issue it next) and the pending transfer of the old card's balance."""

    old_card_no: str
    new_card: CardOut
    transfer: SettlementOut


class RefundIn(In):
    """Refund a card; with ``desk_id`` the card in your desk's reader is blocked for good first."""

    desk_id: Annotated[str | None, Field(pattern=DESK_ID, max_length=32)] = None


class PinResetIn(In):
    """A new PIN for the card in your desk's reader."""

    desk_id: DeskId
    new_pin: Annotated[str, Field(pattern=PIN)]
    application: Literal["purse", "social"] = "purse"


# --- converters ----------------------------------------------------------------------------------------------------


def _resident(view: services.ResidentView) -> ResidentOut:
    return ResidentOut(
        resident_id=view.resident_id,
        name=view.name,
        id_number=view.id_number,
        phone=view.phone,
        address=view.address,
        unmasked=view.unmasked,
    )


def _social(view: services.SocialSecurityView) -> SocialSecurityOut:
    return SocialSecurityOut(
        record_id=view.record_id,
        resident_id=view.resident_id,
        ss_number=view.ss_number,
        schemes=int(view.schemes),
        agency_code=view.agency_code,
        status=view.status.value,
        unmasked=view.unmasked,
    )


def _card(view: services.CardView) -> CardOut:
    return CardOut(
        card_no=view.card_no,
        card_type=view.card_type.value,
        registered=view.registered,
        state=view.state.value,
        resident_id=view.resident_id,
        purse_limit=view.purse_limit,
        shadow_balance=view.shadow_balance,
        shadow_online_seq=view.shadow_online_seq,
        shadow_offline_seq=view.shadow_offline_seq,
        chip_serial=view.chip_serial,
        hotlisted_at=view.hotlisted_at,
    )


def _settlement(view: services.SettlementView) -> SettlementOut:
    return SettlementOut(
        settlement_id=view.settlement_id,
        kind=view.kind.value,
        from_card_no=view.from_card_no,
        to_card_no=view.to_card_no,
        status=view.status.value,
        amount=view.amount,
        cutoff_at=view.cutoff_at,
    )


def load_out(result: LoadResult) -> LoadOut:
    """The response body of a load."""
    outcome, record = result.outcome, result.outcome.record
    return LoadOut(
        card_no=outcome.card_no,
        desk_id=result.desk_id,
        amount=outcome.amount,
        status=outcome.status.value,
        balance_after=outcome.balance_after,
        term_id=record.term_id if record else None,
        term_seq=record.term_seq if record else None,
        device_seq=record.device_seq if record else None,
        card_seq=record.card_seq if record else None,
        txn_date=record.txn_date if record else None,
        txn_time=record.txn_time if record else None,
        tac=(record.tac or None) if record else None,
    )


def render_load(result: LoadResult) -> bytes:
    """The JSON bytes of a load's response (what replays send again)."""
    return load_out(result).model_dump_json().encode()


# --- residents -------------------------------------------------------------------------------------------------


@staff_route(
    router, "POST", "/residents", roles=_roles(Action.REGISTER_RESIDENT), errors=(409, 503),
    response_model=ResidentOut, status_code=201,
)  # fmt: skip
def register_resident(body: ResidentIn, principal: CurrentStaff, ctx: Counter, uow: Work) -> ResidentOut:
    """Register a resident (ID number checked, sealed; the answer is masked)."""
    return _resident(
        counter_service.register_resident(
            uow, ctx, principal, name=body.name, id_number=body.id_number, phone=body.phone, address=body.address
        )
    )


@staff_route(
    router, "POST", "/residents/search", roles=_roles(Action.VIEW_RESIDENT), errors=(404, 503),
    response_model=ResidentOut,
)  # fmt: skip
def find_resident(
    body: ResidentSearchIn, principal: CurrentStaff, ctx: Counter, uow: Work, unmasked: Unmasked = False
) -> ResidentOut:
    """Find a resident by ID number."""
    return _resident(counter_service.find_resident(uow, ctx, principal, id_number=body.id_number, unmasked=unmasked))


@staff_route(
    router, "GET", "/residents/{resident_id}", roles=_roles(Action.VIEW_RESIDENT), errors=(404, 503),
    response_model=ResidentOut,
)  # fmt: skip
def show_resident(
    resident_id: ResidentId, principal: CurrentStaff, ctx: Counter, uow: Work, unmasked: Unmasked = False
) -> ResidentOut:
    """A resident."""
    return _resident(counter_service.show_resident(uow, ctx, principal, resident_id=resident_id, unmasked=unmasked))


@staff_route(
    router, "PUT", "/residents/{resident_id}/social-security", roles=_roles(Action.LINK_SOCIAL_SECURITY),
    errors=(404, 409, 503), response_model=SocialSecurityOut,
)  # fmt: skip
def link_social_security(
    resident_id: ResidentId, body: SocialSecurityIn, principal: CurrentStaff, ctx: Counter, uow: Work
) -> SocialSecurityOut:
    """Link (or update) the resident's social-security record."""
    return _social(
        counter_service.link_social_security(
            uow,
            ctx,
            principal,
            resident_id=resident_id,
            ss_number=body.ss_number,
            schemes=body.schemes,
            agency_code=body.agency_code,
            status=body.status,
        )
    )


@staff_route(
    router, "GET", "/residents/{resident_id}/social-security", roles=_roles(Action.VIEW_RESIDENT),
    errors=(404, 503), response_model=SocialSecurityOut,
)  # fmt: skip
def show_social_security(
    resident_id: ResidentId, principal: CurrentStaff, ctx: Counter, uow: Work, unmasked: Unmasked = False
) -> SocialSecurityOut:
    """The resident's social-security record."""
    return _social(
        counter_service.show_social_security(uow, ctx, principal, resident_id=resident_id, unmasked=unmasked)
    )


# --- cards -------------------------------------------------------------------------------------------------------


@staff_route(
    router, "POST", "/cards", roles=_roles(Action.APPLY_FOR_CARD), errors=(404, 409, 503), response_model=CardOut,
    status_code=201,
)  # fmt: skip
def apply_for_card(body: CardApplicationIn, principal: CurrentStaff, ctx: Counter, uow: Work) -> CardOut:
    """Apply for a card (``applied``; issue it next)."""
    return _card(
        counter_service.apply_for_card(
            uow, ctx, principal, card_type=body.card_type, city_code=body.city_code, resident_id=body.resident_id
        )
    )


@staff_route(
    router, "GET", "/cards/{card_no}", roles=_roles(Action.VIEW_RESIDENT), errors=(404,), response_model=CardOut
)
def show_card(card_no: CardNo, principal: CurrentStaff, uow: Work) -> CardOut:
    """Look a card up: state and shadow balance."""
    return _card(counter_service.show_card(uow, principal, card_no=card_no))


@staff_route(
    router, "GET", "/desks/{desk_id}/card", roles=_roles(Action.LOAD), errors=(404, 409, 503),
    response_model=CardInReaderOut,
)  # fmt: skip
def card_in_reader(desk_id: DeskIdPath, principal: CurrentStaff, state: State, uow: Work) -> CardInReaderOut:
    """Which card is in your desk's reader."""
    card_no, view = counter_service.card_in_reader(uow, state.desk_readers, principal, desk_id=desk_id)
    return CardInReaderOut(desk_id=desk_id, card_no=card_no, card=_card(view) if view is not None else None)


@staff_route(
    router, "POST", "/cards/{card_no}/issue", roles=_roles(Action.ISSUE_CARD), errors=(404, 409, 503),
    response_model=CardOut,
)  # fmt: skip
def issue_card(
    card_no: CardNo, body: IssueIn, principal: CurrentStaff, state: State, ctx: Counter, uow: Work
) -> CardOut:
    """Personalise the factory chip in your desk's reader as this applied card and hand it over (``active``)."""
    return _card(
        counter_service.issue_card(
            uow,
            ctx,
            state.desk_readers,
            principal,
            card_no=card_no,
            desk_id=body.desk_id,
            pin=body.pin,
            social_pin=body.social_pin,
        )
    )


IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        pattern=IDEMPOTENCY_KEY,
        description="a fresh key per load (UUID); a retry with the same key and body replays the first response",
    ),
]


REPLAYED = {
    "Idempotent-Replayed": {
        "description": "present on a retry: this is the first response again, byte for byte",
        "schema": {"type": "string", "enum": ["true"]},
    }
}


@staff_route(
    router, "POST", "/cards/{card_no}/loads", roles=_roles(Action.LOAD), errors=(404, 409, 503),
    response_model=LoadOut, status_code=201,
    responses={201: {"description": "The load (or, on a retry, its first response)", "headers": REPLAYED}},
)  # fmt: skip
def load_card(
    card_no: CardNo,
    body: LoadIn,
    idempotency_key: IdempotencyKey,
    principal: CurrentStaff,
    request: Request,
) -> Response:
    """Load cash onto the card in your desk's reader, exactly once per ``Idempotency-Key``.

    A retry with the same key and body gets the first response again, byte for byte (header
    ``Idempotent-Replayed: true``); the same key with another body is ``409 idempotency_conflict``; while the
    first request runs, retries wait for it. Refusals after the card was reached (card refused, limit) are
    stored and replayed too.
    """
    # The state and the counter context are read here rather than as dependencies: each synchronous dependency
    # is one more hop through the thread pool, on the path every load takes.
    state = get_state(request)
    ctx = state.counter_context()
    stored, replayed = counter_service.idempotent_load(
        state.new_uow,
        ctx,
        state.desk_readers,
        state.limiter,
        state.rate_limits.money,
        principal,
        key=idempotency_key,
        card_no=card_no,
        desk_id=body.desk_id,
        amount=body.amount,
        render=render_load,
    )
    state.metrics.loads.labels("replayed" if replayed else str(stored.status)).inc()
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return Response(stored.body, status_code=stored.status, media_type="application/json", headers=headers)


@staff_route(
    router, "POST", "/cards/{card_no}/loss", roles=_roles(Action.REPORT_LOSS), errors=(404, 409, 503),
    response_model=HotlistOut,
)  # fmt: skip
def report_loss(card_no: CardNo, body: LossIn, principal: CurrentStaff, ctx: Counter, uow: Work) -> HotlistOut:
    """Report the card lost, stolen or damaged: it is hotlisted at once."""
    view = counter_service.report_loss(uow, ctx, principal, card_no=card_no, reason=body.reason)
    return HotlistOut(version=view.version, card_no=view.card_no, reason=view.reason, listed_at=view.listed_at)


@staff_route(
    router, "POST", "/cards/{card_no}/replacement", roles=_roles(Action.REPLACE_CARD), errors=(404, 409, 503),
    response_model=ReplacementOut, status_code=201,
)  # fmt: skip
def replace_card(card_no: CardNo, principal: CurrentStaff, ctx: Counter, uow: Work) -> ReplacementOut:
    """Replace a lost card: a new card is applied for (issue it next); the old balance follows once cleared."""
    view = counter_service.replace_card(uow, ctx, principal, card_no=card_no)
    return ReplacementOut(
        old_card_no=view.old_card_no, new_card=_card(view.new_card), transfer=_settlement(view.transfer)
    )


@staff_route(
    router, "POST", "/cards/{card_no}/pin-reset", roles=_roles(Action.RESET_PIN), errors=(404, 409, 503),
    response_model=CardOut,
)  # fmt: skip
def reset_pin(
    card_no: CardNo, body: PinResetIn, principal: CurrentStaff, state: State, ctx: Counter, uow: Work
) -> CardOut:
    """Reset (and unblock) the purse or social-security PIN of the card in your desk's reader."""
    return _card(
        counter_service.reset_pin(
            uow,
            ctx,
            state.desk_readers,
            principal,
            card_no=card_no,
            desk_id=body.desk_id,
            new_pin=body.new_pin,
            application=body.application,
        )
    )


@staff_route(
    router, "POST", "/cards/{card_no}/refund", roles=_roles(Action.REFUND_CARD), errors=(404, 409, 503),
    response_model=SettlementOut,
)  # fmt: skip
def refund_card(
    card_no: CardNo, body: RefundIn, principal: CurrentStaff, state: State, ctx: Counter, uow: Work
) -> SettlementOut:
    """Refund a card: hotlisted, its balance settled (now when the chip agrees, else after clearing)."""
    return _settlement(
        counter_service.refund_card(
            uow,
            ctx,
            state.desk_readers,
            state.limiter,
            state.rate_limits.money,
            principal,
            card_no=card_no,
            desk_id=body.desk_id,
        )
    )


@staff_route(
    router, "POST", "/settlements/{settlement_id}/payout", roles=_roles(Action.PAY_OUT), errors=(404, 409, 503),
    response_model=SettlementOut,
)  # fmt: skip
def pay_out(
    settlement_id: SettlementId, principal: CurrentStaff, state: State, ctx: Counter, uow: Work
) -> SettlementOut:
    """Pay out a ready refund or cancellation in cash, once."""
    return _settlement(
        counter_service.pay_out(
            uow, ctx, state.limiter, state.rate_limits.money, principal, settlement_id=settlement_id
        )
    )


# --- card maintenance, cancellation, unconfirmed loads, transfers (issue #7, completeness) ----------------------
#
# The wiring is in :mod:`api.counter_service` (the web pages call it too): the role issuance's access table gives
# the action (``acting_staff``), one's own desk (``desk_for``), the card looked up before the reader is touched
# (``404``), the card in the reader checked to be the one named (``409 wrong_card_in_reader``), then the service.


class CardholderOut(Out):
    """The card's holder after the change (masked)."""

    card_no: str
    resident: ResidentOut


class LoadResolutionOut(Out):
    """What became of the card's ``unconfirmed`` loads (``proof``: it happened, counted; ``void``: it did not;
    still ``unconfirmed``: the card cannot prove it, clearing decides). ``desk_id`` in each is the resolving desk."""

    card_no: str
    loads: list[LoadOut]


@staff_route(
    router, "POST", "/cards/{card_no}/block", roles=_roles(Action.BLOCK_CARD), errors=(404, 409, 503),
    response_model=CardOut,
)  # fmt: skip
def block_card(
    card_no: CardNo, body: BlockIn, principal: CurrentStaff, state: State, ctx: Counter, uow: Work
) -> CardOut:
    """Block the purse of the card in your desk's reader: temporarily (``blocked``; a supervisor lifts it) or,
    with ``permanent``, for good (``locked`` and hotlisted)."""
    return _card(
        counter_service.block_at_desk(
            uow, ctx, state.desk_readers, principal, card_no=card_no, desk_id=body.desk_id, permanent=body.permanent
        )
    )


@staff_route(
    router, "POST", "/cards/{card_no}/unblock", roles=_roles(Action.UNBLOCK_CARD), errors=(404, 409, 503),
    response_model=CardOut,
)  # fmt: skip
def unblock_card(
    card_no: CardNo, body: UnblockIn, principal: CurrentStaff, state: State, ctx: Counter, uow: Work
) -> CardOut:
    """Lift the temporary block of the card in your desk's reader (``blocked → active``; 409 unless blocked)."""
    return _card(
        counter_service.unblock_at_desk(uow, ctx, state.desk_readers, principal, card_no=card_no, desk_id=body.desk_id)
    )


@staff_route(
    router, "POST", "/cards/{card_no}/cancel", roles=_roles(Action.CANCEL_CARD), errors=(404, 409, 503),
    response_model=SettlementOut,
)  # fmt: skip
def cancel_card(
    card_no: CardNo, body: CancelIn, principal: CurrentStaff, state: State, ctx: Counter, uow: Work
) -> SettlementOut:
    """Cancel a card: blocked as a whole in your desk's reader when present (``desk_id``), hotlisted, its balance
    settled (now when the chip agrees, else after clearing); pay it out with ``…/settlements/{id}/payout``."""
    return _settlement(
        counter_service.cancel_at_counter(
            uow,
            ctx,
            state.desk_readers,
            state.limiter,
            state.rate_limits.money,
            principal,
            card_no=card_no,
            desk_id=body.desk_id,
        )
    )


@staff_route(
    router, "POST", "/cards/{card_no}/activate", roles=_roles(Action.ACTIVATE_CARD), errors=(404, 409, 503),
    response_model=CardOut,
)  # fmt: skip
def activate_card(card_no: CardNo, principal: CurrentStaff, ctx: Counter, uow: Work) -> CardOut:
    """Hand over a personalised stock card (``personalised → active``; 409 in any other state)."""
    return _card(counter_service.activate(uow, ctx, principal, card_no=card_no))


@staff_route(
    router, "PATCH", "/cards/{card_no}/cardholder", roles=_roles(Action.CHANGE_CARDHOLDER_DATA),
    errors=(404, 409, 503), response_model=CardholderOut,
)  # fmt: skip
def change_cardholder_data(
    card_no: CardNo, body: CardholderChangeIn, principal: CurrentStaff, state: State, ctx: Counter, uow: Work
) -> CardholderOut:
    """Change the holder's name, phone or address (an active registered card in your desk's reader; 409 for an
    anonymous or inactive card). A new name or phone is written to the card with line MAC."""
    view = counter_service.change_holder_at_desk(
        uow,
        ctx,
        state.desk_readers,
        principal,
        card_no=card_no,
        desk_id=body.desk_id,
        name=body.name,
        phone=body.phone,
        address=body.address,
    )
    return CardholderOut(card_no=card_no, resident=_resident(view))


@staff_route(
    router, "POST", "/cards/{card_no}/loads/resolution", roles=_roles(Action.LOAD), errors=(404, 409, 503),
    response_model=LoadResolutionOut,
)  # fmt: skip
def resolve_unconfirmed_loads(
    card_no: CardNo, body: LoadResolutionIn, principal: CurrentStaff, state: State, ctx: Counter
) -> LoadResolutionOut:
    """Settle the card's ``unconfirmed`` loads with the card in your desk's reader: each becomes ``proof``
    (counted), ``void`` (it never happened) or stays ``unconfirmed`` (clearing decides). No such load: an empty
    list."""
    outcomes = counter_service.resolve_loads_at_desk(
        state.new_uow, ctx, state.desk_readers, principal, card_no=card_no, desk_id=body.desk_id
    )
    return LoadResolutionOut(
        card_no=card_no, loads=[load_out(LoadResult(body.desk_id, outcome)) for outcome in outcomes]
    )


@staff_route(
    router, "POST", "/settlements/{settlement_id}/collection", roles=_roles(Action.LOAD), errors=(404, 409, 503),
    response_model=LoadOut,
)  # fmt: skip
def collect_transfer(
    settlement_id: SettlementId, body: TransferCollectionIn, principal: CurrentStaff, state: State, ctx: Counter
) -> LoadOut:
    """Load a replacement's balance transfer onto the new card in your desk's reader, once clearing has made it
    ``ready`` (409 while ``pending``); calling again answers the first load (the money moves once)."""
    outcome = counter_service.collect_transfer_at_desk(
        state.new_uow,
        ctx,
        state.desk_readers,
        state.limiter,
        state.rate_limits.money,
        principal,
        settlement_id=settlement_id,
        desk_id=body.desk_id,
    )
    return load_out(LoadResult(body.desk_id, outcome))
