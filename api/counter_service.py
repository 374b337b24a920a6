"""The counter's operations as the API (and the web pages) run them: issuance's services, called as the right
role, at the right desk, with idempotent loads.

Every function takes the :class:`CounterContext` (keystore, personal-data vault, issuer profile), the calling
:class:`~api.staff_auth.Principal` and explicit inputs. The role check is issuance's (``require`` in each service,
through :func:`~api.staff_auth.acting_staff`); the desk check is :func:`api.desks.desk_for` (one's own desk
only); unmasked personal data is shown, and audited, by issuance for the roles that may see it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from sqlalchemy import Connection, Table, bindparam, exists, func, or_, select

from api import idempotency
from api.deps import ServiceUnavailable
from api.desks import DeskReaders, DeskSession, desk_for
from api.ratelimit import RateLimiter, Rule, enforce
from api.schemas import error_body
from api.staff_auth import DeskView, Principal, acting_staff, roles_for
from backoffice.db import UnitOfWork, run_statement
from backoffice.errors import CardRefused, Conflict, Forbidden, NotFound, OnecardError, RateLimited
from backoffice.settings import Settings, read_dotenv
from cardos import crypto
from issuance import cardops, services
from issuance.access import Action, Staff
from issuance.bookkeeping import Clock, local_now
from issuance.keys import Keystore
from issuance.lifecycle import CardType, HotlistReason, InsuredScheme, LoadStatus, SettlementKind, SocialSecurityStatus
from issuance.loadhost import LoadHooks
from issuance.models import BalanceSettlement, Card, Load
from issuance.pii import PersonalDataVault
from terminal.channel import Channel

log = logging.getLogger("onecard.api.counter")

UowFactory = Callable[[], UnitOfWork]
LOAD_OPERATION = "counter.load"


@dataclass
class CounterContext:
    """What the counter's services need besides the database: keys, the PII vault, the issuer profile."""

    keys: Keystore
    vault: PersonalDataVault
    issuer: services.IssuerProfile | None = None
    """Needed to issue cards; ``None``: issuing answers ``503``."""
    clock: Clock = local_now
    recovery_timeout: float = 10.0
    """How long a load waits for a card that left the reader after CREDIT to come back."""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_environment(cls, settings: Settings, env: Mapping[str, str] | None = None) -> CounterContext:
        """Production wiring: the keystore of ``ONECARD_KEYSTORE``; the vault from ``ONECARD_PII_KEY`` (sealing
        key) and ``ONECARD_PII_LOOKUP_KEY`` (look-up hash key), 64 hex digits each; the issuer profile from
        ``ONECARD_ISSUER_ID`` (16 hex digits), ``ONECARD_ISSUER_ALG`` (``00`` or ``04``, default ``00``) and
        ``ONECARD_ISSUER_KEY_VERSION`` (default 1)."""
        from issuance.keystore import AesGcmSealer, open_keystore

        values = {**read_dotenv(), **os.environ} if env is None else dict(env)
        try:
            seal_key = bytes.fromhex(values.get("ONECARD_PII_KEY", ""))
            lookup_key = bytes.fromhex(values.get("ONECARD_PII_LOOKUP_KEY", ""))
        except ValueError:
            raise CounterUnavailable("ONECARD_PII_KEY and ONECARD_PII_LOOKUP_KEY must be 64 hex digits") from None
        if len(seal_key) != 32 or len(lookup_key) != 32:
            raise CounterUnavailable("the counter needs ONECARD_PII_KEY and ONECARD_PII_LOOKUP_KEY (64 hex digits)")
        issuer = None
        if values.get("ONECARD_ISSUER_ID"):
            try:
                issuer = services.IssuerProfile(
                    bytes.fromhex(values["ONECARD_ISSUER_ID"]),
                    crypto.Alg(int(values.get("ONECARD_ISSUER_ALG") or "00", 16)),
                    key_version=int(values.get("ONECARD_ISSUER_KEY_VERSION") or "1"),
                )
            except ValueError:
                raise CounterUnavailable("ONECARD_ISSUER_ID/ALG/KEY_VERSION are malformed") from None
        try:
            keys = open_keystore(settings.keystore, values)
        except OnecardError as exc:
            raise CounterUnavailable(f"the keystore cannot be opened: {exc.message}") from None
        return cls(keys=keys, vault=PersonalDataVault(AesGcmSealer(seal_key), lookup_key), issuer=issuer)


