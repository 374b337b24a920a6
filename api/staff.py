"""Log-in, log-out and one's own account (``/auth``), and account and desk administration (``/admin``).

| endpoint | who |
|---|---|
| ``POST /auth/login`` | anyone (rate limited per username and per client address) |
| ``POST /auth/logout``, ``GET /auth/me``, ``POST /auth/password`` | any member of staff (own session, account) |
| ``/admin/staff…``, ``/admin/desks…`` | ``admin`` |
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Request, Response
from pydantic import Field

from api import desks as desk_records
from api import staff_auth
from api.auth import ALL_STAFF, SESSION_COOKIE, CurrentStaff, staff_route
from api.deps import AppState, get_state, unit_of_work
from api.ratelimit import enforce
from api.schemas import DESK_ID, SAFE_TEXT, TERM_ID, USERNAME, In, Out, error_responses
from api.staff_auth import ApiRole
from backoffice.db import UnitOfWork

auth_router = APIRouter(prefix="/auth", tags=["auth"])
admin_router = APIRouter(prefix="/admin", tags=["admin"])

Work = Annotated[UnitOfWork, Depends(unit_of_work)]
State = Annotated[AppState, Depends(get_state)]
RoleName = Literal["counter", "supervisor", "finance", "auditor", "admin"]
ADMIN = {ApiRole.ADMIN}
Username = Annotated[str, Path(pattern=USERNAME, max_length=64)]
DeskId = Annotated[str, Path(pattern=DESK_ID, max_length=32)]


# --- schemas ---------------------------------------------------------------------------------------------------


class LoginIn(In):
    """Credentials."""

    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=256)]


class StaffOut(Out):
    """An account (never its password hash)."""

    staff_id: int
    username: str
    roles: list[RoleName]
    desk_id: str | None
    active: bool
    created_at: datetime


class LoginOut(Out):
    """A new session. ``token`` goes in ``Authorization: Bearer``; the cookie is set too, and cookie requests
    that change something send ``csrf_token`` as ``X-CSRF-Token``."""

    token: str
    token_type: Literal["bearer"]
    csrf_token: str
    expires_at: datetime
    staff: StaffOut


class StatusOut(Out):
    """A plain acknowledgement."""

    status: str


class PasswordIn(In):
    """Change one's own password."""

    current_password: Annotated[str, Field(min_length=1, max_length=256)]
    new_password: Annotated[str, Field(min_length=12, max_length=256)]


class StaffIn(In):
    """A new account."""

    username: Annotated[str, Field(pattern=USERNAME, max_length=64)]
    password: Annotated[str, Field(min_length=12, max_length=256)]
    roles: Annotated[list[RoleName], Field(min_length=1, max_length=5)]
    desk_id: Annotated[str | None, Field(pattern=DESK_ID, max_length=32)] = None


class StaffChangeIn(In):
    """Changes to an account; fields left out stay as they are (``desk_id: null`` takes the desk away)."""

    roles: Annotated[list[RoleName] | None, Field(min_length=1, max_length=5)] = None
    desk_id: Annotated[str | None, Field(pattern=DESK_ID, max_length=32)] = None
    active: bool | None = None


class StaffListOut(Out):
    """Every account."""

    staff: list[StaffOut]


class DeskIn(In):
    """A desk's reader and counter terminal id."""

    reader: Annotated[str, Field(min_length=1, max_length=200, pattern=SAFE_TEXT)]
    term_id: Annotated[str, Field(pattern=TERM_ID)]
    active: bool = True


class DeskOut(Out):
    """A desk."""

    desk_id: str
    reader: str
    term_id: str
    active: bool


class DeskListOut(Out):
    """Every desk."""

    desks: list[DeskOut]


def _staff_out(view: staff_auth.StaffView) -> StaffOut:
    return StaffOut(
        staff_id=view.staff_id,
        username=view.username,
        roles=[str(role) for role in view.roles],  # type: ignore[misc]
        desk_id=view.desk_id,
        active=view.active,
        created_at=view.created_at,
    )


def _desk_out(view: staff_auth.DeskView) -> DeskOut:
    return DeskOut(desk_id=view.desk_id, reader=view.reader, term_id=view.term_id, active=view.active)


def client_address(request: Request) -> str:
    """The client's address as the server sees it (behind a proxy: configure uvicorn's --forwarded-allow-ips)."""
    return request.client.host if request.client is not None else "unknown"


# --- /auth ------------------------------------------------------------------------------------------------------


