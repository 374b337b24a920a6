"""The staff web pages (issue #7, web part): log-in, the counter desk and the finance desk, server-rendered.

Every page calls the services the JSON API calls (:mod:`api.counter_service`, the finance facade
:mod:`api.finance`, :mod:`api.staff_auth`); inputs are checked by the API's own request models, so a page accepts
exactly what the API accepts. Forms post to page routes that render confirmations and receipts; a failure is
shown in the page from the one error hierarchy (:class:`backoffice.errors.OnecardError`: code and message).

Sessions are the API's: log-in sets the HttpOnly ``onecard_session`` cookie of ``POST /auth/login`` (same rate
limits); every form carries the session's anti-CSRF token (:func:`api.staff_auth.csrf_token`), checked before
anything happens. Pages work without JavaScript; ``static/onecard.js`` only adds polling of a running clearing,
double-submit protection and printing. Charts are server-side SVG (:mod:`api.web.charts`).

The router has no OpenAPI presence (``include_in_schema=False``) and lives under ``/web``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, cast, get_args
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from pydantic import ValidationError

from api import counter_service, finance
from api.auth import SESSION_COOKIE
from api.counter import (
    CardApplicationIn,
    IssueIn,
    LoadIn,
    LossIn,
    RefundIn,
    ResidentIn,
    ResidentSearchIn,
    SocialSecurityIn,
    render_load,
)
from api.deps import AppState, get_state
from api.finance_routes import BOOKS, CHECKERS, FINANCE, READERS, ClearingRunIn, DecisionIn, ResolutionIn
from api.ratelimit import enforce
from api.schemas import CARD_NO, IDEMPOTENCY_KEY, BlockIn, LoadResolutionIn, UnblockIn
from api.staff import client_address
from api.staff_auth import (
    ISSUANCE_ROLE,
    ApiRole,
    Principal,
    authenticate,
    check_csrf,
    csrf_token,
    require_role,
    roles_for,
)
from api.staff_auth import login as staff_login
from api.staff_auth import logout as staff_logout
from api.web.charts import Series, bar_chart
from api.web.i18n import LANG_COOKIE, LANGUAGES, Lang, has_label, negotiate, other, translator
from backoffice.db import UnitOfWork
from backoffice.errors import Forbidden, InvalidInput, NotFound, OnecardError, Unauthorized
from issuance.access import UNMASKED_PERSONAL_DATA, Action
from issuance.lifecycle import TRANSITIONS, CardState, InsuredScheme
from issuance.services import CardView

PREFIX = "/web"
WEB_DIR = Path(__file__).parent
TEMPLATE_DIR = WEB_DIR / "templates"
STATIC_DIR = WEB_DIR / "static"
STATIC_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*\.(css|js|svg)")
STATIC_TYPES = {"css": "text/css; charset=utf-8", "js": "text/javascript; charset=utf-8", "svg": "image/svg+xml"}
CARD_NO_RE = re.compile(CARD_NO)
IDEMPOTENCY_KEY_RE = re.compile(IDEMPOTENCY_KEY)
YUAN = re.compile(r"[0-9]{1,7}(\.[0-9]{1,2})?")
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
REPORT_FORMATS: tuple[str, ...] = tuple(finance.REPORT_MEDIA_TYPES)
SCHEMES: tuple[tuple[InsuredScheme, str], ...] = (
    (InsuredScheme.PENSION, "scheme.pension"),
    (InsuredScheme.MEDICAL, "scheme.medical"),
    (InsuredScheme.UNEMPLOYMENT, "scheme.unemployment"),
    (InsuredScheme.WORK_INJURY, "scheme.work_injury"),
    (InsuredScheme.MATERNITY, "scheme.maternity"),
)
COUNTER_VIEWERS = roles_for(Action.VIEW_RESIDENT)
FINANCE_VIEWERS = frozenset(READERS | BOOKS)

router = APIRouter(prefix=PREFIX, include_in_schema=False)

FormStr = Annotated[str, Form()]


# --- presentation helpers ------------------------------------------------------------------------------------------


def format_yuan(fen: int | None) -> str:
    """Fen as yuan for people: ``123456`` → ``¥1,234.56`` (``—`` for nothing)."""
    if fen is None:
        return "—"
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(int(fen)), 100)
    return f"{sign}¥{whole:,}.{cents:02d}"


def parse_yuan(text: str) -> int:
    """An amount typed in yuan (``50``, ``12.5``, ``12.50``) as fen; :class:`InvalidInput` otherwise."""
    cleaned = text.strip().replace(",", "").lstrip("¥")
    if not YUAN.fullmatch(cleaned):
        raise InvalidInput("enter an amount in yuan, e.g. 50 or 12.50", label="load.invalid_amount")
    try:
        fen = int(Decimal(cleaned) * 100)
    except InvalidOperation:  # pragma: no cover (the pattern admits only decimals)
        raise InvalidInput("enter an amount in yuan", label="load.invalid_amount") from None
    if fen <= 0:
        raise InvalidInput("the amount must be above zero", label="load.invalid_amount")
    return fen


def format_datetime(value: datetime | str | None) -> str:
    """A time in the server's local zone, to the second (``—`` for nothing)."""
    if value is None:
        return "—"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    if value.tzinfo is not None:
        value = value.astimezone()
    return value.strftime("%Y-%m-%d %H:%M:%S")


def format_card_time(txn_date: Any, txn_time: Any) -> str:
    """A record's ``YYYYMMDD`` and ``hhmmss`` (spec §5) as ``YYYY-MM-DD hh:mm:ss`` (``—`` when missing)."""
    day, clock = str(txn_date or ""), str(txn_time or "")
    if not re.fullmatch(r"[0-9]{8}", day):
        return "—"
    shown = f"{day[:4]}-{day[4:6]}-{day[6:]}"
    if re.fullmatch(r"[0-9]{6}", clock):
        shown += f" {clock[:2]}:{clock[2:4]}:{clock[4:]}"
    return shown


def parse_day(text: str | None, default: date) -> date:
    """``YYYY-MM-DD`` (``default`` when empty); :class:`InvalidInput` otherwise."""
    if not text:
        return default
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput("a date is YYYY-MM-DD", value=text[:20]) from None


def today() -> date:
    """Today in the server's local time (the clearing day finance looks at by default)."""
    return datetime.now().astimezone().date()


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(("html",)),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yuan"] = format_yuan
    env.filters["dt"] = format_datetime
    return env


TEMPLATES = _environment()


