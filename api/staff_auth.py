"""Staff accounts and log-in sessions (issue #7, Auth): argon2id password hashes, opaque session tokens.

A token is ``oc_`` + 43 URL-safe characters (256 random bits); the database keeps only its SHA-256, so a copy of
the sessions table opens nothing. A session ends at ``expires_at`` (absolute, :data:`SESSION_TTL`), at log-out,
or when the account is disabled. The anti-CSRF token of cookie sessions is derived from the session token
(:func:`csrf_token`), so it needs no storage.

Roles (:class:`ApiRole`): ``counter``, ``supervisor``, ``finance``, ``auditor``, ``admin``. The first four act in
issuance as :class:`issuance.access.Role` ``clerk``, ``supervisor``, ``finance``, ``auditor``
(:func:`acting_staff` picks the role a request acts in); ``admin`` manages accounts and desks only.

These functions are plain services (a unit of work in, views out; each commits at most once), so the web pages
can call them as the API does. :func:`create_staff` is the bootstrap for the first admin (CLI-friendly).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.exc import IntegrityError

from api.models import CounterDesk, StaffAccount, StaffSession
from backoffice.db import UnitOfWork, run_statement
from backoffice.errors import Conflict, Forbidden, InvalidInput, NotFound, Unauthorized
from issuance.access import PERMISSIONS, UNMASKED_PERSONAL_DATA, Action, Role, Staff

SESSION_TTL = timedelta(hours=8)
"""A log-in lasts one working day."""
PASSWORD_MIN = 12
PASSWORD_MAX = 256
USERNAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
DESK_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")
TOKEN_PATTERN = re.compile(r"oc_[A-Za-z0-9_-]{43}")
DEFAULT_HASHER = PasswordHasher()
"""argon2id, RFC 9106's second recommended profile (t=3, m=64 MiB, p=4), the library's default."""


class ApiRole(StrEnum):
    """A staff role of the API."""

    COUNTER = "counter"
    SUPERVISOR = "supervisor"
    FINANCE = "finance"
    AUDITOR = "auditor"
    ADMIN = "admin"


ISSUANCE_ROLE: dict[ApiRole, Role] = {
    ApiRole.COUNTER: Role.CLERK,
    ApiRole.SUPERVISOR: Role.SUPERVISOR,
    ApiRole.FINANCE: Role.FINANCE,
    ApiRole.AUDITOR: Role.AUDITOR,
}
"""The issuance role each API role acts in (``admin`` has none: it cannot take a counter action)."""


def roles_for(action: Action) -> frozenset[ApiRole]:
    """The API roles whose issuance role may take ``action`` (issuance/access.py is the one source)."""
    return frozenset(api for api, role in ISSUANCE_ROLE.items() if role in PERMISSIONS[action])


@dataclass(frozen=True, slots=True)
class DeskView:
    """A counter desk: id, reader name, counter term_id, and whether it is in service."""

    desk_id: str
    reader: str
    term_id: str
    active: bool


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the account, its roles and desk, and the session the request came with.

    ``desk`` is the record of the desk the account works at, read with the session (``None`` when the account
    has no desk or the desk does not exist).
    """

    staff_id: int
    username: str
    roles: frozenset[ApiRole]
    desk_id: str | None
    session_id: int
    via_cookie: bool = False
    desk: DeskView | None = None


