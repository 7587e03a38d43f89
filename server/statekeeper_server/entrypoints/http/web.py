"""The inspector's HTTP server (aiohttp): sessions and login, CSRF and security headers, error
pages, /metrics and the static assets. The pages themselves are in pages.py and feed.py."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import grpc
from aiohttp import web

from statekeeper.v1 import admin_pb2
from statekeeper_server.entrypoints.http import render
from statekeeper_server.entrypoints.http.api import Api, ApiError
from statekeeper_server.entrypoints.http.lag import LagSampler
from statekeeper_server.entrypoints.http.sessions import COOKIE, Session, Sessions

log = logging.getLogger("statekeeper.inspector")

STATIC = Path(__file__).parent / "static"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_STATUS = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
}


@dataclass(frozen=True)
class InspectorSettings:
    listen: str
    grpc_target: str  # the server's private port, "unix:/path"
    auth_required: bool  # the server has tokens: ask for one
    sampler_token: str = ""  # the lag sampler's own read token (with auth)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    max_message_bytes: int = 16 * 1024 * 1024
    metrics: Callable[[], bytes] | None = None


def ssl_context(settings: InspectorSettings) -> ssl.SSLContext | None:
    """HTTPS with the gRPC server's certificate; with a client CA, client certificates too."""
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    if settings.tls_client_ca_file:
        context.load_verify_locations(settings.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


# -- what handlers use ---------------------------------------------------------------------------


def session_of(request: web.Request) -> Session:
    session: Session = request["session"]
    return session


async def call(request: web.Request, method: Any, message: Any) -> Any:
    """A unary gRPC call with the user's token."""
    api: Api = request.app["api"]
    return await api.call(method, message, session_of(request).token)


def page(request: web.Request, template: str, status: int = 200, **context: Any) -> web.Response:
    env = request.app["jinja"]
    session = session_of(request)
    flashes, session.flashes = session.flashes, []
    html = env.get_template(template).render(
        csrf=session.csrf,
        logged_in=session.token is not None,
        auth_required=request.app["settings"].auth_required,
        flashes=flashes,
        nav=context.pop("nav", ""),
        request_args={k: request.query.getall(k) for k in request.query},
        **context,
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8")


def flash(request: web.Request, kind: str, text: str) -> None:
    session_of(request).flashes.append((kind, text))


def redirect(location: str) -> web.Response:
    """303 See Other to a location on this site (anything else goes to /)."""
    return web.Response(status=303, headers={"Location": location if _local(location) else "/"})


def _local(location: str) -> bool:
    return location.startswith("/") and not location.startswith("//") and "\\" not in location


# -- middlewares ---------------------------------------------------------------------------------


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as e:
        response = e
    h = response.headers
    h.setdefault("Content-Security-Policy", CSP)
    h.setdefault("X-Content-Type-Options", "nosniff")
    h.setdefault("X-Frame-Options", "DENY")
    h.setdefault("Referrer-Policy", "same-origin")
    if not request.path.startswith("/static/"):
        h.setdefault("Cache-Control", "no-store")
    if isinstance(response, web.HTTPException):
        raise response
    return response


_OPEN = ("/static/", "/metrics", "/favicon.ico")


@web.middleware
async def sessions(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every page gets a session (anonymous until login); with tokens, pages need a login."""
    if request.path.startswith(_OPEN):
        return await handler(request)
    store: Sessions = request.app["sessions"]
    session = store.get(request.cookies.get(COOKIE))
    created = session is None
    if session is None:
        session = store.new()
    request["session"] = session
    settings: InspectorSettings = request.app["settings"]
    if request.method == "POST":
        _check_post(request, session)
    if settings.auth_required and session.token is None and request.path not in ("/login", "/logout"):
        if request.method == "GET" and request.path != "/events/stream":
            response: web.StreamResponse = redirect("/login?" + urlencode({"next": request.path_qs}))
        else:
            response = web.Response(status=401, text="log in first: this server requires a token")
    else:
        response = await handler(request)
    if (created or request.get("new_session")) and not response.prepared:
        set_cookie(request, response, request["session"])
    return response


def set_cookie(request: web.Request, response: web.StreamResponse, session: Session) -> None:
    response.set_cookie(
        COOKIE,
        session.id,
        httponly=True,
        samesite="Strict",
        secure=request.app["tls"],
        path="/",
    )


def _check_post(request: web.Request, session: Session) -> None:
    """A form post must come from this site: its Origin (when sent) is ours, and its CSRF
    field (checked by the handler via form_of) matches the session's secret."""
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        raise web.HTTPForbidden(text="cross-origin form posts are refused")


async def form_of(request: web.Request) -> Any:
    form = await request.post()
    given = form.get("csrf")
    if not isinstance(given, str) or not session_of(request).csrf_ok(given):
        raise web.HTTPForbidden(text="the form's CSRF token is missing or stale: reload the page and retry")
    return form


@web.middleware
async def api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A refused gRPC call becomes a page saying what the server said."""
    try:
        return await handler(request)
    except ApiError as e:
        if e.code is grpc.StatusCode.UNAUTHENTICATED and request.method == "GET":
            store: Sessions = request.app["sessions"]
            store.drop(session_of(request))
            return redirect("/login?" + urlencode({"next": request.path_qs}))
        status = _STATUS.get(e.code, 502)
        return page(request, "error.html", status=status, error=e, nav="")


# -- login, logout, metrics --------------------------------------------------------------------


async def login_form(request: web.Request) -> web.StreamResponse:
    return page(request, "login.html", next=request.query.get("next", "/"), error="")


async def login(request: web.Request) -> web.StreamResponse:
    form = await form_of(request)
    token = str(form.get("token", "")).strip()
    target = str(form.get("next", "/"))
    api: Api = request.app["api"]
    try:
        await api.call(api.admin.GetServerInfo, admin_pb2.GetServerInfoRequest(), token or None)
    except ApiError as e:
        message = "this token is not valid" if e.code is grpc.StatusCode.UNAUTHENTICATED else str(e)
        return page(request, "login.html", status=401, next=target, error=message)
    store: Sessions = request.app["sessions"]
    store.drop(session_of(request))
    request["session"] = store.new(token)  # a new id at login: no session fixation
    request["new_session"] = True
    return redirect(target)


async def logout(request: web.Request) -> web.StreamResponse:
    await form_of(request)
    store: Sessions = request.app["sessions"]
    store.drop(session_of(request))
    request["session"] = store.new()
    request["new_session"] = True
    return redirect("/login" if request.app["settings"].auth_required else "/")


async def metrics(request: web.Request) -> web.StreamResponse:
    """Prometheus metrics; with tokens, for a read token (Authorization: Bearer) or a login."""
    settings: InspectorSettings = request.app["settings"]
    if settings.metrics is None:
        raise web.HTTPNotFound()
    if settings.auth_required:
        token = None
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            token = value.strip()
        else:
            store: Sessions = request.app["sessions"]
            session = store.get(request.cookies.get(COOKIE))
            token = session.token if session is not None else None
        if token is None:
            raise web.HTTPUnauthorized(
                headers={"WWW-Authenticate": "Bearer"}, text="a read token is required"
            )
        api: Api = request.app["api"]
        try:
            await api.call(api.admin.GetServerInfo, admin_pb2.GetServerInfoRequest(), token)
        except ApiError as e:
            raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"}, text=str(e)) from None
    return web.Response(body=settings.metrics(), content_type="text/plain", charset="utf-8")


# -- the server ------------------------------------------------------------------------------------


class Inspector:
    """The web inspector on its own HTTP(S) listener, a client of the server's private port."""

    def __init__(self, settings: InspectorSettings) -> None:
        from statekeeper_server.entrypoints.http import feed, pages  # the routes

        self.settings = settings
        self.api = Api(settings.grpc_target, settings.max_message_bytes)
        self.sampler = LagSampler(self.api, settings.sampler_token or None)
        self.ssl = ssl_context(settings)
        app = web.Application(middlewares=[security_headers, sessions, api_errors], client_max_size=1 << 20)
        app["settings"] = settings
        app["api"] = self.api
        app["sessions"] = Sessions()
        app["jinja"] = render.environment()
        app["sampler"] = self.sampler
        app["tls"] = self.ssl is not None
        app["feeds"] = set()
        app.router.add_get("/login", login_form)
        app.router.add_post("/login", login)
        app.router.add_post("/logout", logout)
        app.router.add_get("/metrics", metrics)
        app.router.add_static("/static/", STATIC, append_version=False)
        pages.add_routes(app.router)
        feed.add_routes(app)
        self.app = app
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self.address = ""

    async def start(self) -> None:
        host, _, port = self.settings.listen.rpartition(":")
        host = host.strip("[]") or "0.0.0.0"
        try:
            port_number = int(port)
        except ValueError:
            raise OSError(f"--http-listen must be host:port, got {self.settings.listen!r}") from None
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port_number, ssl_context=self.ssl)
        await site.start()
        sockets = self.runner.addresses
        bound = sockets[0][1] if sockets else port_number
        shown = f"[{host}]" if ":" in host else host
        self.address = f"{shown}:{bound}"
        log.info("inspector on %s://%s/", "https" if self.ssl else "http", self.address)

    def serving(self) -> None:
        """The gRPC server is up: start what calls it on its own (a call before would fail, and
        put the channel into its reconnect backoff)."""
        self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()
        for task in list(self.app["feeds"]):
            task.cancel()  # live feeds: their Watch calls end with them
        await self.runner.cleanup()
        await self.api.close()