# --- sessions, errors, rendering ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WebSession:
    """A logged-in member of staff on the pages: who, their session token and its anti-CSRF token."""

    principal: Principal
    token: str
    csrf: str

    def has(self, roles: Iterable[ApiRole]) -> bool:
        """Whether the account holds one of ``roles``."""
        return not self.principal.roles.isdisjoint(roles)

    def may(self, action: Action) -> bool:
        """Whether one of the account's roles may take the counter ``action`` (issuance/access.py decides)."""
        return self.has(roles_for(action))

    @property
    def sees_unmasked(self) -> bool:
        """Whether a role of the account may see personal numbers unmasked (each read audited)."""
        return any(ISSUANCE_ROLE.get(role) in UNMASKED_PERSONAL_DATA for role in self.principal.roles)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An error as a page shows it: the stable code, its label (when there is one), the message, problems."""

    code: str
    message: str
    status: int
    label: str | None = None
    problems: tuple[str, ...] = ()


class FormExpired(Forbidden):
    """The form's anti-CSRF token is not this session's (403): the page was opened in another session."""

    code = "form_expired"


def error_info(exc: OnecardError) -> ErrorInfo:
    """The page's view of an error of the one hierarchy."""
    custom = exc.details.get("label")
    label = custom if isinstance(custom, str) and has_label(custom) else None
    if label is None and has_label(f"error.{exc.code}"):
        label = f"error.{exc.code}"
    problems = exc.details.get("problems")
    listed = tuple(str(p) for p in problems) if isinstance(problems, list) else ()
    return ErrorInfo(exc.code, exc.message, exc.http_status, label, listed)


def _error_from_body(status: int, body: Mapping[str, Any]) -> ErrorInfo:
    """An error stored as the API's error body (a replayed refusal of a load)."""
    error = body.get("error", {})
    code = str(error.get("code", "error"))
    label = f"error.{code}" if has_label(f"error.{code}") else None
    return ErrorInfo(code, str(error.get("message", "")), status, label)


def invalid_input(exc: ValidationError) -> InvalidInput:
    """A form the API's request model refuses, as the API's ``invalid_input`` (which fields, why)."""
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()]
    return InvalidInput("the request is not valid", problems=problems)


def language(request: Request) -> Lang:
    """The language of this request (cookie, then ``Accept-Language``)."""
    return negotiate(request.cookies.get(LANG_COOKIE), request.headers.get("accept-language"))


def _state(request: Request) -> AppState:
    return get_state(request)


def web_session(request: Request) -> WebSession | None:
    """The member of staff whose live session cookie came with the request (``None``: not logged in)."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        with _state(request).new_uow() as uow:
            principal = authenticate(uow, token, via_cookie=True)
    except Unauthorized:
        return None
    request.state.principal = principal
    return WebSession(principal, token, csrf_token(token))


def require_form_token(session: WebSession, presented: str) -> None:
    """Refuse a form whose anti-CSRF token is not this session's (:class:`FormExpired`)."""
    try:
        check_csrf(session.token, presented or None)
    except Forbidden:
        raise FormExpired("the form does not belong to this session: open the page again") from None


def _here(request: Request) -> str:
    path = request.url.path
    return f"{path}?{request.url.query}" if request.url.query else path


def _page_address(request: Request, canonical: str | None) -> str:
    """The address of what is shown, for links back to it (language switch, re-read): ``canonical`` when the
    page names it, the request's own for a GET, else the page the form was on (a POST cannot be opened again)."""
    if canonical:
        return canonical
    if request.method == "GET":
        return _here(request)
    referer = urlsplit(request.headers.get("referer", ""))
    same_site = referer.netloc in ("", request.url.netloc)
    path = f"{referer.path}?{referer.query}" if referer.query else referer.path
    return safe_next(path) if same_site else PREFIX + "/"


def safe_next(target: str | None) -> str:
    """Where to go after log-in or a language switch: a path of these pages only (no open redirect)."""
    if target and target.startswith(PREFIX + "/") and "\\" not in target and ".." not in target:
        return target
    return PREFIX + "/"


def render(
    request: Request,
    template: str,
    *,
    session: WebSession | None,
    status: int = 200,
    error: ErrorInfo | None = None,
    canonical: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """A page: the template with the language, the staff member, the navigation and any error. ``canonical`` is
    the page's own address when it answers a form."""
    lang = language(request)
    message = request.query_params.get("msg")
    t = translator(lang)
    html = TEMPLATES.get_template(template).render(
        t=t,
        tl=lambda key, fallback: t(key) if has_label(key) else fallback,
        lang=lang,
        other_lang=other(lang),
        session=session,
        here=_page_address(request, canonical),
        prefix=PREFIX,
        error=error,
        flash=message if message and has_label(message) else None,
        show_counter=session is not None and session.has(COUNTER_VIEWERS),
        show_finance=session is not None and session.has(FINANCE_VIEWERS),
        **context,
    )
    return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)


def redirect(path: str, message: str | None = None) -> RedirectResponse:
    """303 to ``path`` (after a form), with a flash message key."""
    if message:
        path += ("&" if "?" in path else "?") + f"msg={quote(message)}"
    return RedirectResponse(path, status_code=303, headers={"Cache-Control": "no-store"})


def _to_login(request: Request) -> RedirectResponse:
    target = _here(request) if request.method == "GET" else PREFIX + "/"
    return RedirectResponse(f"{PREFIX}/login?next={quote(target)}", status_code=303)


Handler = Callable[[WebSession], Response]
ErrorHandler = Callable[[WebSession, ErrorInfo], Response]


def guarded(
    request: Request,
    handler: Handler,
    *,
    roles: Iterable[ApiRole] | None = None,
    on_error: ErrorHandler | None = None,
) -> Response:
    """Run a page: log-in required (else to the log-in page), ``roles`` checked, and every error of the one
    hierarchy (or a form the API's models refuse) shown in a page: ``on_error``'s, else the error page."""
    session = web_session(request)
    if session is None:
        return _to_login(request)
    try:
        if roles is not None:
            require_role(session.principal, roles)
        return handler(session)
    except Unauthorized:
        return _to_login(request)
    except OnecardError as exc:
        problem = error_info(exc)
    except ValidationError as exc:
        problem = error_info(invalid_input(exc))
    if on_error is not None:
        try:
            return on_error(session, problem)
        except OnecardError:
            pass
    return render(request, "error.html", session=session, status=problem.status, error=problem)


def _fragment_or_page(request: Request) -> bool:
    return request.headers.get("x-fragment") == "1"


# --- static files, language, log-in ----------------------------------------------------------------------------------


