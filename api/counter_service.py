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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from api import idempotency
from api.deps import ServiceUnavailable
from api.desks import DeskReaders, desk_for
from api.ratelimit import RateLimiter, Rule, enforce
from api.schemas import error_body
from api.staff_auth import Principal, acting_staff, roles_for
from backoffice.db import UnitOfWork
from backoffice.errors import Conflict, Forbidden, OnecardError
from backoffice.settings import Settings, read_dotenv
from cardos import crypto
from issuance import cardops, services
from issuance.access import Action
from issuance.bookkeeping import Clock, local_now
from issuance.keys import Keystore
from issuance.lifecycle import CardType, HotlistReason, InsuredScheme, SocialSecurityStatus
from issuance.pii import PersonalDataVault

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


def _check_card_in_reader(channel: Any, card_no: str) -> None:
    with services.card_errors():
        public = cardops.read_public(channel)
    if public.card_no != card_no:
        raise WrongCardInReader(
            "the card in the desk's reader is another card", expected=card_no, presented=public.card_no
        )


class WrongCardInReader(Conflict):
    """The card in the desk's reader is not the card the request names (409)."""

    code = "wrong_card_in_reader"


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
    """
    staff = acting_staff(principal, Action.LOAD)  # role first: no key is even looked at without it
    desk = desk_for(principal, desk_id)
    request = {"card_no": card_no, "desk_id": desk_id, "amount": amount}
    hashed = idempotency.request_hash(LOAD_OPERATION, request)
    claimed = idempotency.begin(new_uow, principal.staff_id, key, LOAD_OPERATION, hashed)
    if isinstance(claimed, idempotency.StoredResponse):
        return claimed, True
    attempted = False
    try:
        enforce(limiter, money, principal.username)
        with readers.open(desk) as opened:
            _check_card_in_reader(opened.channel, card_no)
            attempted = True
            outcome = services.load_card(
                new_uow,
                staff,
                ctx.keys,
                opened.channel,
                amount=amount,
                request_id=idempotency.derived_request_id("api", principal.staff_id, key),
                term_id=desk.term_id,
                clock=ctx.clock,
                card_source=opened.card_source,
                recovery_timeout=ctx.recovery_timeout,
            )
        response = idempotency.StoredResponse(success_status, render(LoadResult(desk.desk_id, outcome)))
    except OnecardError as exc:
        if not attempted or exc.http_status >= 500:
            idempotency.release(new_uow, claim=claimed)
            raise
        response = idempotency.StoredResponse(
            exc.http_status, _json_bytes(error_body(exc.code, exc.message, exc.details))
        )
    except BaseException:
        idempotency.release(new_uow, claim=claimed)
        raise
    return idempotency.finish(new_uow, claimed, response), False