@dataclass(frozen=True, slots=True)
class StaffView:
    """An account as shown (never its hash)."""

    staff_id: int
    username: str
    roles: tuple[ApiRole, ...]
    desk_id: str | None
    active: bool
    created_at: datetime


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A new session: the bearer token (shown once), its anti-CSRF companion and expiry, and the account."""

    token: str
    csrf_token: str
    expires_at: datetime
    staff: StaffView

    def __repr__(self) -> str:
        return f"LoginResult(staff={self.staff.username!r}, expires_at={self.expires_at.isoformat()})"


def acting_staff(principal: Principal, action: Action, *, unmasked: bool | None = None) -> Staff:
    """The issuance :class:`Staff` a request acts as for ``action``; :class:`Forbidden` if no role may.

    With several permitted roles: ``unmasked=True`` picks one that sees personal data unmasked (forbidden if
    none does), ``unmasked=False`` prefers one that sees it masked; otherwise the first in the order
    clerk, supervisor, finance, auditor.
    """
    order = (ApiRole.COUNTER, ApiRole.SUPERVISOR, ApiRole.FINANCE, ApiRole.AUDITOR)
    permitted = [ISSUANCE_ROLE[r] for r in order if r in principal.roles and ISSUANCE_ROLE[r] in PERMISSIONS[action]]
    if not permitted:
        raise Forbidden(f"your roles may not {action.replace('_', ' ')}", action=str(action))
    if unmasked is True:
        permitted = [role for role in permitted if role in UNMASKED_PERSONAL_DATA]
        if not permitted:
            raise Forbidden("your roles may not see personal data unmasked")
    elif unmasked is False:
        permitted.sort(key=lambda role: role in UNMASKED_PERSONAL_DATA)
    return Staff(principal.username, permitted[0])


def require_role(principal: Principal, roles: Iterable[ApiRole]) -> None:
    """Raise :class:`Forbidden` unless the principal holds one of ``roles``."""
    if principal.roles.isdisjoint(roles):
        raise Forbidden("your roles may not do this", allowed=sorted(str(role) for role in roles))


# --- helpers ------------------------------------------------------------------------------------------------


def token_hash(token: str) -> str:
    """SHA-256 hex of a session token (what the database stores)."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def csrf_token(token: str) -> str:
    """The anti-CSRF token that goes with a session token (cookie sessions send it in ``X-CSRF-Token``)."""
    return hashlib.sha256(b"onecard-csrf\x00" + token.encode("ascii")).hexdigest()


def check_csrf(token: str, presented: str | None) -> None:
    """Raise :class:`Forbidden` unless ``presented`` is the session's anti-CSRF token."""
    if presented is None or not hmac.compare_digest(csrf_token(token), presented):
        raise Forbidden("a cookie session needs its X-CSRF-Token header on this request")


def _check_username(username: str) -> str:
    if not USERNAME_PATTERN.fullmatch(username):
        raise InvalidInput("a username is 1 to 64 lower-case letters, digits, '.', '_' or '-'")
    return username


def _check_password(password: str) -> bytes:
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise InvalidInput(f"a password is {PASSWORD_MIN} to {PASSWORD_MAX} characters")
    return password.encode("utf-8", "surrogatepass")


def _check_roles(roles: Iterable[str]) -> tuple[ApiRole, ...]:
    try:
        checked = tuple(sorted({ApiRole(role) for role in roles}))
    except ValueError:
        raise InvalidInput(f"roles are some of {', '.join(r.value for r in ApiRole)}") from None
    if not checked:
        raise InvalidInput("an account has at least one role")
    return checked


def _check_desk(desk_id: str | None) -> str | None:
    if desk_id is not None and not DESK_PATTERN.fullmatch(desk_id):
        raise InvalidInput("a desk id is 1 to 32 letters, digits, '_' or '-'")
    return desk_id


def _parse_roles(stored: str) -> frozenset[ApiRole]:
    return frozenset(ApiRole(role) for role in stored.split(",") if role)