class CounterUnavailable(ServiceUnavailable):
    """The counter is not configured here (keys, personal-data keys or issuer profile missing) (503)."""

    code = "counter_unavailable"


# --- residents and social security -----------------------------------------------------------------------------


def register_resident(
    uow: UnitOfWork, ctx: CounterContext, principal: Principal, *, name: str, id_number: str, phone: str, address: str
) -> services.ResidentView:
    """Register a resident (masked view back)."""
    staff = acting_staff(principal, Action.REGISTER_RESIDENT)
    return services.register_resident(
        uow, staff, ctx.vault, name=name, id_number=id_number, phone=phone, address=address, clock=ctx.clock
    )


def show_resident(
    uow: UnitOfWork, ctx: CounterContext, principal: Principal, *, resident_id: int, unmasked: bool
) -> services.ResidentView:
    """A resident: masked, or unmasked (audited) when asked for by a role that may see it."""
    staff = acting_staff(principal, Action.VIEW_RESIDENT, unmasked=unmasked)
    return services.show_resident(uow, staff, ctx.vault, resident_id=resident_id, clock=ctx.clock)


def find_resident(
    uow: UnitOfWork, ctx: CounterContext, principal: Principal, *, id_number: str, unmasked: bool
) -> services.ResidentView:
    """A resident found by ID number (keyed hash; nothing decrypted to search)."""
    staff = acting_staff(principal, Action.VIEW_RESIDENT, unmasked=unmasked)
    return services.find_resident(uow, staff, ctx.vault, id_number=id_number, clock=ctx.clock)


def link_social_security(
    uow: UnitOfWork,
    ctx: CounterContext,
    principal: Principal,
    *,
    resident_id: int,
    ss_number: str,
    schemes: int,
    agency_code: str,
    status: str,
) -> services.SocialSecurityView:
    """Link (or update) the resident's social-security record; the number must be their ID number."""
    staff = acting_staff(principal, Action.LINK_SOCIAL_SECURITY)
    return services.link_social_security(
        uow,
        staff,
        ctx.vault,
        resident_id=resident_id,
        ss_number=ss_number,
        schemes=InsuredScheme(schemes),
        agency_code=agency_code,
        status=SocialSecurityStatus(status),
        clock=ctx.clock,
    )


def show_social_security(
    uow: UnitOfWork, ctx: CounterContext, principal: Principal, *, resident_id: int, unmasked: bool
) -> services.SocialSecurityView:
    """The resident's social-security record, masked unless asked for by a role that may see it."""
    staff = acting_staff(principal, Action.VIEW_RESIDENT, unmasked=unmasked)
    return services.show_social_security(uow, staff, ctx.vault, resident_id=resident_id, clock=ctx.clock)


# --- cards -------------------------------------------------------------------------------------------------------


def apply_for_card(
    uow: UnitOfWork,
    ctx: CounterContext,
    principal: Principal,
    *,
    card_type: str,
    city_code: str,
    resident_id: int | None,
) -> services.CardView:
    """Apply for a card (registered with a resident, else anonymous)."""
    staff = acting_staff(principal, Action.APPLY_FOR_CARD)
    return services.apply_for_card(
        uow, staff, card_type=CardType(card_type), city_code=city_code, resident_id=resident_id, clock=ctx.clock
    )


def show_card(uow: UnitOfWork, principal: Principal, *, card_no: str) -> services.CardView:
    """A card's record and shadow balance (every staff role but admin)."""
    if principal.roles.isdisjoint(roles_for(Action.VIEW_RESIDENT)):
        raise Forbidden("your roles may not look cards up")
    return services.show_card(uow, card_no=card_no)


class WrongCardInReader(Conflict):
    """The card in the desk's reader is not the card the request names (409)."""

    code = "wrong_card_in_reader"


