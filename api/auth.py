"""Staff authentication and role checks as FastAPI dependencies, and :func:`staff_route`, the one way a staff
endpoint is declared (its roles are enforced, and documented as ``x-roles`` in the OpenAPI document).

A request carries its session token as ``Authorization: Bearer <token>`` (programs) or in the HttpOnly cookie
``onecard_session`` (the web pages). A cookie-authenticated request that changes something (any method but GET,
HEAD, OPTIONS) must also send ``X-CSRF-Token`` (given at log-in), which a cross-site page cannot know.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from api.deps import get_state
from api.schemas import STAFF_ERRORS, error_responses
from api.staff_auth import ApiRole, Principal, authenticate, check_csrf, require_role
from backoffice.db import UnitOfWork
from backoffice.errors import Unauthorized

SESSION_COOKIE = "onecard_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
ALL_STAFF = frozenset(ApiRole)

bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="bearer", description="`Authorization: Bearer <token>` from `POST /auth/login`"
)
cookie_scheme = APIKeyCookie(
    name=SESSION_COOKIE,
    auto_error=False,
    scheme_name="cookie",
    description="The HttpOnly session cookie set by `POST /auth/login` (changes also need `X-CSRF-Token`)",
)


def authenticated_staff(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    cookie: Annotated[str | None, Depends(cookie_scheme)],
) -> Principal:
    """The logged-in member of staff; :class:`Unauthorized` (401) without a live session."""
    if credentials is not None:
        token, via_cookie = credentials.credentials, False
    elif cookie:
        token, via_cookie = cookie, True
    else:
        raise Unauthorized("log in first: no session token")
    with UnitOfWork(get_state(request).sessions) as uow:
        principal = authenticate(uow, token, via_cookie=via_cookie)
    if via_cookie and request.method not in SAFE_METHODS:
        check_csrf(token, request.headers.get("x-csrf-token"))
    request.state.principal = principal
    return principal


CurrentStaff = Annotated[Principal, Depends(authenticated_staff)]


class RoleGate:
    """A route dependency: the caller must hold one of ``roles`` (403 otherwise)."""

    def __init__(self, roles: Iterable[ApiRole]) -> None:
        self.roles = frozenset(roles)

    async def __call__(self, principal: CurrentStaff) -> None:
        require_role(principal, self.roles)


F = TypeVar("F", bound=Callable[..., Any])


def staff_route(
    router: APIRouter,
    method: str,
    path: str,
    *,
    roles: Iterable[ApiRole],
    errors: Iterable[int] = (),
    **kwargs: Any,
) -> Callable[[F], F]:
    """Declare a staff endpoint: only ``roles`` get past it; documented errors and roles in OpenAPI."""
    allowed = frozenset(roles)
    statuses = sorted(set(STAFF_ERRORS) | set(errors))
    responses = {**error_responses(*statuses), **kwargs.pop("responses", {})}
    decorator = router.api_route(
        path,
        methods=[method],
        dependencies=[Depends(RoleGate(allowed))],
        responses=responses,
        openapi_extra={"x-roles": sorted(str(role) for role in allowed)},
        **kwargs,
    )
    return decorator