def _view(account: StaffAccount) -> StaffView:
    return StaffView(
        account.id,
        account.username,
        tuple(sorted(_parse_roles(account.roles))),
        account.desk_id,
        account.active,
        account.created_at,
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _account(uow: UnitOfWork, username: str, *, lock: bool = False) -> StaffAccount:
    query = select(StaffAccount).where(StaffAccount.username == username)
    account = uow.session.scalars(query.with_for_update() if lock else query).one_or_none()
    if account is None:
        raise NotFound("no such staff account", username=username)
    return account


# --- accounts ----------------------------------------------------------------------------------------------


def create_staff(
    uow: UnitOfWork,
    username: str,
    password: str,
    roles: Sequence[str],
    *,
    desk_id: str | None = None,
    hasher: PasswordHasher = DEFAULT_HASHER,
    now: datetime | None = None,
) -> StaffView:
    """Create an account (commits). The bootstrap of the first ``admin``; afterwards admins create accounts.

    :class:`InvalidInput` for a malformed username, password (12 to 256 characters), role or desk id;
    :class:`Conflict` when the username is taken.
    """
    username = _check_username(username)
    secret = _check_password(password)
    checked_roles = _check_roles(roles)
    desk_id = _check_desk(desk_id)
    at = now or _now()
    session = uow.session
    if session.scalars(select(StaffAccount.id).where(StaffAccount.username == username)).first() is not None:
        raise Conflict("this username is taken", username=username)
    account = StaffAccount(
        username=username,
        password_hash=hasher.hash(secret),
        roles=",".join(checked_roles),
        desk_id=desk_id,
        active=True,
        created_at=at,
        updated_at=at,
        password_changed_at=at,
    )
    session.add(account)
    try:
        session.flush()
        view = _view(account)
        uow.commit()
    except IntegrityError:
        raise Conflict("this username is taken", username=username) from None
    return view


def list_staff(uow: UnitOfWork) -> list[StaffView]:
    """Every account, by username."""
    return [_view(a) for a in uow.session.scalars(select(StaffAccount).order_by(StaffAccount.username))]


def show_staff(uow: UnitOfWork, username: str) -> StaffView:
    """One account."""
    return _view(_account(uow, username))


def update_staff(
    uow: UnitOfWork,
    actor: Principal,
    username: str,
    *,
    roles: Sequence[str] | None = None,
    desk_id: str | None = None,
    clear_desk: bool = False,
    active: bool | None = None,
    now: datetime | None = None,
) -> StaffView:
    """Change an account's roles, desk or status (admins; commits). Disabling ends its sessions.

    An admin cannot disable their own account or take ``admin`` away from it (someone must stay able to
    administer).
    """
    at = now or _now()
    account = _account(uow, username, lock=True)
    if account.id == actor.staff_id and (active is False or (roles is not None and "admin" not in roles)):
        raise Conflict("you cannot disable your own account or remove your own admin role")
    if roles is not None:
        account.roles = ",".join(_check_roles(roles))
    if clear_desk:
        account.desk_id = None
    elif desk_id is not None:
        account.desk_id = _check_desk(desk_id)
    if active is not None:
        account.active = active
        if not active:
            uow.session.execute(
                update(StaffSession)
                .where(StaffSession.staff_id == account.id, StaffSession.revoked_at.is_(None))
                .values(revoked_at=at)
            )
    account.updated_at = at
    view = _view(account)
    uow.commit()
    return view


def change_password(
    uow: UnitOfWork,
    principal: Principal,
    *,
    current_password: str,
    new_password: str,
    hasher: PasswordHasher = DEFAULT_HASHER,
    now: datetime | None = None,
) -> None:
    """Change one's own password (commits); every other session of the account ends."""
    at = now or _now()
    account = uow.session.get(StaffAccount, principal.staff_id, with_for_update=True)
    if account is None or not account.active:
        raise Unauthorized("not logged in")
    if not _verify(hasher, account.password_hash, current_password):
        raise Forbidden("the current password is wrong")
    account.password_hash = hasher.hash(_check_password(new_password))
    account.password_changed_at = at
    account.updated_at = at
    uow.session.execute(
        update(StaffSession)
        .where(
            StaffSession.staff_id == account.id,
            StaffSession.id != principal.session_id,
            StaffSession.revoked_at.is_(None),
        )
        .values(revoked_at=at)
    )
    uow.commit()


# --- sessions ------------------------------------------------------------------------------------------------

_DUMMY_HASHES: dict[tuple[int, int, int], str] = {}


def _dummy_hash(hasher: PasswordHasher) -> str:
    """A hash to verify against for unknown usernames, so a wrong name costs what a wrong password costs."""
    params = (hasher.time_cost, hasher.memory_cost, hasher.parallelism)
    if params not in _DUMMY_HASHES:
        _DUMMY_HASHES[params] = hasher.hash(secrets.token_bytes(16))
    return _DUMMY_HASHES[params]


def _verify(hasher: PasswordHasher, stored: str, password: str) -> bool:
    try:
        return hasher.verify(stored, password.encode("utf-8", "surrogatepass"))
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def login(
    uow: UnitOfWork,
    username: str,
    password: str,
    *,
    hasher: PasswordHasher = DEFAULT_HASHER,
    ttl: timedelta = SESSION_TTL,
    now: datetime | None = None,
) -> LoginResult:
    """Check the password and open a session (commits). Wrong name, wrong password and disabled account all
    answer the same :class:`Unauthorized`."""
    at = now or _now()
    session = uow.session
    account = None
    if USERNAME_PATTERN.fullmatch(username) and len(password) <= PASSWORD_MAX:
        account = session.scalars(select(StaffAccount).where(StaffAccount.username == username)).one_or_none()
    stored = account.password_hash if account is not None else _dummy_hash(hasher)
    genuine = _verify(hasher, stored, password[:PASSWORD_MAX])
    if account is None or not genuine or not account.active:
        raise Unauthorized("wrong username or password")
    if hasher.check_needs_rehash(account.password_hash):
        account.password_hash = hasher.hash(password.encode("utf-8", "surrogatepass"))
    # Sessions that ended more than a day ago are of no further use.
    session.execute(
        delete(StaffSession).where(
            StaffSession.staff_id == account.id, StaffSession.expires_at < at - timedelta(days=1)
        )
    )
    token = "oc_" + secrets.token_urlsafe(32)
    expires_at = at + ttl
    session.add(StaffSession(token_hash=token_hash(token), staff_id=account.id, created_at=at, expires_at=expires_at))
    view = _view(account)
    uow.commit()
    return LoginResult(token, csrf_token(token), expires_at, view)


def logout(uow: UnitOfWork, principal: Principal, *, now: datetime | None = None) -> None:
    """End the caller's own session (commits)."""
    uow.session.execute(
        update(StaffSession)
        .where(StaffSession.id == principal.session_id, StaffSession.staff_id == principal.staff_id)
        .values(revoked_at=now or _now())
    )
    uow.commit()


_SESSION_LOOKUP = (
    select(
        StaffSession.id,
        StaffSession.expires_at,
        StaffSession.revoked_at,
        StaffAccount.id,
        StaffAccount.username,
        StaffAccount.roles,
        StaffAccount.desk_id,
        StaffAccount.active,
        CounterDesk.reader,
        CounterDesk.term_id,
        CounterDesk.active,
    )
    .join(StaffAccount, StaffAccount.id == StaffSession.staff_id)
    .outerjoin(CounterDesk, CounterDesk.desk_id == StaffAccount.desk_id)
    .where(StaffSession.token_hash == bindparam("k_token_hash"))
)
"""Built once: every staff request runs it (one indexed read: ``api_sessions.token_hash`` is unique)."""


def authenticate(uow: UnitOfWork, token: str, *, via_cookie: bool = False, now: datetime | None = None) -> Principal:
    """The principal of a live session token; :class:`Unauthorized` for anything else. Read-only: one statement
    on its own, outside the unit's transaction (no ``BEGIN`` / ``ROLLBACK`` round trips)."""
    if not TOKEN_PATTERN.fullmatch(token):
        raise Unauthorized("not logged in")
    with uow.autocommit() as conn:
        rows, _ = run_statement(conn, _SESSION_LOOKUP, {"k_token_hash": token_hash(token)})
    if not rows:
        raise Unauthorized("not logged in")
    row = rows[0]
    session_id, expires_at, revoked_at, staff_id, username, roles, desk_id, active, reader, term_id, in_service = row
    if revoked_at is not None or not active:
        raise Unauthorized("the session has ended")
    if expires_at <= (now or _now()):
        raise Unauthorized("the session has expired")
    desk = DeskView(desk_id, reader, term_id, bool(in_service)) if desk_id is not None and reader is not None else None
    return Principal(staff_id, username, _parse_roles(roles), desk_id, session_id, via_cookie, desk)