@router.get("/static/{name}")
def static(name: str) -> Response:
    """The pages' CSS and JavaScript (no build step; cached for an hour)."""
    if not STATIC_NAME.fullmatch(name) or not (STATIC_DIR / name).is_file():
        return Response("not found", status_code=404, media_type="text/plain")
    kind = name.rsplit(".", 1)[1]
    return FileResponse(
        STATIC_DIR / name,
        media_type=STATIC_TYPES[kind],
        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/lang/{lang}")
def switch_language(request: Request, lang: str, next: str = "") -> Response:
    """Show the pages in ``lang`` (``en`` or ``zh``) from now on; back to where the switch was pressed."""
    response = RedirectResponse(safe_next(next), status_code=303)
    if lang in LANGUAGES:
        response.set_cookie(
            LANG_COOKIE, lang, max_age=365 * 24 * 3600, samesite="lax", secure=request.url.scheme == "https", path="/"
        )
    return response


def _home_for(session: WebSession) -> str:
    if session.has({ApiRole.COUNTER, ApiRole.SUPERVISOR}):
        return f"{PREFIX}/counter"
    if session.has(FINANCE_VIEWERS):
        return f"{PREFIX}/finance"
    return f"{PREFIX}/home"


@router.get("/")
def index(request: Request) -> Response:
    """The desk of one's roles (counter first), or the log-in page."""
    session = web_session(request)
    if session is None:
        return _to_login(request)
    return redirect(_home_for(session))


@router.get("/home")
def home(request: Request) -> Response:
    """A landing page for accounts without a desk page (administrators)."""
    return guarded(request, lambda session: render(request, "home.html", session=session))


@router.get("/login")
def login_page(request: Request, next: str = "") -> Response:
    """The log-in form."""
    return render(request, "login.html", session=None, next=safe_next(next), username="")


@router.post("/login")
def login(request: Request, username: FormStr = "", password: FormStr = "", next: FormStr = "") -> Response:
    """Log in as ``POST /auth/login`` does (same rate limits, same session and cookie), then go on."""
    state = _state(request)
    name = username.strip()
    try:
        enforce(state.limiter, state.rate_limits.login_per_client, client_address(request))
        enforce(state.limiter, state.rate_limits.login_per_user, name.lower()[:64])
        with state.new_uow() as uow:
            result = staff_login(uow, name, password, hasher=state.password_hasher, ttl=state.session_ttl)
    except OnecardError as exc:
        return render(
            request, "login.html", session=None, status=exc.http_status, error=error_info(exc),
            next=safe_next(next), username=name[:64],
        )  # fmt: skip
    with state.new_uow() as uow:
        principal = authenticate(uow, result.token, via_cookie=True)
    target = next if next.startswith(PREFIX + "/") else None
    session = WebSession(principal, result.token, result.csrf_token)
    response = RedirectResponse(safe_next(target) if target else _home_for(session), status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        result.token,
        max_age=int(state.session_ttl.total_seconds()),
        httponly=True,
        secure=request.url.scheme == "https",
        samesite="strict",
        path="/",
    )
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: FormStr = "") -> Response:
    """End the session (as ``POST /auth/logout``) and drop the cookie."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        with _state(request).new_uow() as uow:
            staff_logout(uow, session.principal)
        response = redirect(f"{PREFIX}/login", "login.logged_out")
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    return guarded(request, run)


# --- counter desk -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReaderStatus:
    """What the desk's reader holds: nothing, a card of ours (with its record), a card with no record here, a
    chip without a purse (blank), or an error."""

    desk_id: str | None
    card_no: str | None = None
    card: Any = None
    empty: bool = False
    unissued: bool = False
    error: ErrorInfo | None = None


def reader_status(request: Request, session: WebSession) -> ReaderStatus:
    """Read the card in one's desk reader (:func:`api.counter_service.card_in_reader`)."""
    desk_id = session.principal.desk_id
    if desk_id is None or not session.may(Action.LOAD):
        return ReaderStatus(desk_id)
    state = _state(request)
    try:
        with state.new_uow() as uow:
            card_no, view = counter_service.card_in_reader(uow, state.desk_readers, session.principal, desk_id=desk_id)
    except OnecardError as exc:
        if exc.code == "no_card_in_reader":
            return ReaderStatus(desk_id, empty=True)
        if exc.code == "card_refused":  # no purse to read: a blank chip (or not a card of this system)
            return ReaderStatus(desk_id, unissued=True)
        return ReaderStatus(desk_id, error=error_info(exc))
    return ReaderStatus(desk_id, card_no=card_no, card=view)


def _own_desk(session: WebSession) -> str:
    if session.principal.desk_id is None:
        raise Forbidden("your account has no desk: reader operations need one", label="counter.no_desk")
    return session.principal.desk_id


def _counter_home(request: Request, session: WebSession, error: ErrorInfo | None = None, **form: Any) -> Response:
    values = {"id_number": "", "name": "", "phone": "", "address": "", "card_no": "", "city_code": "", **form}
    return render(
        request, "counter/home.html", session=session, error=error, status=error.status if error else 200,
        canonical=f"{PREFIX}/counter",
        reader=reader_status(request, session), form=values, card_types=_card_types(), may=session.may, Action=Action,
    )  # fmt: skip


def _card_types() -> tuple[str, ...]:
    return tuple(get_args(CardApplicationIn.model_fields["card_type"].annotation))


@router.get("/counter")
def counter_home(request: Request) -> Response:
    """The counter desk: the card on the reader, find or register a resident, look up a card, apply for one."""
    return guarded(request, lambda session: _counter_home(request, session), roles=COUNTER_VIEWERS)


@router.post("/counter/residents/search")
def find_resident(request: Request, csrf_token: FormStr = "", id_number: FormStr = "") -> Response:
    """Find a resident by ID number (sent in the body, never in a URL) and open them."""
    typed = id_number.strip().upper()

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        body = ResidentSearchIn.model_validate({"id_number": typed})
        with _state(request).new_uow() as uow:
            view = counter_service.find_resident(
                uow, _state(request).counter_context(), session.principal, id_number=body.id_number, unmasked=False
            )
        return redirect(f"{PREFIX}/counter/residents/{view.resident_id}")

    return guarded(
        request, run, on_error=lambda session, error: _counter_home(request, session, error, id_number=typed)
    )


@router.post("/counter/residents")
def register_resident(
    request: Request,
    csrf_token: FormStr = "",
    name: FormStr = "",
    id_number: FormStr = "",
    phone: FormStr = "",
    address: FormStr = "",
) -> Response:
    """Register a resident (the API's checks), then open their page."""
    typed = {"name": name.strip(), "id_number": id_number.strip().upper(), "phone": phone.strip(),
             "address": address.strip()}  # fmt: skip

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        body = ResidentIn.model_validate(typed)
        state = _state(request)
        with state.new_uow() as uow:
            view = counter_service.register_resident(
                uow, state.counter_context(), session.principal,
                name=body.name, id_number=body.id_number, phone=body.phone, address=body.address,
            )  # fmt: skip
        return redirect(f"{PREFIX}/counter/residents/{view.resident_id}", "resident.registered")

    return guarded(request, run, on_error=lambda session, error: _counter_home(request, session, error, **typed))