def _check_card_in_reader(channel: Channel, card_no: str, *, unreadable_passes: bool) -> None:
    """Refuse (``409 wrong_card_in_reader``) when the card in the reader is not ``card_no``.

    A card that does not let its public file be read (blocked as a whole) is refused as the chip answers, or,
    with ``unreadable_passes``, left to the service: it checks the record's state first (``409``), then the chip.
    """
    try:
        with services.card_errors():
            presented = cardops.read_public(channel).card_no
    except CardRefused:
        if not unreadable_passes:
            raise
        return
    if presented != card_no:
        raise WrongCardInReader("the card in the desk's reader is another card", expected=card_no, presented=presented)


@contextmanager
def _card_in_desk_reader(
    readers: DeskReaders, desk: DeskView, card_no: str, *, unreadable_passes: bool = True
) -> Iterator[DeskSession]:
    """One's desk reader, opened, with the card ``card_no`` in it (:func:`_check_card_in_reader`), for the
    service to be called with."""
    with readers.open(desk) as opened:
        _check_card_in_reader(opened.channel, card_no, unreadable_passes=unreadable_passes)
        yield opened


def _desk_for_card(uow: UnitOfWork, principal: Principal, *, desk_id: str, card_no: str) -> DeskView:
    """One's own desk (``403``), the card looked up before the reader is touched (``404``)."""
    desk = desk_for(principal, desk_id)
    services.show_card(uow, card_no=card_no)
    return desk


def card_in_reader(
    uow: UnitOfWork, readers: DeskReaders, principal: Principal, *, desk_id: str
) -> tuple[str, services.CardView | None]:
    """The card_no of the card in one's desk reader, and its record if it is one of ours."""
    if principal.roles.isdisjoint(roles_for(Action.LOAD)):
        raise Forbidden("your roles may not use a desk reader")
    desk = desk_for(principal, desk_id)
    with readers.open(desk) as opened, services.card_errors():
        card_no = cardops.read_public(opened.channel).card_no
    try:
        return card_no, services.show_card(uow, card_no=card_no)
    except OnecardError:
        return card_no, None


def issue_card(
    uow: UnitOfWork,
    ctx: CounterContext,
    readers: DeskReaders,
    principal: Principal,
    *,
    card_no: str,
    desk_id: str,
    pin: str,
    social_pin: str | None,
) -> services.CardView:
    """Personalise the factory chip in one's desk reader as the applied card ``card_no`` and hand it over."""
    staff = acting_staff(principal, Action.ISSUE_CARD)
    if ctx.issuer is None:
        raise CounterUnavailable("no issuer profile is configured: cards cannot be issued here")
    desk = desk_for(principal, desk_id)
    with readers.open(desk) as opened:
        return services.issue_card(
            uow,
            staff,
            ctx.keys,
            ctx.vault,
            ctx.issuer,
            opened.channel,
            card_no=card_no,
            pin=pin,
            social_pin=social_pin,
            clock=ctx.clock,
        )


def report_loss(
    uow: UnitOfWork, ctx: CounterContext, principal: Principal, *, card_no: str, reason: str
) -> services.HotlistView:
    """Report the card lost, stolen or damaged: hotlisted at once."""
    staff = acting_staff(principal, Action.REPORT_LOSS)
    return services.report_loss(uow, staff, card_no=card_no, reason=HotlistReason(reason), clock=ctx.clock)


def replace_card(
    uow: UnitOfWork, ctx: CounterContext, principal: Principal, *, card_no: str
) -> services.ReplacementView:
    """Replace a lost card: a new card applied for, the old balance pending transfer."""
    staff = acting_staff(principal, Action.REPLACE_CARD)
    return services.replace_card(uow, staff, old_card_no=card_no, clock=ctx.clock)


