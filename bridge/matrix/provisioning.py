"""The provisioning API, shaped like mautrix-go bridgev2's (``<prefix>/v3/...``), for integration managers and
web front ends to log users in to their own SIP accounts.

    GET  v3/whoami                                   the bridge, the login flows, the user's login and its state
    GET  v3/login/flows                              {"flows": [{"id": "password", ...}]}
    POST v3/login/start/password                     -> {"login_id", "type": "user_input", "step_id", "user_input"}
    POST v3/login/step/{login_id}/{step_id}/user_input   {"uri", "password", ...} -> {"type": "complete", ...}
    POST v3/logout/{login_id}                        the login's ID (its SIP address) or "all"
    POST v3/register/{login_id}                      re-enable and REGISTER now (the login's ID or "all")
    POST v3/unregister/{login_id}                    remove the binding, keep the account (its calls still use it)
    GET  v3/logins                                   {"login_ids": [...]}

Every request is authorized (provisioning_auth.py), then permission-checked (``user`` and above), then handed to
the account service. Errors are ``{"errcode", "error"}`` JSON with a fitting status. Bodies are capped; the
password is never logged (nor kept once the login was handed over).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bridge.calls.account_api import AccountService, AccountStatus, LoginError, LoginRequest
from bridge.matrix.login_steps import TRANSPORTS, normalize_proxy, normalize_uri
from bridge.matrix.management_rooms import ManagementRooms
from bridge.matrix.permissions import Permissions
from bridge.matrix.provisioning_auth import AuthFailed, ProvisioningAuth

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 16 * 1024
LOGIN_TTL_S = 600.0  # a started login not finished within this is forgotten
MAX_LOGINS = 1000
FLOW_ID = "password"
STEP_ID = "net.matrix-sip-bridge.credentials"
COMPLETE_STEP_ID = "net.matrix-sip-bridge.complete"
FLOWS = [{"id": FLOW_ID, "name": "SIP account",
          "description": "Log in with the SIP address and password of your own SIP account (PBX or provider)"}]
FIELDS = [
    {"type": "username", "id": "uri", "name": "SIP address",
     "description": "sip:alice@pbx.example.com or alice@pbx.example.com"},
    {"type": "password", "id": "password", "name": "Password"},
    {"type": "username", "id": "auth_username", "name": "Authentication user (optional)",
     "description": "Only if it differs from the user part of the address"},
    {"type": "domain", "id": "outbound_proxy", "name": "Outbound proxy (optional)",
     "description": "e.g. sip:proxy.example.com:5060; empty: the address's domain"},
    {"type": "select", "id": "transport", "name": "Transport (optional)", "options": ["", *TRANSPORTS],
     "description": "udp, tcp or tls; empty: udp (tls for sips: addresses)"},
]
LOGIN_ERROR_STATUS = {"M_FORBIDDEN": 403, "M_NOT_PERMITTED": 403, "M_BAD_JSON": 400, "SIP_UNREACHABLE": 502}
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}
BRIDGE_STATES = {"registered": "CONNECTED", "registering": "CONNECTING", "unregistering": "CONNECTING",
                 "failed": "TRANSIENT_DISCONNECT", "unregistered": "UNCONFIGURED"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
UserHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status, headers=CORS_HEADERS)


@dataclass
class _Login:
    login_id: str
    mxid: str
    expires_at: float


def login_state(status: AccountStatus) -> dict[str, Any]:
    """A bridgev2-style state for the login, plus the SIP details."""
    event = BRIDGE_STATES.get(status.state, "UNKNOWN_ERROR")
    if status.state == "failed" and status.last_error and status.last_error.startswith(("401", "403")):
        event = "BAD_CREDENTIALS"
    state: dict[str, Any] = {"state_event": event, "timestamp": int(time.time())}
    if status.last_error:
        state["error"] = status.last_error
    return state


def status_json(status: AccountStatus) -> dict[str, Any]:
    return {
        "aor": status.aor, "registrar": status.registrar, "transport": status.transport,
        "outbound_proxy": status.outbound_proxy, "state": status.state,
        "registration_enabled": status.registration_enabled, "expires_at": status.expires_at,
        "last_error": status.last_error, "number": status.number,
    }


class ProvisioningAPI:
    def __init__(self, *, auth: ProvisioningAuth, permissions: Permissions, rooms: ManagementRooms | None,
                 bot_mxid: str, homeserver_domain: str, accounts: AccountService | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.auth = auth
        self.permissions = permissions
        self.rooms = rooms
        self.bot_mxid = bot_mxid
        self.homeserver_domain = homeserver_domain
        self.accounts = accounts
        self.clock = clock
        self._logins: dict[str, _Login] = {}
        self.app = self._build()

    def _build(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/v3/whoami", self._authed(self.whoami))
        app.router.add_get("/v3/login/flows", self._authed(self.flows))
        app.router.add_post("/v3/login/start/{flow_id}", self._authed(self.start))
        app.router.add_post("/v3/login/step/{login_id}/{step_id}/{step_type}", self._authed(self.step))
        app.router.add_post("/v3/logout/{login_id}", self._authed(self.logout))
        app.router.add_post("/v3/register/{login_id}", self._authed(self.register))
        app.router.add_post("/v3/unregister/{login_id}", self._authed(self.unregister))
        app.router.add_get("/v3/logins", self._authed(self.logins))
        return app

    def _authed(self, handler: UserHandler) -> Handler:
        """Authorize, check the permission level, then hand the request and its user to ``handler``."""

        async def run(request: web.Request) -> web.StreamResponse:
            if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
                raise ApiError(413, "M_TOO_LARGE", f"Request body over {MAX_BODY_BYTES} bytes")
            mxid = await self.auth.user_for(request.headers.get("Authorization"), request.query.get("user_id"))
            if not self.permissions.can_login(mxid):
                log.info("provisioning: %s may not log in (permission level %s)", mxid, self.permissions.level(mxid))
                raise ApiError(403, "M_FORBIDDEN", "You are not allowed to log in on this bridge")
            return await handler(request, mxid)

        return run

    def add_to(self, parent: web.Application, prefix: str) -> None:
        parent.add_subapp(prefix, self.app)

    # ------------------------------------------------------------------ middleware: CORS, auth, errors

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS":  # CORS preflight: browsers send it without credentials
            return web.Response(status=200, headers=CORS_HEADERS)
        try:
            response = await handler(request)
        except AuthFailed as e:
            return _error(e.status, e.errcode, str(e))
        except ApiError as e:
            return _error(e.status, e.errcode, str(e))
        except web.HTTPNotFound:
            return _error(404, "M_UNRECOGNIZED", "Unrecognized request")
        except web.HTTPMethodNotAllowed:
            return _error(405, "M_UNRECOGNIZED", "Method not allowed")
        response.headers.update(CORS_HEADERS)
        return response

    async def _body(self, request: web.Request) -> dict[str, Any]:
        data = b""
        while chunk := await request.content.read(MAX_BODY_BYTES + 1 - len(data)):
            data += chunk
            if len(data) > MAX_BODY_BYTES:
                raise ApiError(413, "M_TOO_LARGE", f"Request body over {MAX_BODY_BYTES} bytes")
        if not data.strip():
            return {}
        try:
            body = json.loads(data)
        except (ValueError, RecursionError):
            raise ApiError(400, "M_NOT_JSON", "Body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "M_BAD_JSON", "Body must be a JSON object")
        return body

    def _service(self) -> AccountService:
        if self.accounts is None:
            raise ApiError(501, "M_UNRECOGNIZED", "Personal SIP accounts are not enabled on this bridge")
        return self.accounts

    # ------------------------------------------------------------------ handlers

    async def whoami(self, request: web.Request, mxid: str) -> web.Response:
        status = self._service().status(mxid)
        logins = []
        if status is not None:
            logins.append({"id": status.aor, "name": status.aor, "state": login_state(status), "profile": {},
                           "sip": status_json(status)})
        room = await self.rooms.get(mxid) if self.rooms is not None else None
        body: dict[str, Any] = {
            "network": {"displayname": "SIP", "network_id": "sip"},
            "login_flows": FLOWS, "homeserver": self.homeserver_domain, "bridge_bot": self.bot_mxid,
            "command_prefix": "", "logins": logins,
        }
        if room:
            body["management_room"] = room
        return web.json_response(body)

    async def flows(self, request: web.Request, mxid: str) -> web.Response:
        return web.json_response({"flows": FLOWS})

    async def logins(self, request: web.Request, mxid: str) -> web.Response:
        status = self._service().status(mxid)
        return web.json_response({"login_ids": [status.aor] if status else []})

    async def start(self, request: web.Request, mxid: str) -> web.Response:
        self._service()
        if request.match_info["flow_id"] != FLOW_ID:
            raise ApiError(404, "M_NOT_FOUND", f"Unknown login flow; the only one is {FLOW_ID!r}")
        await self._body(request)  # read (and cap) whatever came along; nothing is needed from it
        now = self.clock()
        self._prune(now)
        for old in [k for k, v in self._logins.items() if v.mxid == mxid]:
            del self._logins[old]  # one login in progress per user: a new start replaces the old
        if len(self._logins) >= MAX_LOGINS:
            raise ApiError(429, "M_LIMIT_EXCEEDED", "Too many logins in progress; try again later")
        login = _Login(login_id=secrets.token_urlsafe(12), mxid=mxid, expires_at=now + LOGIN_TTL_S)
        self._logins[login.login_id] = login
        log.info("provisioning: login %s started for %s", login.login_id, mxid)
        return web.json_response({
            "login_id": login.login_id, "type": "user_input", "step_id": STEP_ID,
            "instructions": "Enter the SIP address and password of your SIP account.",
            "user_input": {"fields": FIELDS},
        })

    async def step(self, request: web.Request, mxid: str) -> web.Response:
        service = self._service()
        self._prune(self.clock())
        login = self._logins.get(request.match_info["login_id"])
        if login is None or login.mxid != mxid:
            raise ApiError(404, "M_NOT_FOUND", "Login not found (it may have expired: start again)")
        if request.match_info["step_id"] != STEP_ID or request.match_info["step_type"] != "user_input":
            raise ApiError(400, "M_BAD_STATE", "Step ID or type does not match")
        req = self._login_request(mxid, await self._body(request))
        try:
            status = await service.login(req)
        except LoginError as e:
            log.info("provisioning: login %s of %s failed: %s", login.login_id, mxid, e.code)
            raise ApiError(LOGIN_ERROR_STATUS.get(e.code, 500), e.code, str(e)) from None
        self._logins.pop(login.login_id, None)
        log.info("provisioning: %s logged in as %s", mxid, status.aor)
        return web.json_response({
            "login_id": login.login_id, "type": "complete", "step_id": COMPLETE_STEP_ID,
            "instructions": f"Logged in as {status.aor}", "complete": {"user_login_id": status.aor},
            "sip": status_json(status),
        })

    @staticmethod
    def _login_request(mxid: str, body: dict[str, Any]) -> LoginRequest:
        def field(name: str) -> str | None:
            value = body.get(name)
            if value is None or value == "":
                return None
            if not isinstance(value, str):
                raise ApiError(400, "M_BAD_JSON", f"{name} must be a string")
            return value

        raw_uri, password = field("uri"), field("password")
        if raw_uri is None or password is None:
            raise ApiError(400, "M_BAD_JSON", "uri and password are required")
        uri = normalize_uri(raw_uri)
        if uri is None:
            raise ApiError(400, "M_BAD_JSON", "uri is not a SIP address (e.g. sip:alice@pbx.example.com)")
        proxy = field("outbound_proxy")
        if proxy is not None and (proxy := normalize_proxy(proxy)) is None:
            raise ApiError(400, "M_BAD_JSON", "outbound_proxy is not a SIP host (e.g. sip:proxy.example.com:5060)")
        transport = field("transport")
        if transport is not None and (transport := transport.lower()) not in TRANSPORTS:
            raise ApiError(400, "M_BAD_JSON", "transport must be udp, tcp or tls")
        return LoginRequest(mxid=mxid, uri=uri, password=password, auth_username=field("auth_username"),
                            outbound_proxy=proxy, transport=transport)

    async def logout(self, request: web.Request, mxid: str) -> web.Response:
        service = self._service()
        login_id = request.match_info["login_id"]
        status = service.status(mxid)
        if status is None or login_id not in ("all", status.aor):
            raise ApiError(404, "M_NOT_FOUND", "No such login")
        await service.logout(mxid)
        log.info("provisioning: %s logged out of %s", mxid, status.aor)
        return web.json_response({})

    async def register(self, request: web.Request, mxid: str) -> web.Response:
        """Like the bot's ``register``: 200 with the state it reached (``registered``, or ``failed`` with the
        registrar's error; a failing registration keeps retrying in the background)."""
        service, status = self._own_login(request, mxid)
        try:
            status = await service.register(mxid)
        except KeyError:  # logged out meanwhile
            raise ApiError(404, "M_NOT_FOUND", "No such login") from None
        log.info("provisioning: %s registered %s: %s", mxid, status.aor, status.state)
        return web.json_response({"state": login_state(status), "sip": status_json(status)})

    async def unregister(self, request: web.Request, mxid: str) -> web.Response:
        service, status = self._own_login(request, mxid)
        try:
            status = await service.unregister(mxid)
        except KeyError:
            raise ApiError(404, "M_NOT_FOUND", "No such login") from None
        log.info("provisioning: %s unregistered %s", mxid, status.aor)
        return web.json_response({"state": login_state(status), "sip": status_json(status)})

    def _own_login(self, request: web.Request, mxid: str) -> tuple[AccountService, AccountStatus]:
        service = self._service()
        status = service.status(mxid)
        if status is None or request.match_info["login_id"] not in ("all", status.aor):
            raise ApiError(404, "M_NOT_FOUND", "No such login")
        return service, status

    def _prune(self, now: float) -> None:
        for key in [k for k, v in self._logins.items() if v.expires_at <= now]:
            del self._logins[key]