def _resident_page(
    request: Request, session: WebSession, resident_id: int, *, unmasked: bool = False, error: ErrorInfo | None = None
) -> Response:
    state = _state(request)
    ctx = state.counter_context()
    with state.new_uow() as uow:
        resident = counter_service.show_resident(
            uow, ctx, session.principal, resident_id=resident_id, unmasked=unmasked
        )
    social = None
    try:
        with state.new_uow() as uow:
            social = counter_service.show_social_security(
                uow, ctx, session.principal, resident_id=resident_id, unmasked=unmasked
            )
    except NotFound:
        social = None
    statuses = get_args(SocialSecurityIn.model_fields["status"].annotation)
    return render(
        request, "counter/resident.html", session=session, error=error, status=error.status if error else 200,
        canonical=f"{PREFIX}/counter/residents/{resident_id}",
        resident=resident, social=social, schemes=SCHEMES, scheme_on=scheme_on, ss_statuses=statuses,
        card_types=_card_types(),
        may=session.may, Action=Action,
    )  # fmt: skip


def scheme_on(schemes: int, flag: int) -> bool:
    """Whether the insured-scheme bits ``schemes`` include ``flag``."""
    return bool(int(schemes) & int(flag))


def _resident_id(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 2**63:
        raise NotFound("no such resident")
    return int(value)


@router.get("/counter/residents/{resident_id}")
def resident_page(request: Request, resident_id: str, unmasked: bool = False) -> Response:
    """A resident, their social-security record, and forms to link it and to apply for a card."""
    return guarded(
        request,
        lambda session: _resident_page(request, session, _resident_id(resident_id), unmasked=unmasked),
        roles=COUNTER_VIEWERS,
    )


@router.post("/counter/residents/{resident_id}/social-security")
def link_social_security(
    request: Request,
    resident_id: str,
    csrf_token: FormStr = "",
    ss_number: FormStr = "",
    schemes: Annotated[list[str] | None, Form()] = None,
    agency_code: FormStr = "",
    status: FormStr = "active",
) -> Response:
    """Link (or update) the resident's social-security record."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        rid = _resident_id(resident_id)
        flags = 0
        for value in schemes or []:
            if not value.isdigit():
                raise InvalidInput("unknown insured scheme")
            flags |= int(value)
        body = SocialSecurityIn.model_validate(
            {"ss_number": ss_number.strip().upper(), "schemes": flags, "agency_code": agency_code.strip(),
             "status": status}
        )  # fmt: skip
        state = _state(request)
        with state.new_uow() as uow:
            counter_service.link_social_security(
                uow, state.counter_context(), session.principal, resident_id=rid, ss_number=body.ss_number,
                schemes=body.schemes, agency_code=body.agency_code, status=body.status,
            )  # fmt: skip
        return redirect(f"{PREFIX}/counter/residents/{rid}", "ss.linked")

    return guarded(
        request,
        run,
        on_error=lambda session, error: _resident_page(request, session, _resident_id(resident_id), error=error),
    )


@router.post("/counter/cards")
def apply_for_card(
    request: Request,
    csrf_token: FormStr = "",
    card_type: FormStr = "adult",
    city_code: FormStr = "",
    resident_id: FormStr = "",
) -> Response:
    """Apply for a card (registered to the resident when given, else anonymous), then open it to issue it."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        document: dict[str, Any] = {"card_type": card_type, "city_code": city_code.strip()}
        if resident_id.strip():
            document["resident_id"] = _resident_id(resident_id.strip())
        body = CardApplicationIn.model_validate(document)
        state = _state(request)
        with state.new_uow() as uow:
            view = counter_service.apply_for_card(
                uow, state.counter_context(), session.principal,
                card_type=body.card_type, city_code=body.city_code, resident_id=body.resident_id,
            )  # fmt: skip
        return redirect(f"{PREFIX}/counter/cards/{view.card_no}", "card.applied")

    def failed(session: WebSession, error: ErrorInfo) -> Response:
        if resident_id.strip().isdigit():
            return _resident_page(request, session, _resident_id(resident_id.strip()), error=error)
        return _counter_home(request, session, error, city_code=city_code.strip())

    return guarded(request, run, on_error=failed)


@router.get("/counter/cards")
def find_card(request: Request, card_no: str = "") -> Response:
    """The card look-up form's target: open the card."""
    typed = card_no.strip()

    def run(session: WebSession) -> Response:
        if not CARD_NO_RE.fullmatch(typed):
            raise InvalidInput("a card number is 16 digits", problems=["card_no: 16 digits"])
        return redirect(f"{PREFIX}/counter/cards/{typed}")

    return guarded(
        request, run, roles=COUNTER_VIEWERS,
        on_error=lambda session, error: _counter_home(request, session, error, card_no=typed[:32]),
    )  # fmt: skip


def _card_no(value: str) -> str:
    if not CARD_NO_RE.fullmatch(value):
        raise NotFound("no such card", card_no=value[:32])
    return value


def _can_become(state: CardState, target: CardState) -> bool:
    return target in TRANSITIONS[state]


def card_page(request: Request, session: WebSession, card_no: str, *, error: ErrorInfo | None = None) -> Response:
    """A card: its record, the desk's reader, and the actions its state and one's roles allow."""
    with _state(request).new_uow() as uow:
        card = counter_service.show_card(uow, session.principal, card_no=_card_no(card_no))
        unconfirmed = counter_service.unconfirmed_loads(uow, card_no=card.card_no) if session.may(Action.LOAD) else 0
    actions = {
        "issue": card.state is CardState.APPLIED and session.may(Action.ISSUE_CARD),
        "load": card.state is CardState.ACTIVE and session.may(Action.LOAD),
        "loss": _can_become(card.state, CardState.LOST) and session.may(Action.REPORT_LOSS),
        "replace": _can_become(card.state, CardState.REPLACED) and session.may(Action.REPLACE_CARD),
        "refund": _can_become(card.state, CardState.REFUNDED) and session.may(Action.REFUND_CARD),
        "block": card.state is CardState.ACTIVE and session.may(Action.BLOCK_CARD),
        "unblock": card.state is CardState.BLOCKED and session.may(Action.UNBLOCK_CARD),
        "resolve": unconfirmed > 0,
    }
    return render(
        request, "counter/card.html", session=session, error=error, status=error.status if error else 200,
        canonical=f"{PREFIX}/counter/cards/{card.card_no}",
        card=card, actions=actions, reader=reader_status(request, session),
    )  # fmt: skip


@router.get("/counter/cards/{card_no}")
def card_view(request: Request, card_no: str) -> Response:
    """A card and what can be done with it."""
    return guarded(request, lambda session: card_page(request, session, card_no), roles=COUNTER_VIEWERS)


def _receipt(
    request: Request,
    session: WebSession,
    *,
    title: str,
    rows: list[tuple[str, str]],
    card_no: str | None,
    note: str | None = None,
    links: list[tuple[str, str]] | None = None,
    payout: Any = None,
) -> Response:
    rows = [
        *rows,
        ("receipt.operator", session.principal.username),
        ("receipt.desk", session.principal.desk_id or "—"),
        ("common.time", format_datetime(datetime.now().astimezone())),
    ]
    return render(
        request, "counter/receipt.html", session=session, title=title, rows=rows, card_no=card_no, note=note,
        links=links or [], payout=payout,
    )  # fmt: skip


@router.post("/counter/cards/{card_no}/issue")
def issue_card(
    request: Request,
    card_no: str,
    csrf_token: FormStr = "",
    pin: FormStr = "",
    pin_again: FormStr = "",
    social_pin: FormStr = "",
) -> Response:
    """Personalise the blank card on one's desk reader as this applied card (the resident's PIN)."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        if pin != pin_again:
            raise InvalidInput("the two PINs differ", label="issue.pins_differ")
        body = IssueIn.model_validate({"desk_id": _own_desk(session), "pin": pin, "social_pin": social_pin or None})
        state = _state(request)
        with state.new_uow() as uow:
            view = counter_service.issue_card(
                uow, state.counter_context(), state.desk_readers, session.principal,
                card_no=_card_no(card_no), desk_id=body.desk_id, pin=body.pin, social_pin=body.social_pin,
            )  # fmt: skip
        t = translator(language(request))
        return _receipt(
            request, session, title="issue.done", card_no=view.card_no,
            rows=[("card.card_no", view.card_no), ("card.type", t(f"card_type.{view.card_type.value}")),
                  ("card.state", t(f"state.{view.state.value}")), ("card.chip", view.chip_serial or "—"),
                  ("card.limit", format_yuan(view.purse_limit)), ("card.balance", format_yuan(view.shadow_balance))],
        )  # fmt: skip

    return guarded(request, run, on_error=lambda session, error: card_page(request, session, card_no, error=error))


@router.post("/counter/cards/{card_no}/load-confirm")
def confirm_load(
    request: Request, card_no: str, csrf_token: FormStr = "", amount: FormStr = "", quick: FormStr = ""
) -> Response:
    """Step one of a load: check the amount, show what to collect, and a confirm form with a fresh
    ``Idempotency-Key`` (posting it twice loads once)."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        fen = parse_yuan(quick or amount)
        body = LoadIn.model_validate({"desk_id": _own_desk(session), "amount": fen})
        with _state(request).new_uow() as uow:
            card = counter_service.show_card(uow, session.principal, card_no=_card_no(card_no))
        return render(
            request, "counter/confirm.html", session=session, kind="load", card=card, amount=body.amount,
            key=uuid.uuid4().hex, action=f"{PREFIX}/counter/cards/{card.card_no}/loads", reasons=(),
        )  # fmt: skip

    return guarded(request, run, on_error=lambda session, error: card_page(request, session, card_no, error=error))


@router.post("/counter/cards/{card_no}/loads")
def load_card(
    request: Request, card_no: str, csrf_token: FormStr = "", amount: FormStr = "", idempotency_key: FormStr = ""
) -> Response:
    """Load the cash onto the card in one's desk reader, exactly once per form (its ``Idempotency-Key``), and
    show the receipt (or the refusal, replayed as first answered)."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        if not IDEMPOTENCY_KEY_RE.fullmatch(idempotency_key):
            raise InvalidInput("the form has no load key: start the load again")
        if not amount.isdigit():
            raise InvalidInput("the amount is not valid", label="load.invalid_amount")
        body = LoadIn.model_validate({"desk_id": _own_desk(session), "amount": int(amount)})
        state = _state(request)
        stored, replayed = counter_service.idempotent_load(
            state.new_uow, state.counter_context(), state.desk_readers, state.limiter, state.rate_limits.money,
            session.principal, key=idempotency_key, card_no=_card_no(card_no), desk_id=body.desk_id,
            amount=body.amount, render=render_load,
        )  # fmt: skip
        state.metrics.loads.labels("replayed" if replayed else str(stored.status)).inc()
        document = json.loads(stored.body)
        if stored.status >= 400:
            return card_page(request, session, card_no, error=_error_from_body(stored.status, document))
        status = str(document.get("status", ""))
        note = "load.replayed" if replayed else ("load.unconfirmed" if status == "unconfirmed" else None)
        return _receipt(
            request, session, title="load.done", card_no=card_no, note=note,
            rows=load_receipt_rows(document, translator(language(request))),
        )  # fmt: skip

    return guarded(request, run, on_error=lambda session, error: card_page(request, session, card_no, error=error))


def load_receipt_rows(document: Mapping[str, Any], t: Callable[[str], str]) -> list[tuple[str, str]]:
    """The receipt lines of a load, from the API's load response (``LoadOut``)."""

    def text(name: str) -> str:
        value = document.get(name)
        return "—" if value is None or value == "" else str(value)

    when = format_card_time(document.get("txn_date"), document.get("txn_time"))
    status = str(document.get("status", ""))
    return [
        ("card.card_no", text("card_no")),
        ("common.amount", format_yuan(document.get("amount"))),
        ("load.status", t(f"lstatus.{status}")),
        ("load.balance_after", format_yuan(document.get("balance_after"))),
        ("receipt.term_id", text("term_id")),
        ("receipt.term_seq", text("term_seq")),
        ("receipt.card_seq", text("card_seq")),
        ("receipt.date", when),
        ("receipt.tac", text("tac")),
    ]


ConfirmKind = Literal["loss", "replace", "refund", "block", "unblock", "resolve"]
CONFIRM_PATHS: dict[str, str] = {
    "loss": "loss",
    "replace": "replacement",
    "refund": "refund",
    "block": "block",
    "unblock": "unblock",
    "resolve": "loads/resolution",
}
"""Where each confirmation posts, under the card's page."""


def _confirm_page(request: Request, kind: ConfirmKind, card_no: str) -> Response:
    def run(session: WebSession) -> Response:
        with _state(request).new_uow() as uow:
            card = counter_service.show_card(uow, session.principal, card_no=_card_no(card_no))
        reasons = get_args(LossIn.model_fields["reason"].annotation) if kind == "loss" else ()
        return render(
            request, "counter/confirm.html", session=session, kind=kind, card=card, amount=None, key="",
            action=f"{PREFIX}/counter/cards/{card.card_no}/{CONFIRM_PATHS[kind]}", reasons=reasons,
        )  # fmt: skip

    return guarded(
        request, run, roles=COUNTER_VIEWERS,
        on_error=lambda session, error: card_page(request, session, card_no, error=error),
    )  # fmt: skip


@router.get("/counter/cards/{card_no}/loss")
def confirm_loss(request: Request, card_no: str) -> Response:
    """Confirm a loss report (why)."""
    return _confirm_page(request, "loss", card_no)


@router.post("/counter/cards/{card_no}/loss")
def report_loss(request: Request, card_no: str, csrf_token: FormStr = "", reason: FormStr = "lost") -> Response:
    """Report the card lost, stolen or damaged: hotlisted at once; the receipt."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        body = LossIn.model_validate({"reason": reason})
        with _state(request).new_uow() as uow:
            view = counter_service.report_loss(
                uow, _state(request).counter_context(), session.principal, card_no=_card_no(card_no), reason=body.reason
            )
        t = translator(language(request))
        return _receipt(
            request, session, title="loss.done", card_no=view.card_no,
            rows=[("card.card_no", view.card_no), ("loss.reason", t(f"reason.{view.reason}")),
                  ("loss.version", str(view.version)), ("loss.listed_at", format_datetime(view.listed_at))],
        )  # fmt: skip

    return guarded(request, run, on_error=lambda session, error: card_page(request, session, card_no, error=error))


@router.get("/counter/cards/{card_no}/replacement")
def confirm_replacement(request: Request, card_no: str) -> Response:
    """Confirm a replacement."""
    return _confirm_page(request, "replace", card_no)


def _settlement_rows(view: Any, t: Callable[[str], str]) -> list[tuple[str, str]]:
    return [
        ("settlement.id", str(view.settlement_id)),
        ("settlement.kind", t(f"kind.{view.kind.value}")),
        ("settlement.from", view.from_card_no),
        ("settlement.to", view.to_card_no or "—"),
        ("common.status", t(f"sstatus.{view.status.value}")),
        ("common.amount", format_yuan(view.amount)),
        ("settlement.cutoff", format_datetime(view.cutoff_at)),
    ]


@router.post("/counter/cards/{card_no}/replacement")
def replace_card(request: Request, card_no: str, csrf_token: FormStr = "") -> Response:
    """Replace a lost card: a new card applied for (issue it next), the old balance pending transfer."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        with _state(request).new_uow() as uow:
            view = counter_service.replace_card(
                uow, _state(request).counter_context(), session.principal, card_no=_card_no(card_no)
            )
        t = translator(language(request))
        new_no = view.new_card.card_no
        return _receipt(
            request, session, title="replace.done", card_no=new_no,
            rows=[("replace.new_card", new_no),
                  ("card.state", t(f"state.{view.new_card.state.value}")), *_settlement_rows(view.transfer, t)],
            links=[(f"{PREFIX}/counter/cards/{new_no}", "replace.issue_next")],
        )  # fmt: skip

    return guarded(request, run, on_error=lambda session, error: card_page(request, session, card_no, error=error))


@router.get("/counter/cards/{card_no}/refund")
def confirm_refund(request: Request, card_no: str) -> Response:
    """Confirm a refund (with the card on the reader or without)."""
    return _confirm_page(request, "refund", card_no)


@router.post("/counter/cards/{card_no}/refund")
def refund_card(request: Request, card_no: str, csrf_token: FormStr = "", present: FormStr = "") -> Response:
    """Refund a card (blocked for good in one's reader when it is there); the settlement's receipt."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        body = RefundIn.model_validate({"desk_id": _own_desk(session) if present else None})
        state = _state(request)
        with state.new_uow() as uow:
            view = counter_service.refund_card(
                uow, state.counter_context(), state.desk_readers, state.limiter, state.rate_limits.money,
                session.principal, card_no=_card_no(card_no), desk_id=body.desk_id,
            )  # fmt: skip
        t = translator(language(request))
        payout = view if view.status.value == "ready" and session.may(Action.PAY_OUT) else None
        return _receipt(
            request, session, title="refund.done", card_no=view.from_card_no, rows=_settlement_rows(view, t),
            payout=payout,
        )  # fmt: skip

    return guarded(request, run, on_error=lambda session, error: card_page(request, session, card_no, error=error))


@router.get("/counter/cards/{card_no}/block")
def confirm_block(request: Request, card_no: str) -> Response:
    """Confirm a block of the card in one's desk reader (temporary, or for good)."""
    return _confirm_page(request, "block", card_no)


def _card_rows(view: Any, t: Callable[[str], str]) -> list[tuple[str, str]]:
    return [
        ("card.card_no", view.card_no),
        ("card.state", t(f"state.{view.state.value}")),
        ("card.balance", format_yuan(view.shadow_balance)),
    ]


def _card_in_reader_receipt(
    request: Request,
    card_no: str,
    csrf_token: str,
    *,
    title: str,
    act: Callable[[WebSession, AppState, UnitOfWork], CardView],
) -> Response:
    """A confirmed action on the card in one's desk reader (``act``, in one unit of work); the card's receipt, or
    the card page with the error."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        state = _state(request)
        with state.new_uow() as uow:
            view = act(session, state, uow)
        t = translator(language(request))
        return _receipt(request, session, title=title, card_no=view.card_no, rows=_card_rows(view, t))

    return guarded(request, run, on_error=lambda session, error: card_page(request, session, card_no, error=error))


@router.post("/counter/cards/{card_no}/block")
def block_card(request: Request, card_no: str, csrf_token: FormStr = "", permanent: FormStr = "") -> Response:
    """Block the purse of the card in one's desk reader (line MAC); the receipt."""

    def act(session: WebSession, state: AppState, uow: UnitOfWork) -> CardView:
        body = BlockIn.model_validate({"desk_id": _own_desk(session), "permanent": bool(permanent)})
        return counter_service.block_at_desk(
            uow, state.counter_context(), state.desk_readers, session.principal,
            card_no=_card_no(card_no), desk_id=body.desk_id, permanent=body.permanent,
        )  # fmt: skip

    return _card_in_reader_receipt(request, card_no, csrf_token, title="block.done", act=act)


@router.get("/counter/cards/{card_no}/unblock")
def confirm_unblock(request: Request, card_no: str) -> Response:
    """Confirm lifting the temporary block of the card in one's desk reader."""
    return _confirm_page(request, "unblock", card_no)


@router.post("/counter/cards/{card_no}/unblock")
def unblock_card(request: Request, card_no: str, csrf_token: FormStr = "") -> Response:
    """Lift the temporary block of the card in one's desk reader (supervisors); the receipt."""

    def act(session: WebSession, state: AppState, uow: UnitOfWork) -> CardView:
        body = UnblockIn.model_validate({"desk_id": _own_desk(session)})
        return counter_service.unblock_at_desk(
            uow, state.counter_context(), state.desk_readers, session.principal,
            card_no=_card_no(card_no), desk_id=body.desk_id,
        )  # fmt: skip

    return _card_in_reader_receipt(request, card_no, csrf_token, title="unblock.done", act=act)


@router.get("/counter/cards/{card_no}/loads/resolution")
def confirm_resolution(request: Request, card_no: str) -> Response:
    """Confirm settling the card's unconfirmed loads with the card in one's desk reader."""
    return _confirm_page(request, "resolve", card_no)


@router.post("/counter/cards/{card_no}/loads/resolution")
def resolve_loads(request: Request, card_no: str, csrf_token: FormStr = "") -> Response:
    """Settle the card's unconfirmed loads with the card (each proven, void, or still unconfirmed); the receipt."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        body = LoadResolutionIn.model_validate({"desk_id": _own_desk(session)})
        state = _state(request)
        outcomes = counter_service.resolve_loads_at_desk(
            state.new_uow, state.counter_context(), state.desk_readers, session.principal,
            card_no=_card_no(card_no), desk_id=body.desk_id,
        )  # fmt: skip
        t = translator(language(request))
        rows = [("card.card_no", card_no)]
        rows += [("resolve.load", f"{format_yuan(o.amount)} · {t(f'lstatus.{o.status.value}')}") for o in outcomes]
        if not outcomes:
            rows.append(("resolve.result", t("resolve.none")))
        return _receipt(request, session, title="resolve.done", card_no=card_no, rows=rows)

    return guarded(request, run, on_error=lambda session, error: card_page(request, session, card_no, error=error))


@router.post("/counter/settlements/{settlement_id}/payout")
def pay_out(request: Request, settlement_id: str, csrf_token: FormStr = "") -> Response:
    """Pay out a ready refund or cancellation in cash, once; the receipt."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        if not settlement_id.isdigit() or not 0 < int(settlement_id) < 2**63:
            raise NotFound("no such settlement")
        state = _state(request)
        with state.new_uow() as uow:
            view = counter_service.pay_out(
                uow, state.counter_context(), state.limiter, state.rate_limits.money, session.principal,
                settlement_id=int(settlement_id),
            )  # fmt: skip
        t = translator(language(request))
        return _receipt(
            request, session, title="settlement.paid", card_no=view.from_card_no, rows=_settlement_rows(view, t)
        )

    return guarded(request, run)


# --- finance desk ---------------------------------------------------------------------------------------------------


@dataclass
class Section:
    """One part of a finance page: its data, or the error that kept it from showing (``hidden``: not one's
    role's)."""

    data: Any = None
    error: ErrorInfo | None = None
    hidden: bool = False


@dataclass
class Dashboard:
    """The finance desk's view of one clearing day."""

    day: date
    statements: Section = field(default_factory=Section)
    report: Section = field(default_factory=Section)
    runs: Section = field(default_factory=Section)
    reconciliation: Section = field(default_factory=Section)
    exceptions: Section = field(default_factory=Section)


def section(session: WebSession, roles: Iterable[ApiRole], fetch: Callable[[], Any]) -> Section:
    """Fetch one part of a page for the roles that may see it; an error stays in its part."""
    if not session.has(roles):
        return Section(hidden=True)
    try:
        return Section(fetch())
    except OnecardError as exc:
        return Section(error=error_info(exc))


def hours_chart(volume: list[dict[str, Any]], title: str) -> Markup | None:
    """The report's ``volume_by_hour`` as an SVG bar chart: records per hour, stacked by operator."""
    operators = sorted({str(item.get("operator_id", "")) for item in volume})
    if not operators:
        return None
    counts = {op: [0] * 24 for op in operators}
    for item in volume:
        hour = item.get("hour")
        if isinstance(hour, int) and 0 <= hour < 24:
            counts[str(item.get("operator_id", ""))][hour] += int(item.get("count", 0))
    series = [Series(op, tuple(values)) for op, values in counts.items()]
    return bar_chart([f"{h:02d}" for h in range(24)], series, title=title, label_every=2)


def operators_chart(statements: list[finance.OperatorTotals], title: str) -> Markup | None:
    """Each operator's cleared amount (yuan) as an SVG bar chart."""
    if not statements:
        return None
    return bar_chart(
        [s.operator_id for s in statements],
        [Series("amount", tuple(s.amount for s in statements))],
        title=title,
        value_label=lambda fen: f"{fen / 100:,.0f}",
    )


def _report_document(state: AppState, day: date) -> dict[str, Any]:
    with state.new_uow() as uow:
        file = finance.report(uow, business_date=day, report_format="json")
    document = json.loads(file.body)
    return document if isinstance(document, dict) else {}


def _finance_home(
    request: Request, session: WebSession, day_text: str | None, error: ErrorInfo | None = None
) -> Response:
    state = _state(request)
    day = parse_day(day_text, today())

    def uow_call(fn: Callable[[Any], Any]) -> Callable[[], Any]:
        def call() -> Any:
            with state.new_uow() as uow:
                return fn(uow)

        return call

    board = Dashboard(day)
    board.statements = section(
        session, BOOKS, uow_call(lambda uow: finance.statements(uow, business_date=day, operator_id=None))
    )
    board.report = section(session, BOOKS, lambda: _report_document(state, day))
    board.runs = section(session, READERS, uow_call(lambda uow: finance.list_clearing_runs(uow, business_date=day)))
    board.reconciliation = section(session, BOOKS, uow_call(lambda uow: finance.reconciliation(uow, business_date=day)))
    board.exceptions = section(
        session, READERS, uow_call(lambda uow: finance.exceptions(uow, business_date=None, status="open"))
    )
    t = translator(language(request))
    charts: dict[str, Markup | None] = {"hours": None, "operators": None}
    if board.report.data:
        volume = board.report.data.get("volume_by_hour")
        charts["hours"] = hours_chart(volume if isinstance(volume, list) else [], t("finance.by_hour"))
    if board.statements.data:
        charts["operators"] = operators_chart(list(board.statements.data), t("finance.amount_by_operator"))
    return render(
        request, "finance/home.html", session=session, error=error, status=error.status if error else 200,
        canonical=f"{PREFIX}/finance?date={day.isoformat()}",
        board=board, charts=charts, formats=REPORT_FORMATS, may_run=session.has(FINANCE),
    )  # fmt: skip


@router.get("/finance")
def finance_home(request: Request, day: Annotated[str | None, Query(alias="date")] = None) -> Response:
    """Today's (or a day's) clearing at a glance: per operator, by hour, runs, reconciliation, exceptions."""
    return guarded(request, lambda session: _finance_home(request, session, day), roles=FINANCE_VIEWERS)


@router.post("/finance/runs")
def start_run(request: Request, csrf_token: FormStr = "", business_date: FormStr = "") -> Response:
    """Start the clearing run of a day, then watch it."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        body = ClearingRunIn.model_validate({"business_date": business_date.strip()})
        state = _state(request)
        with state.new_uow() as uow:
            view = finance.start_clearing_run(uow, session.principal, business_date=body.business_date)
        state.metrics.clearing_runs.inc()
        return redirect(f"{PREFIX}/finance/runs/{view.run_id}", "finance.run_started")

    return guarded(
        request, run, roles=FINANCE,
        on_error=lambda session, error: _finance_home(request, session, business_date.strip() or None, error),
    )  # fmt: skip


def _run_id(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 2**63:
        raise NotFound("no such clearing run")
    return int(value)


def _run_context(state: AppState, run_id: int) -> dict[str, Any]:
    with state.new_uow() as uow:
        run = finance.clearing_run(uow, run_id=run_id)
    result = None
    if run.status == "finished":
        with state.new_uow() as uow:
            result = finance.clearing_result(uow, run_id=run_id)
    done = run.status in ("finished", "failed")
    percent = None
    if run.records_total:
        percent = min(100, round(100 * run.records_done / run.records_total))
    elif done:
        percent = 100
    return {"run": run, "result": result, "done": done, "percent": percent}


@router.get("/finance/runs/{run_id}")
def run_page(request: Request, run_id: str) -> Response:
    """A clearing run, followed as it goes (the page polls its progress), and its result once finished."""

    def run(session: WebSession) -> Response:
        context = _run_context(_state(request), _run_id(run_id))
        template = "finance/_run_progress.html" if _fragment_or_page(request) else "finance/run.html"
        return render(request, template, session=session, **context)

    return guarded(request, run, roles=READERS)


ExceptionStatus = Literal["open", "proposed", "resolved"]
EXCEPTION_STATUSES: tuple[str, ...] = get_args(ExceptionStatus)


def _exceptions_page(
    request: Request, session: WebSession, status: str | None, day_text: str | None, error: ErrorInfo | None = None
) -> Response:
    chosen = cast(ExceptionStatus, status) if status in EXCEPTION_STATUSES else None
    day = parse_day(day_text, today()) if day_text else None
    with _state(request).new_uow() as uow:
        items = finance.exceptions(uow, business_date=day, status=chosen)
    actions = get_args(ResolutionIn.model_fields["action"].annotation)
    return render(
        request, "finance/exceptions.html", session=session, error=error, status=error.status if error else 200,
        canonical=f"{PREFIX}/finance/exceptions?status={chosen or ''}",
        items=items, chosen=chosen, statuses=EXCEPTION_STATUSES, day=day, actions=actions,
        may_propose=session.has(FINANCE), may_decide=session.has(CHECKERS),
    )  # fmt: skip


@router.get("/finance/exceptions")
def exceptions_page(
    request: Request, status: str | None = "open", day: Annotated[str | None, Query(alias="date")] = None
) -> Response:
    """The exceptions queue: propose a resolution (maker), approve or refuse it (checker, another person)."""
    return guarded(request, lambda session: _exceptions_page(request, session, status, day), roles=READERS)


def _exception_id(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 2**63:
        raise NotFound("no such exception")
    return int(value)


@router.post("/finance/exceptions/{exception_id}/resolution")
def propose_resolution(
    request: Request,
    exception_id: str,
    csrf_token: FormStr = "",
    action: FormStr = "",
    note: FormStr = "",
    amount: FormStr = "",
    back: FormStr = "open",
) -> Response:
    """The maker proposes how an exception is resolved (``adjust``: with the amount to settle, in yuan)."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        fields: dict[str, Any] = {"action": action, "note": note.strip()}
        if action == "adjust":  # the amount field means nothing for the other actions
            fields["amount"] = parse_yuan(amount)
        body = ResolutionIn.model_validate(fields)
        adjusted = {"amount": body.amount} if body.amount is not None else {}
        with _state(request).new_uow() as uow:
            finance.propose_resolution(
                uow, session.principal, exception_id=_exception_id(exception_id), action=body.action, note=body.note,
                **adjusted,
            )  # fmt: skip
        return redirect(f"{PREFIX}/finance/exceptions?status={quote(back)}", "exc.proposed")

    return guarded(
        request, run, roles=FINANCE,
        on_error=lambda session, error: _exceptions_page(request, session, back, None, error),
    )  # fmt: skip


@router.post("/finance/exceptions/{exception_id}/decision")
def decide_resolution(
    request: Request,
    exception_id: str,
    csrf_token: FormStr = "",
    decision: FormStr = "",
    note: FormStr = "",
    back: FormStr = "proposed",
) -> Response:
    """The checker (not the maker) approves or refuses a proposed resolution."""

    def run(session: WebSession) -> Response:
        require_form_token(session, csrf_token)
        if decision not in ("approve", "refuse"):
            raise InvalidInput("approve or refuse", problems=["decision: approve or refuse"])
        body = DecisionIn.model_validate({"approve": decision == "approve", "note": note.strip()})
        with _state(request).new_uow() as uow:
            finance.decide_resolution(
                uow, session.principal, exception_id=_exception_id(exception_id), approve=body.approve, note=body.note
            )
        return redirect(f"{PREFIX}/finance/exceptions?status={quote(back)}", "exc.decided")

    return guarded(
        request, run, roles=CHECKERS,
        on_error=lambda session, error: _exceptions_page(request, session, back, None, error),
    )  # fmt: skip


@router.get("/finance/statements")
def statements_page(
    request: Request, day: Annotated[str | None, Query(alias="date")] = None, operator: str = ""
) -> Response:
    """A day's settlement statements (one operator's when chosen), with the report downloads."""

    def run(session: WebSession) -> Response:
        chosen_day = parse_day(day, today())
        operator_id = operator.strip() or None
        if operator_id is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}", operator_id):
            raise InvalidInput("an operator id is 1 to 32 letters, digits, '_' or '-'")
        with _state(request).new_uow() as uow:
            found = finance.statements(uow, business_date=chosen_day, operator_id=operator_id)
        totals = {
            "count": sum(s.count for s in found),
            "amount": sum(s.amount for s in found),
            "fee": sum(s.fee for s in found),
            "payable": sum(s.payable for s in found),
        }
        return render(
            request, "finance/statements.html", session=session, day=chosen_day, operator=operator_id or "",
            statements=found, totals=totals, formats=REPORT_FORMATS,
        )  # fmt: skip

    return guarded(request, run, roles=BOOKS)