def refund_card(
    uow: UnitOfWork,
    ctx: CounterContext,
    readers: DeskReaders,
    limiter: RateLimiter,
    money: Rule,
    principal: Principal,
    *,
    card_no: str,
    desk_id: str | None,
) -> services.SettlementView:
    """Refund a card: blocked for good in one's desk reader when present (``desk_id``), hotlisted, settled."""
    staff = acting_staff(principal, Action.REFUND_CARD)
    enforce(limiter, money, principal.username)
    if desk_id is None:
        return services.refund_card(uow, staff, ctx.keys, card_no=card_no, clock=ctx.clock)
    desk = desk_for(principal, desk_id)
    with readers.open(desk) as opened:
        return services.refund_card(uow, staff, ctx.keys, card_no=card_no, channel=opened.channel, clock=ctx.clock)


def pay_out(
    uow: UnitOfWork,
    ctx: CounterContext,
    limiter: RateLimiter,
    money: Rule,
    principal: Principal,
    *,
    settlement_id: int,
) -> services.SettlementView:
    """Pay out a ready refund or cancellation in cash, once."""
    staff = acting_staff(principal, Action.PAY_OUT)
    enforce(limiter, money, principal.username)
    return services.pay_out_refund(uow, staff, settlement_id=settlement_id, clock=ctx.clock)


def reset_pin(
    uow: UnitOfWork,
    ctx: CounterContext,
    readers: DeskReaders,
    principal: Principal,
    *,
    card_no: str,
    desk_id: str,
    new_pin: str,
    application: Literal["purse", "social"],
) -> services.CardView:
    """Reset (and unblock) a PIN of the card in one's desk reader."""
    staff = acting_staff(principal, Action.RESET_PIN)
    desk = desk_for(principal, desk_id)
    with readers.open(desk) as opened:
        return services.reset_pin(
            uow,
            staff,
            ctx.keys,
            opened.channel,
            card_no=card_no,
            new_pin=new_pin,
            application=application,
            clock=ctx.clock,
        )


# --- card maintenance, cancellation, unconfirmed loads, transfers ------------------------------------------------


def block_at_desk(
    uow: UnitOfWork,
    ctx: CounterContext,
    readers: DeskReaders,
    principal: Principal,
    *,
    card_no: str,
    desk_id: str,
    permanent: bool,
) -> services.CardView:
    """Block the purse of the card in one's desk reader: ``blocked`` (temporary) or ``locked`` (for good,
    hotlisted)."""
    staff = acting_staff(principal, Action.BLOCK_CARD)
    desk = _desk_for_card(uow, principal, desk_id=desk_id, card_no=card_no)
    with _card_in_desk_reader(readers, desk, card_no) as opened:
        return services.block_card(
            uow, staff, ctx.keys, opened.channel, card_no=card_no, permanent=permanent, clock=ctx.clock
        )


def unblock_at_desk(
    uow: UnitOfWork, ctx: CounterContext, readers: DeskReaders, principal: Principal, *, card_no: str, desk_id: str
) -> services.CardView:
    """Lift the temporary block of the card in one's desk reader (``blocked → active``; supervisors)."""
    staff = acting_staff(principal, Action.UNBLOCK_CARD)
    desk = _desk_for_card(uow, principal, desk_id=desk_id, card_no=card_no)
    with _card_in_desk_reader(readers, desk, card_no) as opened:
        return services.unblock_card(uow, staff, ctx.keys, opened.channel, card_no=card_no, clock=ctx.clock)


def cancel_at_counter(
    uow: UnitOfWork,
    ctx: CounterContext,
    readers: DeskReaders,
    limiter: RateLimiter,
    money: Rule,
    principal: Principal,
    *,
    card_no: str,
    desk_id: str | None,
) -> services.SettlementView:
    """Cancel a card (supervisors): the whole card blocked in one's desk reader when present (``desk_id``),
    hotlisted, its balance settled for pay-out."""
    staff = acting_staff(principal, Action.CANCEL_CARD)
    if desk_id is None:
        enforce(limiter, money, principal.username)
        return services.cancel_card(uow, staff, ctx.keys, card_no=card_no, clock=ctx.clock)
    desk = _desk_for_card(uow, principal, desk_id=desk_id, card_no=card_no)
    enforce(limiter, money, principal.username)
    with _card_in_desk_reader(readers, desk, card_no) as opened:
        return services.cancel_card(uow, staff, ctx.keys, card_no=card_no, channel=opened.channel, clock=ctx.clock)


