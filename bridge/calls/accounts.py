"""Per-user SIP accounts (account_api.AccountService): store them encrypted, keep each one's REGISTER binding alive,
and tell the call manager which trunk a user's calls use and which user an INVITE to a Contact token rings.

Every account registers the Contact ``sip:<token>@<bridge>`` with a random 128-bit token of its own, so an INVITE
the registrar forwards to that Contact names exactly one Matrix user (no static route needed). Passwords are held
decrypted only in memory (digest needs them for every challenge) and never logged; ``Credentials`` hides the
password from its repr.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from ..call.account_record import AccountRecord
from ..call.dialplan import normalize_number
from ..config import DialplanConfig
from ..sip.digest import Credentials
from ..sip.registration import Registration
from ..sip.ua import UserAgent
from ..sip.uri import SipUri, SipUriError
from .account_api import AccountNotifier, AccountService, AccountStatus, LoginError, LoginRequest
from .outbound import TrunkTarget

log = logging.getLogger(__name__)

TRANSPORTS = ("udp", "tcp", "tls")
NO_KEY = ("Per-user SIP accounts are not enabled on this bridge: the admin has to set bridge.accounts.encryption_key "
          "(python -m bridge -c CONFIG --generate-account-key).")


class AccountStore(Protocol):
    """The sip_account table (db/sip_account.py), structurally."""

    async def get(self, mxid: str) -> AccountRecord | None: ...
    async def all(self) -> list[AccountRecord]: ...
    async def put(self, account: AccountRecord) -> AccountRecord: ...
    async def set_enabled(self, mxid: str, enabled: bool) -> None: ...
    async def set_password_enc(self, mxid: str, password_enc: str) -> None: ...
    async def delete(self, mxid: str) -> bool: ...


class Cipher(Protocol):
    """db/credential_cipher.CredentialCipher, structurally: ``decrypt`` raises on a value no key opens."""

    def encrypt(self, plaintext: str, associated: str) -> str: ...
    def decrypt(self, stored: str, associated: str) -> str: ...
    def is_current(self, stored: str) -> bool: ...


@dataclass(frozen=True)
class AccountSettings:
    shared_trunk: str = "user"  # who may use sip.trunk without an account: user | admin | none
    register_expires: int = 600
    login_timeout_s: float = 35.0
    retry_base_s: float = 5.0  # registration back-off after a failure (doubles up to retry_cap_s)
    retry_cap_s: float = 300.0


@dataclass
class _Account:
    record: AccountRecord
    password: str
    registration: Registration | None = None
    failing_notified: bool = False  # the user was told it fails; tell them once when it works again
    binding_sources: frozenset[str] = frozenset()  # IPs the registrar answered from: where its INVITEs come from


class AccountManager:
    """account_api.AccountService plus what the call manager asks (calls/manager.py ``accounts``).

    ``cipher`` None means no encryption key is configured: logins are refused and stored accounts are not loaded.
    ``permission_level(mxid)`` is bridge.permissions' level ("none" | "user" | "admin"). ``notifier`` may be set
    after construction (the Matrix side's management-room notices)."""

    def __init__(self, *, ua_ref: Callable[[], UserAgent], store: AccountStore, cipher: Cipher | None,
                 settings: AccountSettings, shared_trunk: TrunkTarget, dialplan: DialplanConfig,
                 permission_level: Callable[[str], str], notifier: AccountNotifier | None = None) -> None:
        self._ua = ua_ref
        self.store = store
        self.cipher = cipher
        self.settings = settings
        self.shared_trunk = shared_trunk
        self.dialplan = dialplan
        self.permission_level = permission_level
        self.notifier = notifier
        self._accounts: dict[str, _Account] = {}
        self._by_token: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the stored accounts (re-encrypting rows written with a previous key) and register the enabled
        ones in the background: a registrar that does not answer must not hold up the bridge's start."""
        records = await self.store.all()
        if records and self.cipher is None:
            log.error("%d stored SIP account(s) are not used: bridge.accounts.encryption_key is not set", len(records))
            return
        for record in records:
            assert self.cipher is not None
            try:
                password = self.cipher.decrypt(record.password_enc, record.mxid)
            except Exception as exc:
                log.error("SIP account of %s cannot be decrypted (%s); the user must log in again", record.mxid, exc)
                continue
            if not self.cipher.is_current(record.password_enc):
                await self.store.set_password_enc(record.mxid, self.cipher.encrypt(password, record.mxid))
                log.info("SIP account of %s re-encrypted with the current key", record.mxid)
            account = _Account(record, password)
            self._accounts[record.mxid] = account
            self._by_token[record.contact_token] = record.mxid
            if record.registration_enabled:
                self._spawn(self._start_registration(account), f"register-{record.mxid}")
        if self._accounts:
            log.info("loaded %d SIP account(s)", len(self._accounts))

    async def stop(self) -> None:
        """Stop refreshing, but keep the bindings: a restart (the usual reason for a stop) registers the same
        Contact again within seconds, and calls to the users keep arriving meanwhile; unregistering would make
        the registrar answer 404/480 to callers during every restart."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for account in self._accounts.values():
            if account.registration is not None:
                await account.registration.stop(unregister=False)

    def _spawn(self, coro: object, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _lock(self, mxid: str) -> asyncio.Lock:
        return self._locks.setdefault(mxid, asyncio.Lock())

    # ------------------------------------------------------------------ AccountService
    async def login(self, request: LoginRequest) -> AccountStatus:
        if self.permission_level(request.mxid) not in ("user", "admin"):
            raise LoginError("You are not allowed to use this bridge.", code="M_NOT_PERMITTED")
        if self.cipher is None:
            raise LoginError(NO_KEY, code="M_UNKNOWN")
        record = self._new_record(request)
        async with self._lock(request.mxid):
            account = _Account(record, request.password)
            registration = self._registration(account)
            try:
                # no retry: a refused login is answered now, not retried in the background
                await asyncio.wait_for(registration.start(retry=False), self.settings.login_timeout_s)
            except TimeoutError:
                registration.last_error = "timeout"
            except Exception:
                log.exception("login of %s for %s: registration could not start", record.aor, request.mxid)
                await registration.stop(unregister=False)
                raise LoginError("The login failed because of an error in the bridge.", code="M_UNKNOWN") from None
            if registration.state != "registered":
                await registration.stop(unregister=False)
                raise _login_error(record.aor, registration)
            account.registration = registration
            account.binding_sources = _sources(registration)
            old = self._accounts.get(request.mxid)
            try:
                stored = await self.store.put(replace(record, password_enc=self.cipher.encrypt(request.password,
                                                                                                 request.mxid)))
            except Exception:
                log.exception("login of %s for %s: the account could not be stored", record.aor, request.mxid)
                await registration.stop()  # nothing kept: not the binding either
                raise LoginError("The login failed: the bridge could not store the account.",
                                 code="M_UNKNOWN") from None
            account.record = stored
            self._install(account)
            if old is not None:
                self._by_token.pop(old.record.contact_token, None)
                if old.registration is not None:
                    await old.registration.stop()  # the old account's binding goes; it is replaced
        log.info("SIP account %s logged in for %s", record.aor, request.mxid)
        if not self.listens_on(record.transport):
            log.warning("SIP account %s of %s uses %s but the bridge has no sip.listen entry for it: its Contact names "
                        "another listener, so calls to the account may not reach the bridge", record.aor,
                        request.mxid, record.transport)
        return self._status(account)

    def listens_on(self, transport: str) -> bool:
        """Whether the bridge has a listener for ``transport``: an account's Contact (where the registrar sends its
        calls) names one; without it the Contact falls back to the UDP listener's address."""
        return self._ua().transport.has_transport(transport)

    async def logout(self, mxid: str) -> bool:
        async with self._lock(mxid):
            account = self._accounts.pop(mxid, None)
            deleted = await self.store.delete(mxid)
            if account is None:
                return deleted
            self._by_token.pop(account.record.contact_token, None)
            if account.registration is not None:
                await account.registration.stop()
        log.info("SIP account %s logged out for %s", account.record.aor, mxid)
        return True

    def status(self, mxid: str) -> AccountStatus | None:
        account = self._accounts.get(mxid)
        return self._status(account) if account is not None else None

    async def register(self, mxid: str) -> AccountStatus:
        async with self._lock(mxid):
            account = self._accounts[mxid]
            if not account.record.registration_enabled:
                await self.store.set_enabled(mxid, True)
                account.record = replace(account.record, registration_enabled=True)
            if account.registration is not None:
                await account.registration.stop(unregister=False)
            await self._start_registration(account, bounded=True)
        return self._status(account)

    async def unregister(self, mxid: str) -> AccountStatus:
        async with self._lock(mxid):
            account = self._accounts[mxid]
            await self.store.set_enabled(mxid, False)
            account.record = replace(account.record, registration_enabled=False)
            if account.registration is not None:
                await account.registration.stop()
            account.failing_notified = False
        return self._status(account)

    # ------------------------------------------------------------------ for the call manager
    def outbound_trunk(self, mxid: str) -> TrunkTarget | str:
        """Where ``mxid``'s calls go: their account, else the shared trunk if bridge.accounts.shared_trunk lets
        them; else a sentence saying why not (the call is refused with it)."""
        account = self._accounts.get(mxid)
        if account is not None:
            return self._trunk(account)
        mode = self.settings.shared_trunk
        level = self.permission_level(mxid)
        if mode == "user" or (mode == "admin" and level == "admin"):
            return self.shared_trunk
        return ("You have no SIP account logged in, and this bridge's shared phone line is "
                f"{'for admins only' if mode == 'admin' else 'not available'}. Log in with your own SIP account "
                "first (send `help` to the bridge bot).")

    def uses_account(self, mxid: str) -> bool:
        return mxid in self._accounts

    def callee_for_contact(self, user_part: str | None) -> str | None:
        """The Matrix user whose account registered Contact ``user_part``, if any."""
        if not user_part:
            return None
        mxid = self._by_token.get(user_part)
        account = self._accounts.get(mxid) if mxid else None
        return mxid if account is not None and account.record.registration_enabled else None

    def inbound_source_ok(self, mxid: str, host: str) -> bool:
        """INVITEs to an account's Contact are taken from where its registrar answered."""
        account = self._accounts.get(mxid)
        return account is not None and host in account.binding_sources

    # ------------------------------------------------------------------ internals
    def _new_record(self, request: LoginRequest) -> AccountRecord:
        raw = request.uri.strip()
        if not raw.lower().startswith(("sip:", "sips:")):
            raw = "sip:" + raw
        try:
            uri = SipUri.parse(raw)
        except SipUriError as exc:
            raise LoginError(f"{request.uri!r} is not a SIP address (e.g. sip:alice@pbx.example): {exc}",
                             code="M_BAD_JSON") from None
        if not uri.user or uri.scheme not in ("sip", "sips"):
            raise LoginError(f"{request.uri!r} has no user part (e.g. sip:alice@pbx.example)", code="M_BAD_JSON")
        transport = (request.transport or ("tls" if uri.scheme == "sips" else uri.params.get("transport") or "udp"))
        transport = transport.lower()
        if transport not in TRANSPORTS:
            raise LoginError(f"transport {request.transport!r} is not one of udp, tcp, tls", code="M_BAD_JSON")
        proxy = request.outbound_proxy.strip() if request.outbound_proxy else None
        if proxy:
            if not proxy.lower().startswith(("sip:", "sips:")):
                proxy = "sip:" + proxy
            try:
                SipUri.parse(proxy)
            except SipUriError as exc:
                raise LoginError(f"outbound proxy {request.outbound_proxy!r} is not a SIP URI: {exc}",
                                 code="M_BAD_JSON") from None
        if not request.password:
            raise LoginError("The password is empty.", code="M_BAD_JSON")
        hostport = uri.host if uri.port is None else f"{uri.host}:{uri.port}"
        if ":" in uri.host and not uri.host.startswith("["):
            hostport = f"[{uri.host}]" if uri.port is None else f"[{uri.host}]:{uri.port}"
        aor = f"{uri.scheme}:{uri.user}@{hostport}"
        now = int(time.time() * 1000)
        return AccountRecord(mxid=request.mxid, aor=aor, auth_username=request.auth_username or None,
                             password_enc="", outbound_proxy=proxy, transport=transport, registration_enabled=True,
                             contact_token=secrets.token_hex(16), created_at=now, updated_at=now)

    def _next_hop(self, record: AccountRecord) -> str:
        """The URI every request of the account is sent to: its outbound proxy, else its domain, with the
        account's transport."""
        uri = SipUri.parse(record.outbound_proxy or record.aor)
        hop = SipUri("sips" if uri.scheme == "sips" else "sip", None, None, uri.host, uri.port, {}, {})
        if record.transport != "udp" and hop.scheme != "sips":
            hop.params["transport"] = record.transport
        return str(hop)

    def _trunk(self, account: _Account) -> TrunkTarget:
        domain = account.record.aor.split("@", 1)[1]
        return TrunkTarget(proxy=self._next_hop(account.record), domain=domain, from_uri=account.record.aor,
                           from_display=None, credentials=self._credentials(account))

    @staticmethod
    def _credentials(account: _Account) -> Credentials:
        user = account.record.auth_username or SipUri.parse(account.record.aor).user or ""
        return Credentials(user, account.password)

    def _registration(self, account: _Account) -> Registration:
        record = account.record
        domain = record.aor.split("@", 1)[1]
        scheme = record.aor.split(":", 1)[0]
        registration = Registration(
            self._ua(), registrar=f"{scheme}:{domain}", aor=record.aor, credentials=self._credentials(account),
            expires=self.settings.register_expires, outbound_proxy=self._next_hop(record),
            contact_user=record.contact_token, retry_base=self.settings.retry_base_s,
            retry_cap=self.settings.retry_cap_s)
        return registration

    def _install(self, account: _Account) -> None:
        mxid = account.record.mxid
        self._accounts[mxid] = account
        self._by_token[account.record.contact_token] = mxid
        if account.registration is not None:
            reg = account.registration
            reg.on_state = lambda state: self._on_state(account, reg, state)

    async def _start_registration(self, account: _Account, *, bounded: bool = False) -> None:
        registration = self._registration(account)
        account.registration = registration
        self._install(account)
        if bounded:
            try:
                await asyncio.wait_for(registration.start(), self.settings.login_timeout_s)
            except TimeoutError:
                registration.last_error = "timeout"
                # keep trying in the background, as at start
                self._spawn(self._retry_later(account, registration), f"register-{account.record.mxid}")
                self._on_state(account, registration, "failed")
        else:
            await registration.start()

    async def _retry_later(self, account: _Account, registration: Registration) -> None:
        await asyncio.sleep(self.settings.retry_base_s)
        if account.registration is registration and account.record.registration_enabled:
            await self._start_registration(account)

    def _on_state(self, account: _Account, registration: Registration, state: str) -> None:
        """Notify the user once when their registration starts failing and once when it works again."""
        if account.registration is not registration or self._accounts.get(account.record.mxid) is not account:
            return
        if state == "registered":
            account.binding_sources = _sources(registration) | account.binding_sources
            if account.failing_notified:
                account.failing_notified = False
                self._notify(account, recovered=True)
        elif state == "failed" and not account.failing_notified:
            account.failing_notified = True
            log.warning("SIP registration of %s for %s is failing: %s", account.record.aor, account.record.mxid,
                        registration.last_error)
            self._notify(account, recovered=False)

    def _notify(self, account: _Account, *, recovered: bool) -> None:
        notifier = self.notifier
        if notifier is None:
            return
        status = self._status(account)

        async def send() -> None:
            try:
                await notifier.registration_changed(account.record.mxid, status, recovered=recovered)
            except Exception:
                log.exception("could not notify %s about their SIP registration", account.record.mxid)

        self._spawn(send(), f"notify-{account.record.mxid}")

    def _status(self, account: _Account) -> AccountStatus:
        record = account.record
        reg = account.registration
        state = reg.state if reg is not None else "unregistered"
        user = SipUri.parse(record.aor).user or ""
        return AccountStatus(
            mxid=record.mxid, aor=record.aor, registrar=record.aor.split(":", 1)[0] + ":" + record.aor.split("@", 1)[1],
            transport=record.transport, outbound_proxy=record.outbound_proxy, state=state,
            registration_enabled=record.registration_enabled,
            expires_at=reg.expires_at if reg is not None and state == "registered" else None,
            last_error=reg.last_error if reg is not None else None,
            number=normalize_number(user, self.dialplan) if user.lstrip("+").isdigit() else None,
        )


def _sources(registration: Registration) -> frozenset[str]:
    resp = registration.last_response
    return frozenset({resp.source[0]}) if resp is not None and resp.source else frozenset()


def _login_error(aor: str, registration: Registration) -> LoginError:
    reason = registration.last_error or "no answer"
    status = registration.last_status
    if status in (401, 403, 407):
        return LoginError(f"The registrar refused the login for {aor} ({reason}): check the user name and password.",
                          code="M_FORBIDDEN")
    if status is None:
        return LoginError(f"The registrar for {aor} could not be reached ({reason}).", code="SIP_UNREACHABLE")
    return LoginError(f"Registering {aor} failed ({reason}).", code="M_UNKNOWN")


if TYPE_CHECKING:
    _conforms: AccountService = AccountManager.__new__(AccountManager)  # mypy checks the interface is met