@router.get("/finance/reports/{business_date}")
def download_report(request: Request, business_date: str, format: str = "csv") -> Response:
    """The day's report file (json, csv, xlsx or pdf), as ``GET /finance/reports/{date}`` serves it."""

    def run(session: WebSession) -> Response:
        if format not in REPORT_FORMATS:
            raise InvalidInput(f"a report is one of {', '.join(REPORT_FORMATS)}")
        day = parse_day(business_date, today())
        with _state(request).new_uow() as uow:
            file = finance.report(uow, business_date=day, report_format=format)  # type: ignore[arg-type]
        safe_name = re.sub(r"[^A-Za-z0-9._-]", "_", file.filename) or f"report.{format}"
        return Response(
            file.body,
            media_type=file.media_type,
            headers={"Content-Disposition": f'attachment; filename="{safe_name}"', "Cache-Control": "no-store"},
        )

    return guarded(
        request, run, roles=BOOKS,
        on_error=lambda session, error: _finance_home(request, session, business_date, error),
    )  # fmt: skip


@router.get("/finance/reconciliation")
def reconciliation_page(request: Request, day: Annotated[str | None, Query(alias="date")] = None) -> Response:
    """A day's reconciliation: each check, expected against actual."""

    def run(session: WebSession) -> Response:
        chosen_day = parse_day(day, today())
        with _state(request).new_uow() as uow:
            ok, checks = finance.reconciliation(uow, business_date=chosen_day)
        return render(request, "finance/reconciliation.html", session=session, day=chosen_day, ok=ok, checks=checks)

    return guarded(request, run, roles=BOOKS)