def activate(uow: UnitOfWork, ctx: CounterContext, principal: Principal, *, card_no: str) -> services.CardView:
    """Hand over a personalised stock card (``personalised → active``)."""
    staff = acting_staff(principal, Action.ACTIVATE_CARD)
    return services.activate_card(uow, staff, card_no=card_no, clock=ctx.clock)


def change_holder_at_desk(
    uow: UnitOfWork,
    ctx: CounterContext,
    readers: DeskReaders,
    principal: Principal,
    *,
    card_no: str,
    desk_id: str,
    name: str | None,
    phone: str | None,
    address: str | None,
) -> services.ResidentView:
    """Change the holder's name, phone or address: the record, and the card in one's desk reader (line MAC)."""
    staff = acting_staff(principal, Action.CHANGE_CARDHOLDER_DATA)
    desk = _desk_for_card(uow, principal, desk_id=desk_id, card_no=card_no)
    with _card_in_desk_reader(readers, desk, card_no) as opened:
        return services.change_cardholder_data(
            uow,
            staff,
            ctx.keys,
            ctx.vault,
            opened.channel,
            card_no=card_no,
            name=name,
            phone=phone,
            address=address,
            clock=ctx.clock,
        )


def unconfirmed_loads(uow: UnitOfWork, *, card_no: str) -> int:
    """How many of the card's loads await resolution with the card (``unconfirmed``)."""
    counted = uow.session.scalar(
        select(func.count()).select_from(Load).where(Load.card_no == card_no, Load.status == LoadStatus.UNCONFIRMED)
    )
    return int(counted or 0)


def resolve_loads_at_desk(
    new_uow: UowFactory,
    ctx: CounterContext,
    readers: DeskReaders,
    principal: Principal,
    *,
    card_no: str,
    desk_id: str,
) -> list[services.LoadOutcome]:
    """Settle every ``unconfirmed`` load of the card in one's desk reader, oldest first (an empty list: there is
    none). The card is the proof: whoever made the load, the card's own answer decides it."""
    staff = acting_staff(principal, Action.LOAD)
    desk = desk_for(principal, desk_id)
    with new_uow() as uow:
        services.show_card(uow, card_no=card_no)
        request_ids = list(
            uow.session.scalars(
                select(Load.request_id)
                .where(Load.card_no == card_no, Load.status == LoadStatus.UNCONFIRMED)
                .order_by(Load.id)
            )
        )
    with _card_in_desk_reader(readers, desk, card_no) as opened:
        return [
            services.resolve_unconfirmed_load(
                new_uow, staff, ctx.keys, opened.channel, request_id=request_id, clock=ctx.clock
            )
            for request_id in request_ids
        ]


def collect_transfer_at_desk(
    new_uow: UowFactory,
    ctx: CounterContext,
    readers: DeskReaders,
    limiter: RateLimiter,
    money: Rule,
    principal: Principal,
    *,
    settlement_id: int,
    desk_id: str,
) -> services.LoadOutcome:
    """Load a replacement's ready transfer onto the new card in one's desk reader, once (a second call answers
    the first load again)."""
    staff = acting_staff(principal, Action.LOAD)
    desk = desk_for(principal, desk_id)
    with new_uow() as uow:
        settlement = uow.session.get(BalanceSettlement, settlement_id)
        if settlement is None or settlement.kind is not SettlementKind.TRANSFER or settlement.to_card_id is None:
            raise NotFound("no such transfer", settlement_id=settlement_id)
        to_card = uow.session.get(Card, settlement.to_card_id)
        if to_card is None:
            raise NotFound("no such transfer", settlement_id=settlement_id)
        to_card_no = to_card.card_no
    enforce(limiter, money, principal.username)
    with _card_in_desk_reader(readers, desk, to_card_no) as opened:
        return services.collect_transfer(
            new_uow,
            staff,
            ctx.keys,
            opened.channel,
            settlement_id=settlement_id,
            term_id=desk.term_id,
            clock=ctx.clock,
            card_source=opened.card_source,
            recovery_timeout=ctx.recovery_timeout,
        )


