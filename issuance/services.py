"""The counter's services (issue #5): one function per action.

Each takes a unit of work (or, where the card is driven through a load host that commits on its own, a factory
of them), the acting :class:`~issuance.access.Staff`, and explicit inputs; it checks the role, does the work,
records who did it and when, and commits exactly once. Card actions take the :class:`~terminal.channel.Channel`
of the card in the counter's reader. Errors are :mod:`backoffice.errors` types; card status words arrive as
:class:`~backoffice.errors.CardRefused` with ``sw``.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backoffice.db import UnitOfWork
from backoffice.errors import CardRefused, Conflict, DeviceUnavailable, InvalidInput, NotFound, OnecardError
from cardos import crypto, perso
from cardos.batch import BatchRecord
from cardos.layout import PURSE_AID, SOCIAL_AID, HolderData, PublicData, SocialSecurityData, encode_pin
from issuance import cardops
from issuance.access import SYSTEM_CLEARING, Action, Staff, may_see_personal_data, require
from issuance.bookkeeping import (
    CLEARED_PURCHASES,
    COUNTER_CASH,
    Clock,
    audit,
    card_account,
    card_by_no,
    hotlist,
    local_now,
    move_money,
    next_counter_value,
    settlement_account,
    transition,
)
from issuance.idnumber import normalise, parse_id_number
from issuance.keys import Keystore
from issuance.lifecycle import (
    CLOSED_STATES,
    CardState,
    CardType,
    HotlistReason,
    InsuredScheme,
    LoadStatus,
    SettlementKind,
    SettlementStatus,
    SocialSecurityStatus,
    check_transition,
)
from issuance.loadhost import COUNTED, BackOfficeLoadHost, LoadFunding, LoadHooks, batch_record, complete_load
from issuance.models import (
    BalanceSettlement,
    Card,
    CardEvent,
    HotlistEntry,
    Load,
    Psam,
    Resident,
    SocialSecurityRecord,
)
from issuance.personalisation import (
    Progress,
    UserCardContents,
    chip_serial,
    issued_card_no,
    psam_steps,
    run_script,
    user_card_steps,
)
from issuance.pii import AAD_ID_NUMBER, AAD_SS_NUMBER, PersonalDataVault, mask_number, mask_phone
from terminal.cards import UserCard
from terminal.channel import Channel
from terminal.errors import CardRemoved, CardStatusError, HostRefused, TerminalError, TransactionRefused
from terminal.purse import CardSource, PurseTerminal

UowFactory = Callable[[], UnitOfWork]
NAME_MAX_BYTES = 20
"""EF 0016 holds the name in 20 bytes of UTF-8 (spec §2.1)."""


# --- inputs and views -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuerProfile:
    """What every card of this issuer carries: issuer_id (EF 0015), the key suite and versions, validity."""

    issuer_id: bytes
    alg: crypto.Alg
    key_version: int = 1
    transport_version: int = 1
    """The key set whose KT the factory chips carry."""
    validity_years: int = 10

    def __post_init__(self) -> None:
        if len(self.issuer_id) != 8:
            raise ValueError("issuer_id is 8 bytes")


@dataclass(frozen=True)
class ResidentView:
    """A resident as shown to a member of staff: numbers masked unless ``unmasked``."""

    resident_id: int
    name: str
    id_number: str
    phone: str
    address: str
    unmasked: bool


@dataclass(frozen=True)
class SocialSecurityView:
    """A social-security record as shown to a member of staff."""

    record_id: int
    resident_id: int | None
    ss_number: str
    schemes: InsuredScheme
    agency_code: str
    status: SocialSecurityStatus
    unmasked: bool


@dataclass(frozen=True)
class CardView:
    """A card's record: identity, state and the back office's shadow of its purse."""

    card_no: str
    card_type: CardType
    registered: bool
    state: CardState
    resident_id: int | None
    purse_limit: int
    shadow_balance: int
    shadow_online_seq: int
    shadow_offline_seq: int
    chip_serial: str | None
    hotlisted_at: datetime | None


@dataclass(frozen=True)
class PsamView:
    """A personalised PSAM."""

    term_id: str
    chip_serial: str
    alg: crypto.Alg
    key_version: int


@dataclass(frozen=True)
class HotlistView:
    """One hotlist entry, as validators download it."""

    version: int
    card_no: str
    reason: str
    listed_at: datetime


@dataclass(frozen=True)
class HotlistDownload:
    """What a validator holding ``since_version`` downloads: the delta to ``version``, or the full list.

    The full list comes for ``since_version`` 0 and for one above the newest version; cards never leave the
    hotlist (a hotlisted card's life cycle has no way back), so a delta only adds.
    """

    version: int
    since_version: int
    full: bool
    entries: tuple[HotlistView, ...]


@dataclass(frozen=True)
class SettlementView:
    """A card's balance on its way out (replacement transfer, refund or cancellation)."""

    settlement_id: int
    kind: SettlementKind
    from_card_no: str
    to_card_no: str | None
    status: SettlementStatus
    amount: int | None
    cutoff_at: datetime


@dataclass(frozen=True)
class ReplacementView:
    """A replacement: the new card (applied, to be issued) and the pending transfer of the old card's balance."""

    old_card_no: str
    new_card: CardView
    transfer: SettlementView


@dataclass(frozen=True)
class LoadOutcome:
    """The outcome of an online load; ``replayed`` when the request id had already been loaded."""

    request_id: str
    card_no: str
    amount: int
    status: LoadStatus
    balance_after: int | None
    record: BatchRecord | None
    replayed: bool = False


@dataclass(frozen=True)
class PersonalisationJob:
    """One card of a batch: an applied card_no, the factory chip's channel and the card's PIN."""

    card_no: str
    channel: Channel
    pin: str
    social_pin: str | None = None

    def __repr__(self) -> str:
        return f"PersonalisationJob(card_no={self.card_no})"


@dataclass(frozen=True)
class PersonalisationResult:
    """How one card of a batch went: ``error`` is ``None`` on success, else the error code and message."""

    card_no: str
    chip_serial: str | None
    error: str | None


# --- helpers ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def card_errors() -> Iterator[None]:
    """Turn what a card or reader answered into back-office errors (status words kept in ``sw``)."""
    try:
        yield
    except OnecardError:
        raise
    except CardStatusError as exc:
        raise CardRefused(str(exc), sw=f"{exc.sw:04X}", command=exc.command_name) from exc
    except TransactionRefused as exc:
        details = {"sw": f"{exc.sw:04X}"} if exc.sw is not None else {}
        raise CardRefused(exc.reason, **details) from exc
    except HostRefused as exc:
        raise Conflict(str(exc)) from exc
    except CardRemoved as exc:
        raise DeviceUnavailable(f"the card left the reader: {exc}") from exc
    except TerminalError as exc:
        raise DeviceUnavailable(str(exc)) from exc
    except ValueError as exc:  # an ATR or a file that is not this system's layout
        raise CardRefused(f"the card's answer is not understood: {exc}") from exc


def _checked(value: str, what: str, pattern: Callable[[str], bool], message: str) -> str:
    if not pattern(value):
        raise InvalidInput(f"{what}: {message}")
    return value


def _check_name(name: str) -> str:
    name = " ".join(name.split())
    if not name or len(name.encode("utf-8")) > NAME_MAX_BYTES:
        raise InvalidInput(f"a name is 1 to {NAME_MAX_BYTES} bytes of UTF-8 (it goes on the card)")
    return name


def _check_phone(phone: str) -> str:
    phone = phone.strip()
    return _checked(phone, "phone", lambda p: len(p) == 11 and p.isascii() and p.isdigit(), "11 digits")


def _check_address(address: str) -> str:
    address = address.strip()
    return _checked(address, "address", lambda a: 0 < len(a) <= 200, "1 to 200 characters")


def _check_pin(pin: str, what: str = "PIN") -> bytes:
    try:
        return encode_pin(pin)
    except ValueError:
        raise InvalidInput(f"a {what} is 4 to 12 digits") from None


def _digits(value: str, count: int, what: str) -> str:
    return _checked(value, what, lambda v: len(v) == count and v.isascii() and v.isdigit(), f"{count} digits")


def _card_view(card: Card) -> CardView:
    return CardView(
        card_no=card.card_no,
        card_type=card.card_type,
        registered=card.registered,
        state=card.state,
        resident_id=card.resident_id,
        purse_limit=card.purse_limit,
        shadow_balance=card.shadow_balance,
        shadow_online_seq=card.shadow_online_seq,
        shadow_offline_seq=card.shadow_offline_seq,
        chip_serial=card.chip_serial,
        hotlisted_at=card.hotlisted_at,
    )


def _settlement_view(session: Session, settlement: BalanceSettlement) -> SettlementView:
    from_card = session.get(Card, settlement.from_card_id)
    to_card = session.get(Card, settlement.to_card_id) if settlement.to_card_id is not None else None
    assert from_card is not None
    return SettlementView(
        settlement_id=settlement.id,
        kind=settlement.kind,
        from_card_no=from_card.card_no,
        to_card_no=to_card.card_no if to_card is not None else None,
        status=settlement.status,
        amount=settlement.amount,
        cutoff_at=settlement.cutoff_at,
    )


def _resident(session: Session, resident_id: int, *, lock: bool = False) -> Resident:
    resident = session.get(Resident, resident_id, with_for_update=lock)
    if resident is None:
        raise NotFound("no such resident", resident_id=resident_id)
    return resident


def _show_resident(
    session: Session, staff: Staff, vault: PersonalDataVault, resident: Resident, now: datetime
) -> ResidentView:
    """Masked, or unmasked and audited when the role may see personal data."""
    if may_see_personal_data(staff):
        number = vault.open(resident.id_number_sealed, AAD_ID_NUMBER)
        audit(
            session, staff, "personal_data.unmasked_read", "resident", resident.id, now, fields=["id_number", "phone"]
        )
        return ResidentView(resident.id, resident.name, number, resident.phone, resident.address, True)
    return ResidentView(
        resident.id, resident.name, resident.id_number_masked, mask_phone(resident.phone), resident.address, False
    )


def _show_social_security(
    session: Session, staff: Staff, vault: PersonalDataVault, record: SocialSecurityRecord, now: datetime
) -> SocialSecurityView:
    unmasked = may_see_personal_data(staff)
    number = record.ss_number_masked
    if unmasked:
        number = vault.open(record.ss_number_sealed, AAD_SS_NUMBER)
        audit(session, staff, "personal_data.unmasked_read", "social_security", record.id, now, fields=["ss_number"])
    return SocialSecurityView(
        record.id,
        record.resident_id,
        number,
        InsuredScheme(record.schemes),
        record.agency_code,
        record.status,
        unmasked,
    )


def _record_creation(session: Session, card: Card, staff: Staff, at: datetime, reason: str) -> None:
    session.add(
        CardEvent(
            card_id=card.id,
            from_state=None,
            to_state=card.state,
            actor_id=staff.staff_id,
            actor_role=str(staff.role),
            at=at,
            reason=reason,
        )
    )
    audit(session, staff, "card.state", "card", card.card_no, at, from_state=None, to_state=str(card.state))


def _new_card(
    session: Session,
    staff: Staff,
    *,
    card_type: CardType,
    city_code: str,
    resident: Resident | None,
    now: datetime,
    reason: str,
) -> Card:
    """A card in the ``applied`` state with the next serial of its city (card_no = city ‖ serial, spec §0)."""
    if resident is not None:
        live = session.scalars(
            select(Card).where(Card.resident_id == resident.id, Card.state.not_in(CLOSED_STATES))
        ).first()
        if live is not None:
            raise Conflict("the resident already holds a card", card_no=live.card_no, state=str(live.state))
    serial = next_counter_value(session, f"card_serial:{city_code}")
    if serial > 999_999_999_999:
        raise Conflict("the city's card serials are exhausted", city_code=city_code)
    registered = resident is not None
    card = Card(
        card_no=f"{city_code}{serial:012d}",
        city_code=city_code,
        serial=serial,
        card_type=card_type,
        registered=registered,
        resident_id=resident.id if resident is not None else None,
        state=CardState.APPLIED,
        purse_limit=perso.purse_limit(registered),
        social_application=False,
        shadow_balance=0,
        shadow_online_seq=0,
        shadow_offline_seq=0,
        created_at=now,
    )
    session.add(card)
    session.flush()
    _record_creation(session, card, staff, now, reason)
    return card


def _expiry(start: date, years: int) -> date:
    try:
        anniversary = start.replace(year=start.year + years)
    except ValueError:  # 29 February
        anniversary = start.replace(year=start.year + years, day=28) + timedelta(days=1)
    return anniversary - timedelta(days=1)


def _key_ref(card: Card) -> cardops.CardKeyRef:
    if card.alg is None or card.key_version is None:
        raise Conflict("the card was never personalised", card_no=card.card_no)
    return cardops.CardKeyRef(card.card_no, crypto.Alg(card.alg), card.key_version)


def _check_chip(channel: Channel, card: Card) -> PublicData:
    """The card in the reader must be ``card`` (EF 0015 card_no)."""
    public = cardops.read_public(channel)
    if public.card_no != card.card_no:
        raise Conflict("the card in the reader is another card", expected=card.card_no, presented=public.card_no)
    return public


# --- residents and social security -------------------------------------------------------------------------


def register_resident(
    uow: UnitOfWork,
    staff: Staff,
    vault: PersonalDataVault,
    *,
    name: str,
    id_number: str,
    phone: str,
    address: str,
    clock: Clock = local_now,
) -> ResidentView:
    """Register a resident (issue #5, records): the ID number checked (GB 11643), sealed, hashed for look-up.

    Returns the masked view (the clerk typed the number; nothing unmasked is read back).
    """
    require(staff, Action.REGISTER_RESIDENT)
    now = clock()
    checked = parse_id_number(id_number, now.date())
    name, phone, address = _check_name(name), _check_phone(phone), _check_address(address)
    session = uow.session
    lookup = vault.lookup_hash(checked.number)
    existing = session.scalars(select(Resident).where(Resident.id_number_lookup == lookup)).first()
    if existing is not None:
        raise Conflict("a resident with this ID number is already registered", resident_id=existing.id)
    resident = Resident(
        name=name,
        id_number_sealed=vault.seal(checked.number, AAD_ID_NUMBER),
        id_number_lookup=lookup,
        id_number_masked=mask_number(checked.number),
        phone=phone,
        address=address,
        created_at=now,
        created_by=staff.staff_id,
        updated_at=now,
    )
    session.add(resident)
    session.flush()
    audit(session, staff, "resident.register", "resident", resident.id, now)
    uow.commit()
    return ResidentView(resident.id, name, resident.id_number_masked, mask_phone(phone), address, False)


def show_resident(
    uow: UnitOfWork, staff: Staff, vault: PersonalDataVault, *, resident_id: int, clock: Clock = local_now
) -> ResidentView:
    """A resident for display: masked, or unmasked (and audited) for roles that may see personal data."""
    require(staff, Action.VIEW_RESIDENT)
    view = _show_resident(uow.session, staff, vault, _resident(uow.session, resident_id), clock())
    uow.commit()
    return view


def find_resident(
    uow: UnitOfWork, staff: Staff, vault: PersonalDataVault, *, id_number: str, clock: Clock = local_now
) -> ResidentView:
    """Find a resident by ID number through the keyed look-up hash (no decryption), shown as by
    :func:`show_resident`."""
    require(staff, Action.VIEW_RESIDENT)
    session = uow.session
    try:
        lookup = vault.lookup_hash(normalise(id_number))
    except UnicodeEncodeError:
        raise NotFound("no resident with this ID number") from None
    resident = session.scalars(select(Resident).where(Resident.id_number_lookup == lookup)).first()
    if resident is None:
        raise NotFound("no resident with this ID number")
    view = _show_resident(session, staff, vault, resident, clock())
    uow.commit()
    return view


def link_social_security(
    uow: UnitOfWork,
    staff: Staff,
    vault: PersonalDataVault,
    *,
    resident_id: int,
    ss_number: str,
    schemes: InsuredScheme,
    agency_code: str,
    status: SocialSecurityStatus = SocialSecurityStatus.ACTIVE,
    clock: Clock = local_now,
) -> SocialSecurityView:
    """Link a resident's social-security record (issue #5, counter): the number must BE the resident's ID number.

    A number that differs is refused (:class:`InvalidInput`); a record already linked to another resident is a
    :class:`Conflict`; linking again to the same resident updates its schemes, agency and status.
    """
    require(staff, Action.LINK_SOCIAL_SECURITY)
    now = clock()
    session = uow.session
    resident = _resident(session, resident_id, lock=True)
    checked = parse_id_number(ss_number, now.date())
    lookup = vault.lookup_hash(checked.number)
    if lookup != resident.id_number_lookup:
        raise InvalidInput(
            "the social-security number differs from the resident's ID number: not linked", resident_id=resident_id
        )
    agency_code = _checked(
        agency_code.strip(), "agency code", lambda a: len(a) == 6 and a.isascii() and a.isalnum(), "6 letters/digits"
    )
    if not 0 <= int(schemes) <= 0x1F:
        raise InvalidInput("unknown insured schemes")
    record = session.scalars(
        select(SocialSecurityRecord).where(SocialSecurityRecord.ss_number_lookup == lookup).with_for_update()
    ).first()
    if record is None:
        record = SocialSecurityRecord(
            ss_number_sealed=vault.seal(checked.number, AAD_SS_NUMBER),
            ss_number_lookup=lookup,
            ss_number_masked=mask_number(checked.number),
            created_at=now,
        )
        session.add(record)
    elif record.resident_id is not None and record.resident_id != resident.id:
        raise Conflict("this social-security record is linked to another resident")
    action = "social_security.update" if record.resident_id == resident.id else "social_security.link"
    record.resident_id = resident.id
    record.schemes = int(schemes)
    record.agency_code = agency_code
    record.status = status
    record.linked_at = now
    record.linked_by = staff.staff_id
    session.flush()
    audit(session, staff, action, "social_security", record.id, now, resident_id=resident.id, status=str(status))
    uow.commit()
    return SocialSecurityView(
        record.id, resident.id, record.ss_number_masked, InsuredScheme(record.schemes), agency_code, status, False
    )


def show_social_security(
    uow: UnitOfWork, staff: Staff, vault: PersonalDataVault, *, resident_id: int, clock: Clock = local_now
) -> SocialSecurityView:
    """A resident's social-security record, masked unless the role may see it (then audited)."""
    require(staff, Action.VIEW_RESIDENT)
    session = uow.session
    record = session.scalars(
        select(SocialSecurityRecord).where(SocialSecurityRecord.resident_id == resident_id)
    ).first()
    if record is None:
        raise NotFound("the resident has no linked social-security record", resident_id=resident_id)
    view = _show_social_security(session, staff, vault, record, clock())
    uow.commit()
    return view


# --- cards: application, issue, PSAMs ------------------------------------------------------------------------


def apply_for_card(
    uow: UnitOfWork,
    staff: Staff,
    *,
    card_type: CardType,
    city_code: str,
    resident_id: int | None = None,
    clock: Clock = local_now,
) -> CardView:
    """Apply for a card (issue #5: ``applied``): card_no allocated as city code ‖ 12-digit serial (spec §0).

    With a resident the card is registered (purse limit 5,000 yuan) and the resident may hold no other live
    card; without, it is anonymous (1,000 yuan).
    """
    require(staff, Action.APPLY_FOR_CARD)
    now = clock()
    city_code = _digits(city_code, 4, "city code")
    session = uow.session
    resident = _resident(session, resident_id, lock=True) if resident_id is not None else None
    card = _new_card(
        session, staff, card_type=CardType(card_type), city_code=city_code, resident=resident, now=now, reason="applied"
    )
    uow.commit()
    return _card_view(card)


def _user_card_contents(
    session: Session,
    vault: PersonalDataVault,
    issuer: IssuerProfile,
    card: Card,
    purse_pin: bytes,
    social_pin: bytes,
    today: date,
) -> UserCardContents:
    public = PublicData(
        issuer_id=issuer.issuer_id,
        card_no=card.card_no,
        start_date=today.strftime("%Y%m%d"),
        expiry_date=_expiry(today, issuer.validity_years).strftime("%Y%m%d"),
        card_type=card.card_type.code,
        registered=card.registered,
    )
    holder = HolderData("", "", "")
    social: SocialSecurityData | None = None
    if card.resident_id is not None:
        resident = _resident(session, card.resident_id)
        id_number = vault.open(resident.id_number_sealed, AAD_ID_NUMBER)
        holder = HolderData(resident.name, id_number, resident.phone)
        record = session.scalars(
            select(SocialSecurityRecord).where(SocialSecurityRecord.resident_id == resident.id)
        ).first()
        if record is not None and record.status is SocialSecurityStatus.ACTIVE:
            social = SocialSecurityData(
                ss_number=vault.open(record.ss_number_sealed, AAD_SS_NUMBER),
                name=resident.name,
                insurance_flags=record.schemes,
                agency=record.agency_code,
                issue_date=today.strftime("%Y%m%d"),
            )
    return UserCardContents(
        alg=issuer.alg,
        key_version=issuer.key_version,
        public=public,
        holder=holder,
        purse_limit=card.purse_limit,
        purse_pin=purse_pin,
        social=social,
        social_pin=social_pin if social is not None else None,
    )


def _personalise(
    session: Session,
    staff: Staff,
    keys: Keystore,
    vault: PersonalDataVault,
    issuer: IssuerProfile,
    channel: Channel,
    card: Card,
    pin: str,
    social_pin: str | None,
    now: datetime,
    progress: Progress | None,
) -> None:
    """Personalise the factory chip in ``channel`` as ``card`` (spec §2.5) and record it ``personalised``."""
    check_transition(card.state, CardState.PERSONALISED)
    purse_pin = _check_pin(pin)
    social_pin_bcd = _check_pin(social_pin, "social-security PIN") if social_pin is not None else purse_pin
    contents = _user_card_contents(session, vault, issuer, card, purse_pin, social_pin_bcd, now.date())
    with card_errors():
        serial = chip_serial(channel.atr)
        already = issued_card_no(channel)
        if already is not None and already != card.card_no:
            raise Conflict("the chip in the reader is already an issued card", presented=already)
        other = session.scalars(select(Card).where(Card.chip_serial == serial, Card.id != card.id)).first()
        if other is not None:
            raise Conflict("this chip already carries another card", card_no=other.card_no)
        if already is None:
            steps = user_card_steps(keys, contents)
            run_script(channel, keys, issuer.alg, issuer.transport_version, steps, progress)
    card.alg = int(issuer.alg)
    card.key_version = issuer.key_version
    card.chip_serial = serial
    card.start_date = now.date()
    card.expiry_date = _expiry(now.date(), issuer.validity_years)
    card.social_application = contents.social is not None
    transition(session, card, CardState.PERSONALISED, staff, now, "personalised" if already is None else "recovered")


def issue_card(
    uow: UnitOfWork,
    staff: Staff,
    keys: Keystore,
    vault: PersonalDataVault,
    issuer: IssuerProfile,
    channel: Channel,
    *,
    card_no: str,
    pin: str,
    social_pin: str | None = None,
    clock: Clock = local_now,
    progress: Progress | None = None,
) -> CardView:
    """Issue an applied card at the counter (spec §2.5): personalise the factory chip in ``channel`` with its
    diversified keys (from the keystore), EF 0015/0016, the social-security application (when the resident has
    an active linked record) and the PIN the resident chose (``social_pin`` defaults to it), then hand it over
    (``applied → personalised → active``).

    A chip that already carries this card (an earlier attempt whose record was lost) is recorded, not rewritten.
    """
    require(staff, Action.ISSUE_CARD)
    now = clock()
    session = uow.session
    card = card_by_no(session, card_no)
    _personalise(session, staff, keys, vault, issuer, channel, card, pin, social_pin, now, progress)
    transition(session, card, CardState.ACTIVE, staff, now, "handed over")
    uow.commit()
    return _card_view(card)


def personalise_batch(
    new_uow: UowFactory,
    staff: Staff,
    keys: Keystore,
    vault: PersonalDataVault,
    issuer: IssuerProfile,
    jobs: Sequence[PersonalisationJob],
    *,
    clock: Clock = local_now,
    progress: Progress | None = None,
) -> list[PersonalisationResult]:
    """Personalise many applied cards (spec §2.5), one unit of work per card so each chip's record stands alone.

    Cards end ``personalised`` (stock, activated when handed over: :func:`activate_card`). A card that fails is
    reported and left ``applied``; the batch goes on. ``progress(done, total, card_no)`` after each card drives
    the progress bar (:func:`issuance.progress.progress_bar`).
    """
    require(staff, Action.ISSUE_CARD)
    results: list[PersonalisationResult] = []
    total = len(jobs)
    for done, job in enumerate(jobs, start=1):
        try:
            with new_uow() as uow:
                card = card_by_no(uow.session, job.card_no)
                _personalise(
                    uow.session, staff, keys, vault, issuer, job.channel, card, job.pin, job.social_pin, clock(), None
                )
                uow.commit()
                results.append(PersonalisationResult(job.card_no, card.chip_serial, None))
        except OnecardError as exc:
            results.append(PersonalisationResult(job.card_no, None, f"{exc.code}: {exc.message}"))
        if progress is not None:
            progress(done, total, job.card_no)
    return results


def activate_card(uow: UnitOfWork, staff: Staff, *, card_no: str, clock: Clock = local_now) -> CardView:
    """Hand over a personalised stock card (``personalised → active``)."""
    require(staff, Action.ACTIVATE_CARD)
    card = card_by_no(uow.session, card_no)
    transition(uow.session, card, CardState.ACTIVE, staff, clock(), "handed over")
    uow.commit()
    return _card_view(card)


def personalise_psam(
    uow: UnitOfWork,
    staff: Staff,
    keys: Keystore,
    issuer: IssuerProfile,
    channel: Channel,
    *,
    term_id: str,
    clock: Clock = local_now,
    progress: Progress | None = None,
) -> PsamView:
    """Personalise the factory chip in ``channel`` as the PSAM of ``term_id`` (spec §3): EF 0016 = term_id,
    the issuer's MPK of the profile's key version."""
    require(staff, Action.PERSONALISE_PSAM)
    now = clock()
    term_id = _digits(term_id, 12, "term_id")
    session = uow.session
    if session.scalars(select(Psam).where(Psam.term_id == term_id)).first() is not None:
        raise Conflict("a PSAM with this term_id exists", term_id=term_id)
    with card_errors():
        serial = chip_serial(channel.atr)
        if session.scalars(select(Psam).where(Psam.chip_serial == serial)).first() is not None:
            raise Conflict("this chip is already a PSAM")
        steps = psam_steps(keys, issuer.alg, issuer.key_version, term_id)
        run_script(channel, keys, issuer.alg, issuer.transport_version, steps, progress)
    psam = Psam(
        term_id=term_id,
        chip_serial=serial,
        alg=int(issuer.alg),
        key_version=issuer.key_version,
        personalised_at=now,
        personalised_by=staff.staff_id,
    )
    session.add(psam)
    session.flush()
    audit(session, staff, "psam.personalise", "psam", term_id, now, chip_serial=serial)
    uow.commit()
    return PsamView(term_id, serial, issuer.alg, issuer.key_version)


# --- loads ---------------------------------------------------------------------------------------------------


def load_outcome(load: Load, replayed: bool = False) -> LoadOutcome:
    """The :class:`LoadOutcome` of a load as recorded (its spec §5 record once it has a device_seq)."""
    record = batch_record(load) if load.device_seq is not None else None
    balance_after = load.old_balance + load.amount if load.status in COUNTED else None
    return LoadOutcome(load.request_id, load.card_no, load.amount, load.status, balance_after, record, replayed)


_load_outcome = load_outcome


@dataclass(frozen=True)
class _LoadOnRecord:
    outcome: LoadOutcome
    funding_account: str


def _load_on_record(new_uow: UowFactory, request_id: str) -> _LoadOnRecord | None:
    with new_uow() as uow:
        load = uow.session.scalars(select(Load).where(Load.request_id == request_id)).first()
        if load is None:
            return None
        return _LoadOnRecord(_load_outcome(load, replayed=True), load.funding_account)


def _run_load(
    new_uow: UowFactory,
    staff: Staff,
    keys: Keystore,
    channel: Channel,
    *,
    amount: int,
    request_id: str,
    term_id: str,
    clock: Clock,
    card_source: CardSource | None,
    recovery_timeout: float,
    funding: LoadFunding,
    hooks: LoadHooks | None = None,
    on_record_checked: bool = False,
) -> LoadOutcome:
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise InvalidInput("a load is a positive whole number of fen")
    if not request_id or len(request_id) > 64:
        raise InvalidInput("a request id is 1 to 64 characters")
    term_id = _digits(term_id, 12, "term_id")
    existing = None if on_record_checked else _load_on_record(new_uow, request_id)
    if existing is not None:
        status = existing.outcome.status
        if existing.outcome.amount != amount or existing.funding_account != funding.account:
            raise Conflict("this request id was used for another load", request_id=request_id)
        if status in COUNTED:
            return existing.outcome
        if status is not LoadStatus.AUTHORIZED:
            raise Conflict(
                f"this request's load is {status}: resolve it with the card, or use a new request id",
                request_id=request_id,
                status=str(status),
            )
    host = BackOfficeLoadHost(new_uow, keys, staff, clock=clock, funding=funding, fresh=existing is None, hooks=hooks)
    terminal = PurseTerminal(clock=clock, card_source=card_source, recovery_timeout=recovery_timeout)
    with card_errors():
        terminal.load(channel, amount, host, term_id=bytes.fromhex(term_id), request_id=request_id)
    if host.outcome is not None:  # as confirm committed it
        return load_outcome(host.outcome, replayed=False)
    done = _load_on_record(new_uow, request_id)
    assert done is not None
    return dataclasses.replace(done.outcome, replayed=False)


def load_card(
    new_uow: UowFactory,
    staff: Staff,
    keys: Keystore,
    channel: Channel,
    *,
    amount: int,
    request_id: str,
    term_id: str,
    clock: Clock = local_now,
    card_source: CardSource | None = None,
    recovery_timeout: float = 10.0,
    hooks: LoadHooks | None = None,
    on_record_checked: bool = False,
) -> LoadOutcome:
    """An online load at the counter (spec §2.4, Load), paid in cash, recorded exactly once per ``request_id``.

    The back office is the load host (:class:`~issuance.loadhost.BackOfficeLoadHost`: MAC1, MAC2, TAC), which
    commits each step itself, so this service takes a unit-of-work factory. A request id already loaded is
    answered from the record without touching the card (``replayed``). When the card leaves after CREDIT the
    terminal waits for it on ``card_source`` and recovers the proof; without one the load is ``unconfirmed``
    until :func:`resolve_unconfirmed_load`.

    ``hooks`` add the caller's rows to the host's two transactions (:class:`~issuance.loadhost.LoadHooks`).
    ``on_record_checked``: the caller has just seen that no load has ``request_id`` (the look-up is skipped; were
    it wrong, the unique request id still sends the load down the host's general path, which refuses or retries
    exactly as after the look-up).
    """
    require(staff, Action.LOAD)
    return _run_load(
        new_uow,
        staff,
        keys,
        channel,
        amount=amount,
        request_id=request_id,
        term_id=term_id,
        clock=clock,
        card_source=card_source,
        recovery_timeout=recovery_timeout,
        funding=LoadFunding(),
        hooks=hooks,
        on_record_checked=on_record_checked,
    )


def _status(load: Load) -> LoadStatus:
    """The load's status as it is now (after a call that may have changed it)."""
    return load.status


def resolve_unconfirmed_load(
    new_uow: UowFactory,
    staff: Staff,
    keys: Keystore,
    channel: Channel,
    *,
    request_id: str,
    clock: Clock = local_now,
) -> LoadOutcome:
    """Settle an ``unconfirmed`` load with the card (spec §2.4, GET TRANSACTION PROOF).

    A proof whose TAC verifies for this load counts it (``proof``); a card whose online counter is still at the
    load's seq proves it never happened (``void``: the request may be loaded again under a new id); otherwise
    the outcome cannot be proven and the load stays ``unconfirmed`` for clearing.
    """
    require(staff, Action.LOAD)
    with new_uow() as uow:
        load = uow.session.scalars(select(Load).where(Load.request_id == request_id).with_for_update()).first()
        if load is None:
            raise NotFound("no such load", request_id=request_id)
        if load.status is not LoadStatus.UNCONFIRMED:
            return _load_outcome(load, replayed=True)
        card = card_by_no(uow.session, load.card_no)
        with card_errors():
            _check_chip(channel, card)
            user = UserCard(channel)
            proof = user.get_transaction_proof(0x02, load.online_seq)
            now = clock()
            if proof is not None:
                complete_load(uow.session, keys, staff, load, proof[1], LoadStatus.PROOF, now)
                if _status(load) is LoadStatus.REJECTED:
                    # The card's last load at this seq is not this one: this load did not happen.
                    load.status = LoadStatus.VOID
                    load.tac = ""
            if _status(load) is LoadStatus.UNCONFIRMED:
                seq = user.initialize_load(0, bytes.fromhex(load.term_id)).online_seq
                if seq == load.online_seq:
                    load.status = LoadStatus.VOID
                    load.completed_at = now
        audit(uow.session, staff, f"load.resolve.{load.status}", "load", request_id, clock(), card_no=load.card_no)
        uow.commit()
        return _load_outcome(load, replayed=False)


# --- loss, replacement, settlements ------------------------------------------------------------------------


def report_loss(
    uow: UnitOfWork,
    staff: Staff,
    *,
    card_no: str,
    reason: HotlistReason = HotlistReason.LOST,
    clock: Clock = local_now,
) -> HotlistView:
    """Report a card lost, stolen or damaged (issue #5): ``lost`` and on the hotlist at once, with a new version."""
    require(staff, Action.REPORT_LOSS)
    if reason not in (HotlistReason.LOST, HotlistReason.STOLEN, HotlistReason.DAMAGED):
        raise InvalidInput("a loss is reported as lost, stolen or damaged")
    now = clock()
    session = uow.session
    card = card_by_no(session, card_no)
    check_transition(card.state, CardState.LOST)
    entry = hotlist(session, card, str(reason), now)
    transition(session, card, CardState.LOST, staff, now, str(reason))
    uow.commit()
    return HotlistView(entry.version, entry.card_no, entry.reason, entry.listed_at)


def replace_card(uow: UnitOfWork, staff: Staff, *, old_card_no: str, clock: Clock = local_now) -> ReplacementView:
    """Replace a lost card (issue #5): ``lost → replaced``, a new card applied for (same holder and type, issue it
    with :func:`issue_card`), and a pending transfer of the old card's balance.

    The transfer completes once clearing has cleared the old card's offline transactions up to its hotlist time
    (:func:`complete_pending_transfers`), then is loaded onto the new card once (:func:`collect_transfer`).
    A card's balance is settled at most once (one settlement per card, enforced by the database).
    """
    require(staff, Action.REPLACE_CARD)
    now = clock()
    session = uow.session
    old = card_by_no(session, old_card_no)
    check_transition(old.state, CardState.REPLACED)
    if old.hotlisted_at is None:
        raise Conflict("the card is not on the hotlist", card_no=old.card_no)
    if session.scalars(select(BalanceSettlement).where(BalanceSettlement.from_card_id == old.id)).first():
        raise Conflict("the card's balance is already being settled", card_no=old.card_no)
    resident = _resident(session, old.resident_id, lock=True) if old.resident_id is not None else None
    transition(session, old, CardState.REPLACED, staff, now, "replaced")
    new = _new_card(
        session,
        staff,
        card_type=old.card_type,
        city_code=old.city_code,
        resident=resident,
        now=now,
        reason=f"replaces {old.card_no}",
    )
    old.replaced_by_id = new.id
    transfer = BalanceSettlement(
        kind=SettlementKind.TRANSFER,
        from_card_id=old.id,
        to_card_id=new.id,
        cutoff_at=old.hotlisted_at,
        status=SettlementStatus.PENDING,
        created_at=now,
        created_by=staff.staff_id,
    )
    session.add(transfer)
    # Balances still on their way to the old card follow the holder to the new one.
    for inbound in session.scalars(
        select(BalanceSettlement)
        .where(BalanceSettlement.to_card_id == old.id, BalanceSettlement.status != SettlementStatus.DONE)
        .with_for_update()
    ):
        inbound.to_card_id = new.id
    session.flush()
    audit(session, staff, "settlement.open", "settlement", transfer.id, now, kind="transfer", from_card=old.card_no)
    uow.commit()
    return ReplacementView(old.card_no, _card_view(new), _settlement_view(session, transfer))


def _make_ready(session: Session, settlement: BalanceSettlement, actor: Staff, now: datetime) -> bool:
    """Move the from-card's (final) shadow balance into the settlement; False when it cannot be done yet."""
    if settlement.status is not SettlementStatus.PENDING:
        return False
    card = session.get(Card, settlement.from_card_id, with_for_update=True)
    assert card is not None
    if card.shadow_balance < 0:
        audit(session, actor, "settlement.negative_shadow", "settlement", settlement.id, now, card_no=card.card_no)
        return False
    amount = card.shadow_balance
    move_money(
        session,
        kind="settlement",
        from_account=card_account(card.card_no),
        to_account=settlement_account(settlement.id),
        amount=amount,
        reference=f"settlement:{settlement.id}",
        at=now,
        actor_id=actor.staff_id,
    )
    card.shadow_balance = 0
    card.shadow_updated_at = now
    settlement.amount = amount
    settlement.ready_at = now
    settlement.status = SettlementStatus.READY if amount > 0 else SettlementStatus.DONE
    if amount == 0:
        settlement.done_at = now
        settlement.done_by = actor.staff_id
    audit(session, actor, "settlement.ready", "settlement", settlement.id, now, amount=amount, card_no=card.card_no)
    return True


def complete_pending_transfers(
    uow: UnitOfWork, cleared_up_to: datetime, *, actor: Staff = SYSTEM_CLEARING, clock: Clock = local_now
) -> list[SettlementView]:
    """Called by clearing once every offline transaction up to ``cleared_up_to`` is cleared (issue #5).

    Every pending settlement (replacement transfer, refund, cancellation) whose cutoff — the card's hotlist or
    block time — is at or before ``cleared_up_to`` takes the card's shadow balance, now final: it moves out of
    the card's account exactly once. Commits (call it as its own unit of work, after clearing committed).
    """
    require(actor, Action.COMPLETE_TRANSFERS)
    if cleared_up_to.tzinfo is None:
        raise InvalidInput("cleared_up_to needs a timezone")
    now = clock()
    session = uow.session
    pending = session.scalars(
        select(BalanceSettlement)
        .where(BalanceSettlement.status == SettlementStatus.PENDING, BalanceSettlement.cutoff_at <= cleared_up_to)
        .order_by(BalanceSettlement.id)
        .with_for_update()
    ).all()
    completed = [settlement for settlement in pending if _make_ready(session, settlement, actor, now)]
    uow.commit()
    return [_settlement_view(session, settlement) for settlement in completed]


def collect_transfer(
    new_uow: UowFactory,
    staff: Staff,
    keys: Keystore,
    channel: Channel,
    *,
    settlement_id: int,
    term_id: str,
    clock: Clock = local_now,
    card_source: CardSource | None = None,
    recovery_timeout: float = 10.0,
) -> LoadOutcome:
    """Load a ready replacement transfer onto the new card (spec §2.4, Load), once: the request id is the
    settlement's, and the settlement is ``done`` in the same transaction that counts the load."""
    require(staff, Action.LOAD)
    with new_uow() as uow:
        settlement = uow.session.get(BalanceSettlement, settlement_id)
        if settlement is None or settlement.kind is not SettlementKind.TRANSFER or settlement.to_card_id is None:
            raise NotFound("no such transfer", settlement_id=settlement_id)
        if settlement.status is SettlementStatus.PENDING:
            raise Conflict("the old card's transactions are not cleared yet", settlement_id=settlement_id)
        to_card = uow.session.get(Card, settlement.to_card_id)
        assert to_card is not None and settlement.amount is not None
        amount, to_card_no, status = settlement.amount, to_card.card_no, settlement.status
    request_id = f"settlement-{settlement_id}"
    if status is SettlementStatus.DONE:
        done = _load_on_record(new_uow, request_id)
        if done is None:
            raise Conflict("this transfer is done (nothing to load)", settlement_id=settlement_id)
        return done.outcome
    funding = LoadFunding(account=settlement_account(settlement_id), settlement_id=settlement_id, card_no=to_card_no)
    return _run_load(
        new_uow,
        staff,
        keys,
        channel,
        amount=amount,
        request_id=request_id,
        term_id=term_id,
        clock=clock,
        card_source=card_source,
        recovery_timeout=recovery_timeout,
        funding=funding,
    )


def _close_card(
    uow: UnitOfWork,
    staff: Staff,
    keys: Keystore,
    channel: Channel | None,
    *,
    card_no: str,
    kind: Literal[SettlementKind.REFUND, SettlementKind.CANCEL],
    clock: Clock,
) -> SettlementView:
    target = CardState.REFUNDED if kind is SettlementKind.REFUND else CardState.CANCELLED
    reason = HotlistReason.REFUNDED if kind is SettlementKind.REFUND else HotlistReason.CANCELLED
    now = clock()
    session = uow.session
    card = card_by_no(session, card_no)
    check_transition(card.state, target)
    if session.scalars(select(BalanceSettlement).where(BalanceSettlement.from_card_id == card.id)).first():
        raise Conflict("the card's balance is already being settled", card_no=card_no)
    settled_on_chip = False
    if channel is not None:
        key_ref = _key_ref(card)
        with card_errors():
            _check_chip(channel, card)
            if card.state is CardState.ACTIVE:
                snapshot = PurseTerminal(clock=clock).read(channel)
                settled_on_chip = (
                    snapshot.balance == card.shadow_balance
                    and snapshot.online_seq == card.shadow_online_seq
                    and snapshot.offline_seq == card.shadow_offline_seq
                )
            if kind is SettlementKind.REFUND:
                cardops.application_block(channel, keys, key_ref, permanent=True)
            else:
                cardops.card_block(channel, keys, key_ref)
    if card.chip_serial is not None:
        hotlist(session, card, str(reason), now)
    transition(session, card, target, staff, now, "blocked at the counter" if channel is not None else "card absent")
    settlement = BalanceSettlement(
        kind=kind,
        from_card_id=card.id,
        cutoff_at=card.hotlisted_at or now,
        status=SettlementStatus.PENDING,
        created_at=now,
        created_by=staff.staff_id,
    )
    session.add(settlement)
    session.flush()
    audit(session, staff, "settlement.open", "settlement", settlement.id, now, kind=str(kind), from_card=card_no)
    ever_loaded = session.scalar(
        select(func.count()).select_from(Load).where(Load.card_id == card.id, Load.status != LoadStatus.VOID)
    )
    if settled_on_chip or not ever_loaded:  # a card never loaded holds nothing: nothing to wait for
        _make_ready(session, settlement, staff, now)
    uow.commit()
    return _settlement_view(session, settlement)


def refund_card(
    uow: UnitOfWork,
    staff: Staff,
    keys: Keystore,
    *,
    card_no: str,
    channel: Channel | None = None,
    clock: Clock = local_now,
) -> SettlementView:
    """Refund a card (issue #5): the purse is blocked for good (APPLICATION BLOCK ``01`` with line MAC, spec §2.4)
    when the card is present, the card is hotlisted, and its settled balance is to be paid out.

    When the chip's balance and counters equal the shadow the balance is settled now (``ready``); otherwise it
    waits for clearing up to the block time (:func:`complete_pending_transfers`). Pay out with
    :func:`pay_out_refund`.
    """
    require(staff, Action.REFUND_CARD)
    return _close_card(uow, staff, keys, channel, card_no=card_no, kind=SettlementKind.REFUND, clock=clock)


def cancel_card(
    uow: UnitOfWork,
    staff: Staff,
    keys: Keystore,
    *,
    card_no: str,
    channel: Channel | None = None,
    clock: Clock = local_now,
) -> SettlementView:
    """Cancel a card (issue #5): as :func:`refund_card`, but the whole card is blocked (CARD BLOCK, spec §2.3)."""
    require(staff, Action.CANCEL_CARD)
    return _close_card(uow, staff, keys, channel, card_no=card_no, kind=SettlementKind.CANCEL, clock=clock)


def pay_out_refund(uow: UnitOfWork, staff: Staff, *, settlement_id: int, clock: Clock = local_now) -> SettlementView:
    """Pay out a ready refund or cancellation in cash (issue #5): once (``ready → done``)."""
    require(staff, Action.PAY_OUT)
    now = clock()
    session = uow.session
    settlement = session.get(BalanceSettlement, settlement_id, with_for_update=True)
    if settlement is None or settlement.kind is SettlementKind.TRANSFER:
        raise NotFound("no such refund", settlement_id=settlement_id)
    if settlement.status is not SettlementStatus.READY or settlement.amount is None:
        raise Conflict(f"this refund is {settlement.status}", settlement_id=settlement_id)
    move_money(
        session,
        kind="payout",
        from_account=settlement_account(settlement.id),
        to_account=COUNTER_CASH,
        amount=settlement.amount,
        reference=f"settlement:{settlement.id}",
        at=now,
        actor_id=staff.staff_id,
    )
    settlement.status = SettlementStatus.DONE
    settlement.done_at = now
    settlement.done_by = staff.staff_id
    audit(session, staff, "settlement.paid_out", "settlement", settlement.id, now, amount=settlement.amount)
    uow.commit()
    return _settlement_view(session, settlement)


# --- card maintenance ------------------------------------------------------------------------------------------


def reset_pin(
    uow: UnitOfWork,
    staff: Staff,
    keys: Keystore,
    channel: Channel,
    *,
    card_no: str,
    new_pin: str,
    application: Literal["purse", "social"] = "purse",
    clock: Clock = local_now,
) -> CardView:
    """Reset (and so unblock) a PIN with RELOAD PIN (spec §2.4): ``new ‖ MAC_DRPK(new)``, IV = the challenge."""
    require(staff, Action.RESET_PIN)
    now = clock()
    session = uow.session
    card = card_by_no(session, card_no)
    if card.state is not CardState.ACTIVE:
        raise Conflict(f"the card is {card.state}: no PIN reset", card_no=card_no)
    if application == "social" and not card.social_application:
        raise Conflict("the card has no social-security application", card_no=card_no)
    pin = _check_pin(new_pin)
    key_ref = _key_ref(card)
    with card_errors():
        _check_chip(channel, card)
        cardops.reload_pin(channel, keys, key_ref, SOCIAL_AID if application == "social" else PURSE_AID, pin)
    audit(session, staff, "card.pin_reset", "card", card_no, now, application=application)
    uow.commit()
    return _card_view(card)


def block_card(
    uow: UnitOfWork,
    staff: Staff,
    keys: Keystore,
    channel: Channel,
    *,
    card_no: str,
    permanent: bool = False,
    clock: Clock = local_now,
) -> CardView:
    """Block the purse (spec §2.3, APPLICATION BLOCK with line MAC): temporarily (``blocked``, reversible) or
    permanently (``locked``, and hotlisted)."""
    require(staff, Action.BLOCK_CARD)
    now = clock()
    session = uow.session
    card = card_by_no(session, card_no)
    target = CardState.LOCKED if permanent else CardState.BLOCKED
    check_transition(card.state, target)
    key_ref = _key_ref(card)
    with card_errors():
        _check_chip(channel, card)
        cardops.application_block(channel, keys, key_ref, permanent=permanent)
    if permanent:
        hotlist(session, card, str(HotlistReason.LOCKED), now)
    transition(session, card, target, staff, now, "permanent block" if permanent else "temporary block")
    uow.commit()
    return _card_view(card)


def unblock_card(
    uow: UnitOfWork, staff: Staff, keys: Keystore, channel: Channel, *, card_no: str, clock: Clock = local_now
) -> CardView:
    """Lift a temporary block (spec §2.3, APPLICATION UNBLOCK with line MAC): ``blocked → active``."""
    require(staff, Action.UNBLOCK_CARD)
    now = clock()
    session = uow.session
    card = card_by_no(session, card_no)
    if card.state is not CardState.BLOCKED:
        raise Conflict(f"the card is {card.state}, not blocked", card_no=card_no)
    key_ref = _key_ref(card)
    with card_errors():
        _check_chip(channel, card)
        cardops.application_unblock(channel, keys, key_ref)
    transition(session, card, CardState.ACTIVE, staff, now, "unblocked")
    uow.commit()
    return _card_view(card)


def change_cardholder_data(
    uow: UnitOfWork,
    staff: Staff,
    keys: Keystore,
    vault: PersonalDataVault,
    channel: Channel,
    *,
    card_no: str,
    name: str | None = None,
    phone: str | None = None,
    address: str | None = None,
    clock: Clock = local_now,
) -> ResidentView:
    """Change the holder's name, phone or address (issue #5): the record, and EF 0016 (and the name in EF 0005)
    rewritten with UPDATE BINARY with line MAC (spec §2.4)."""
    require(staff, Action.CHANGE_CARDHOLDER_DATA)
    now = clock()
    session = uow.session
    card = card_by_no(session, card_no)
    if card.resident_id is None:
        raise Conflict("an anonymous card has no holder", card_no=card_no)
    if card.state is not CardState.ACTIVE:
        raise Conflict(f"the card is {card.state}: its data cannot change", card_no=card_no)
    resident = _resident(session, card.resident_id, lock=True)
    changed: list[str] = []
    if name is not None and _check_name(name) != resident.name:
        resident.name = _check_name(name)
        changed.append("name")
    if phone is not None and _check_phone(phone) != resident.phone:
        resident.phone = _check_phone(phone)
        changed.append("phone")
    if address is not None and _check_address(address) != resident.address:
        resident.address = _check_address(address)
        changed.append("address")
    if "name" in changed or "phone" in changed:
        key_ref = _key_ref(card)
        holder = HolderData(resident.name, vault.open(resident.id_number_sealed, AAD_ID_NUMBER), resident.phone)
        with card_errors():
            _check_chip(channel, card)
            cardops.update_holder(channel, keys, key_ref, holder)
            if "name" in changed and card.social_application:
                name_field = resident.name.encode("utf-8").ljust(cardops.NAME_LENGTH, b"\x00")
                cardops.update_social_name(channel, keys, key_ref, name_field)
    resident.updated_at = now
    audit(session, staff, "resident.change", "resident", resident.id, now, card_no=card_no, fields=changed)
    uow.commit()
    return ResidentView(
        resident.id, resident.name, resident.id_number_masked, mask_phone(resident.phone), resident.address, False
    )


# --- reads for validators and clearing --------------------------------------------------------------------------


def show_card(uow: UnitOfWork, *, card_no: str) -> CardView:
    """A card's record and shadow (read-only)."""
    return _card_view(card_by_no(uow.session, card_no, lock=False))


def read_hotlist(session: Session, since_version: int = 0) -> HotlistDownload:
    """The hotlist through any session (the device API reads it in its request's unit of work)."""
    if isinstance(since_version, bool) or not isinstance(since_version, int) or since_version < 0:
        raise InvalidInput("since_version is a non-negative integer")
    newest = int(session.scalar(select(func.coalesce(func.max(HotlistEntry.version), 0))) or 0)
    full = since_version == 0 or since_version > newest
    after = 0 if full else since_version
    entries = session.scalars(
        select(HotlistEntry).where(HotlistEntry.version > after).order_by(HotlistEntry.version)
    ).all()
    views = tuple(HotlistView(e.version, e.card_no, e.reason, e.listed_at) for e in entries)
    return HotlistDownload(newest, since_version, full, views)


def hotlist_download(uow: UnitOfWork, *, since_version: int = 0) -> HotlistDownload:
    """The hotlist for validators (issue #5): the entries after ``since_version``, oldest first, or the full
    list (see :class:`HotlistDownload`). Read-only."""
    return read_hotlist(uow.session, since_version)


def record_cleared_purchase(
    session: Session, *, card_no: str, card_seq: int, amount: int, txn_at: datetime, reference: str
) -> None:
    """Clearing's hook: a settled purchase lowers the card's shadow (balance, offline counter). Does not commit.

    Refused (:class:`Conflict`) for a purchase after the card's hotlist time (clearing rejects those) or on a
    card whose balance has already been settled: a final shadow never changes.
    """
    if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
        raise InvalidInput("an amount is a non-negative whole number of fen")
    card = card_by_no(session, card_no)
    if card.hotlisted_at is not None and txn_at > card.hotlisted_at:
        raise Conflict("a purchase after the card's hotlist time is not settled", card_no=card_no)
    settlement = session.scalars(select(BalanceSettlement).where(BalanceSettlement.from_card_id == card.id)).first()
    if settlement is not None and settlement.status is not SettlementStatus.PENDING:
        raise Conflict("the card's balance is already settled", card_no=card_no)
    card.shadow_balance -= amount
    card.shadow_offline_seq = max(card.shadow_offline_seq, card_seq + 1)
    card.shadow_updated_at = txn_at
    move_money(
        session,
        kind="purchase",
        from_account=card_account(card_no),
        to_account=CLEARED_PURCHASES,
        amount=amount,
        reference=reference,
        at=txn_at,
        actor_id=SYSTEM_CLEARING.staff_id,
    )