@auth_router.post(
    "/login",
    response_model=LoginOut,
    responses=error_responses(401, 422, 429),
    openapi_extra={"x-roles": [], "security": []},
)
def login(body: LoginIn, request: Request, response: Response, state: State, uow: Work) -> LoginOut:
    """Log in with username and password: a session token (8 hours), also set as an HttpOnly cookie."""
    enforce(state.limiter, state.rate_limits.login_per_client, client_address(request))
    enforce(state.limiter, state.rate_limits.login_per_user, body.username.lower()[:64])
    result = staff_auth.login(uow, body.username, body.password, hasher=state.password_hasher, ttl=state.session_ttl)
    response.set_cookie(
        SESSION_COOKIE,
        result.token,
        max_age=int(state.session_ttl.total_seconds()),
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
        path="/",
    )
    return LoginOut(
        token=result.token,
        token_type="bearer",
        csrf_token=result.csrf_token,
        expires_at=result.expires_at,
        staff=_staff_out(result.staff),
    )


@staff_route(auth_router, "POST", "/logout", roles=ALL_STAFF, response_model=StatusOut)
def logout(principal: CurrentStaff, response: Response, uow: Work) -> StatusOut:
    """End this session (the token and cookie stop working)."""
    staff_auth.logout(uow, principal)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return StatusOut(status="logged_out")


@staff_route(auth_router, "GET", "/me", roles=ALL_STAFF, response_model=StaffOut)
def me(principal: CurrentStaff, uow: Work) -> StaffOut:
    """One's own account."""
    return _staff_out(staff_auth.show_staff(uow, principal.username))


@staff_route(auth_router, "POST", "/password", roles=ALL_STAFF, response_model=StatusOut)
def change_password(body: PasswordIn, principal: CurrentStaff, state: State, uow: Work) -> StatusOut:
    """Change one's own password (other sessions of the account end)."""
    enforce(state.limiter, state.rate_limits.login_per_user, principal.username)
    staff_auth.change_password(
        uow,
        principal,
        current_password=body.current_password,
        new_password=body.new_password,
        hasher=state.password_hasher,
    )
    return StatusOut(status="changed")


# --- /admin -------------------------------------------------------------------------------------------------------


@staff_route(admin_router, "POST", "/staff", roles=ADMIN, errors=(409,), response_model=StaffOut, status_code=201)
def create_staff(body: StaffIn, state: State, uow: Work) -> StaffOut:
    """Create an account."""
    view = staff_auth.create_staff(
        uow, body.username, body.password, body.roles, desk_id=body.desk_id, hasher=state.password_hasher
    )
    return _staff_out(view)


@staff_route(admin_router, "GET", "/staff", roles=ADMIN, response_model=StaffListOut)
def list_staff(uow: Work) -> StaffListOut:
    """Every account."""
    return StaffListOut(staff=[_staff_out(view) for view in staff_auth.list_staff(uow)])


@staff_route(admin_router, "GET", "/staff/{username}", roles=ADMIN, errors=(404,), response_model=StaffOut)
def show_staff(username: Username, uow: Work) -> StaffOut:
    """One account."""
    return _staff_out(staff_auth.show_staff(uow, username))


@staff_route(admin_router, "PATCH", "/staff/{username}", roles=ADMIN, errors=(404, 409), response_model=StaffOut)
def change_staff(username: Username, body: StaffChangeIn, principal: CurrentStaff, uow: Work) -> StaffOut:
    """Change an account's roles, desk or status (disabling ends its sessions)."""
    view = staff_auth.update_staff(
        uow,
        principal,
        username,
        roles=body.roles,
        desk_id=body.desk_id,
        clear_desk="desk_id" in body.model_fields_set and body.desk_id is None,
        active=body.active,
    )
    return _staff_out(view)


@staff_route(admin_router, "PUT", "/desks/{desk_id}", roles=ADMIN, errors=(409,), response_model=DeskOut)
def put_desk(desk_id: DeskId, body: DeskIn, uow: Work) -> DeskOut:
    """Create or change a desk: its reader and counter term_id."""
    return _desk_out(desk_records.put_desk(uow, desk_id, reader=body.reader, term_id=body.term_id, active=body.active))


@staff_route(admin_router, "GET", "/desks", roles=ADMIN, response_model=DeskListOut)
def list_desks(uow: Work) -> DeskListOut:
    """Every desk."""
    return DeskListOut(desks=[_desk_out(view) for view in desk_records.list_desks(uow)])