# --- loads ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadResult:
    """A load as the API reports it."""

    desk_id: str
    outcome: services.LoadOutcome


def _json_bytes(document: Any) -> bytes:
    return json.dumps(document, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str).encode()


def idempotent_load(
    new_uow: UowFactory,
    ctx: CounterContext,
    readers: DeskReaders,
    limiter: RateLimiter,
    money: Rule,
    principal: Principal,
    *,
    key: str,
    card_no: str,
    desk_id: str,
    amount: int,
    render: Callable[[LoadResult], bytes],
    success_status: int = 201,
) -> tuple[idempotency.StoredResponse, bool]:
    """A load under an ``Idempotency-Key``: ``(response, replayed)``.

    The first request runs the load and stores its response (success, or a refusal with a 4xx status); retries
    get exactly those bytes (``replayed``). Nothing is stored when the load was not attempted (wrong desk,
    no or wrong card in the reader, rate limit) or failed on the server's side (5xx): the key stays free.
    Only first runs take a token from the money rate limit.

    A key that is not on record, for a load that is not on record either (one indexed read, outside any
    transaction), takes the fast path: the key is claimed in the load's authorization transaction and the
    response stored in its outcome transaction (two commits in all). Otherwise, or when a concurrent request
    with the same key claims it first, the key is claimed on its own first (:func:`idempotency.begin`: replay,
    wait, conflict or take-over), then the load runs.
    """
    staff = acting_staff(principal, Action.LOAD)  # role first: no key is even looked at without it
    desk = desk_for(principal, desk_id)
    request = {"card_no": card_no, "desk_id": desk_id, "amount": amount}
    hashed = idempotency.request_hash(LOAD_OPERATION, request)
    request_id = idempotency.derived_request_id("api", principal.staff_id, key)
    load = _LoadCall(new_uow, ctx, readers, limiter, money, principal, staff, desk, card_no, amount, request_id)
    if not _on_record(new_uow, principal.staff_id, key, request_id):
        first = _first_load(load, key, hashed, render, success_status)
        if first is not None:
            return first
    claimed = idempotency.begin(new_uow, principal.staff_id, key, LOAD_OPERATION, hashed)
    if isinstance(claimed, idempotency.StoredResponse):
        return claimed, True
    try:
        outcome = load.run(None)
        response = idempotency.StoredResponse(success_status, render(LoadResult(desk.desk_id, outcome)))
    except OnecardError as exc:
        if not load.attempted or exc.http_status >= 500:
            idempotency.release(new_uow, claim=claimed)
            raise
        response = _refusal(exc)
    except BaseException:
        idempotency.release(new_uow, claim=claimed)
        raise
    return idempotency.finish(new_uow, claimed, response), False


@dataclass
class _LoadCall:
    """One load at a desk, as :func:`idempotent_load` runs it (once per request)."""

    new_uow: UowFactory
    ctx: CounterContext
    readers: DeskReaders
    limiter: RateLimiter
    money: Rule
    principal: Principal
    staff: Staff
    desk: DeskView
    card_no: str
    amount: int
    request_id: str
    attempted: bool = False
    """Whether the card in the reader was reached and found to be the right one."""

    def run(self, hooks: LoadHooks | None) -> services.LoadOutcome:
        """Rate limit, the desk's reader, the card check, the load (``attempted`` once the card is checked).

        With ``hooks`` (the fast path), the rate limit is taken by the hooks once they hold the key."""
        self.attempted = False
        if hooks is None:
            self.admit()
        with _card_in_desk_reader(self.readers, self.desk, self.card_no, unreadable_passes=False) as opened:
            self.attempted = True
            outcome = services.load_card(
                self.new_uow,
                self.staff,
                self.ctx.keys,
                opened.channel,
                amount=self.amount,
                request_id=self.request_id,
                term_id=self.desk.term_id,
                clock=self.ctx.clock,
                card_source=opened.card_source,
                recovery_timeout=self.ctx.recovery_timeout,
                hooks=hooks,
                on_record_checked=hooks is not None,
            )
        return outcome

    def admit(self) -> None:
        """Take a token from the money rate limit (:class:`~backoffice.errors.RateLimited` when there is none)."""
        enforce(self.limiter, self.money, self.principal.username)


_LOADS = cast(Table, Load.__table__)
_ON_RECORD = select(
    or_(
        idempotency.key_exists(bindparam("k_staff_id"), bindparam("k_key")),
        exists().where(_LOADS.c.request_id == bindparam("k_request_id")),
    )
)


def _on_record(new_uow: UowFactory, staff_id: int, key: str, request_id: str) -> bool:
    """Whether the key, or a load under its request id, is on record (one statement, no transaction)."""
    with new_uow() as uow, uow.autocommit() as conn:
        params = {"k_staff_id": staff_id, "k_key": key, "k_request_id": request_id}
        rows, _ = run_statement(conn, _ON_RECORD, params)
        return bool(rows[0][0])


class _ClaimingHooks:
    """The idempotency key's claim and response inside the load host's two transactions."""

    def __init__(
        self,
        staff_id: int,
        key: str,
        hashed: str,
        desk_id: str,
        render: Callable[[LoadResult], bytes],
        success_status: int,
        admit: Callable[[], None],
    ) -> None:
        self._staff_id, self._key, self._hashed = staff_id, key, hashed
        self._admit = admit
        self._desk_id, self._render, self._status = desk_id, render, success_status
        self._pending: idempotency.Claim | None = None
        self.claim: idempotency.Claim | None = None
        """The claim, once the authorization that made it has committed."""
        self.stored: idempotency.StoredResponse | None = None
        """The response stored with the load's outcome (valid once the load returned)."""

    def authorizing(self, conn: Connection) -> None:
        """Claim the key (:class:`idempotency.KeyTaken` when a concurrent request has it), then take a token from
        the money rate limit: only the request that holds the key does (a refusal rolls the claim back)."""
        self._pending = idempotency.claim_in(conn, self._staff_id, self._key, LOAD_OPERATION, self._hashed)
        self._admit()

    def authorization_committed(self) -> None:
        """The claim holds."""
        self.claim = self._pending

    def confirming(self, conn: Connection, load: Load) -> None:
        """Store the response of the load's outcome with it."""
        if self.claim is None:
            return
        response = idempotency.StoredResponse(
            self._status, self._render(LoadResult(self._desk_id, services.load_outcome(load)))
        )
        self.stored = response if idempotency.store_in(conn, self.claim, response) else None


def _first_load(
    load: _LoadCall, key: str, hashed: str, render: Callable[[LoadResult], bytes], success_status: int
) -> tuple[idempotency.StoredResponse, bool] | None:
    """The fast path of :func:`idempotent_load`; ``None`` when another request with the key claimed it first."""
    hooks = _ClaimingHooks(
        load.principal.staff_id, key, hashed, load.desk.desk_id, render, success_status, admit=load.admit
    )
    try:
        outcome = load.run(hooks)
        if hooks.stored is not None:
            return hooks.stored, False
        response = idempotency.StoredResponse(success_status, render(LoadResult(load.desk.desk_id, outcome)))
    except idempotency.KeyTaken:
        return None
    except OnecardError as exc:
        if not load.attempted or exc.http_status >= 500 or isinstance(exc, RateLimited):
            if hooks.claim is not None:
                idempotency.release(load.new_uow, claim=hooks.claim)
            raise
        response = _refusal(exc)
    except BaseException:
        if hooks.claim is not None:
            idempotency.release(load.new_uow, claim=hooks.claim)
        raise
    claim = hooks.claim
    if claim is None:  # refused before the authorization committed: claim the key now to store the refusal
        claimed = idempotency.begin(load.new_uow, load.principal.staff_id, key, LOAD_OPERATION, hashed)
        if isinstance(claimed, idempotency.StoredResponse):
            return claimed, True
        claim = claimed
    return idempotency.finish(load.new_uow, claim, response), False


def _refusal(exc: OnecardError) -> idempotency.StoredResponse:
    return idempotency.StoredResponse(exc.http_status, _json_bytes(error_body(exc.code, exc.message, exc.details)))
