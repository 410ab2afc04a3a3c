"""Client registration (RFC 3261 section 10) with digest, refresh before expiry, 423 and backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from bridge.sip.digest import Credentials
from bridge.sip.errors import SipTimeout, SipTransportError
from bridge.sip.ids import new_tag
from bridge.sip.logs import call_log
from bridge.sip.message import NameAddr, Response
from bridge.sip.ua import UserAgent

logger = logging.getLogger(__name__)


class RegistrationError(Exception):
    """The registrar refused (final non-2xx) or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class Registration:
    """Keeps one binding alive. `state` is one of "unregistered", "registering", "registered",
    "failed", "unregistering"; `on_state(state)` is called on every change."""

    def __init__(self, ua: UserAgent, *, registrar: str, aor: str, credentials: Credentials | None,
                 expires: int = 3600, outbound_proxy: str | None = None, contact_user: str | None = None,
                 refresh_fraction: float = 0.6, retry_base: float = 5.0, retry_cap: float = 300.0) -> None:
        self._ua = ua
        self.registrar = registrar
        self.aor = aor
        self._credentials = credentials
        self.expires = expires
        self.outbound_proxy = outbound_proxy
        self.contact_user = contact_user or (NameAddr.parse(aor).uri.user or None)
        self.refresh_fraction = refresh_fraction
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        self.state = "unregistered"
        self.on_state: Callable[[str], None] | None = None
        self.granted_expires: int | None = None
        self.successes = 0  # successful REGISTER transactions (initial + refreshes)
        self.last_response: Response | None = None
        self.last_error: str | None = None  # "403 Forbidden", "timeout", ...; None after a success
        self.last_status: int | None = None  # SIP status of the last failure, None for a timeout/transport error
        self.expires_at: float | None = None  # unix time the current binding expires
        self._call_id = ua.new_call_id()
        self._from_tag = new_tag()
        self._cseq = 0
        self._requested = expires
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self.log = call_log(logger, self._call_id, aor=aor)

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        self.log.info("registration %s: %s", self.aor, state)
        if self.on_state is not None:
            try:
                self.on_state(state)
            except Exception:
                self.log.exception("on_state callback failed")

    async def start(self, *, retry: bool = True) -> None:
        """Register once now (raises nothing; see `state`), then keep refreshing in the background.
        ``retry=False`` (a login trying credentials): after a failed first attempt nothing more is sent."""
        delay = await self._attempt(retry=retry)
        if not retry and self.state != "registered":
            return
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(delay), name="sip registration")

    async def stop(self, *, unregister: bool = True) -> None:
        """Cancel the refresh task and remove the binding (Expires: 0); ``unregister=False`` keeps the binding
        (it then lapses at its expiry unless a new Registration with the same Contact refreshes it)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if not unregister:
            return
        if self.state == "registered" or (self.expires_at is not None and self.expires_at > time.time()):
            self._set_state("unregistering")
            try:
                await self._register(0)
            except (RegistrationError, SipTimeout, SipTransportError) as exc:
                self.log.info("unregister failed: %s", exc)
        self.expires_at = None
        self._set_state("unregistered")

    async def _refresh_loop(self, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)
            delay = await self._attempt()

    async def _attempt(self, *, retry: bool = True) -> float:
        """One registration; returns how long to wait before the next one."""
        if self.state != "registered":
            self._set_state("registering")
        try:
            granted = await self._register(self._requested)
        except (RegistrationError, SipTimeout, SipTransportError) as exc:
            self.last_error = "timeout" if isinstance(exc, SipTimeout) else str(exc) or type(exc).__name__
            self.last_status = exc.status if isinstance(exc, RegistrationError) else None
            if self.expires_at is not None and self.expires_at <= time.time():
                self.expires_at = None
            self._failures += 1
            backoff = min(self.retry_cap, self.retry_base * 2 ** (self._failures - 1))
            backoff *= random.uniform(0.8, 1.0)  # spread many bridges restarting at once
            if retry:
                self.log.warning("registration of %s failed (%s); retrying in %.1f s", self.aor, exc, backoff)
            else:
                self.log.info("registration of %s failed (%s); not retrying", self.aor, exc)
            self._set_state("failed")
            return backoff
        self._failures = 0
        self.successes += 1
        self.granted_expires = granted
        self.expires_at = time.time() + granted
        self.last_error = self.last_status = None
        self._set_state("registered")
        return max(1.0, granted * self.refresh_fraction)

    async def _register(self, expires: int) -> int:
        """Send REGISTER (digest handled by the UA); returns the granted expiry. Follows 423 once."""
        for _ in range(2):
            self._cseq += 1
            contact = self._ua.contact(self._transport(), None, self.contact_user)
            request, transport, addr = self._ua.build_request(
                "REGISTER", self.registrar, from_header=f"<{self.aor}>;tag={self._from_tag}",
                to_header=f"<{self.aor}>", call_id=self._call_id, cseq=self._cseq,
                outbound_proxy=self.outbound_proxy, with_contact=False,
                headers=(("Contact", f"{contact};expires={expires}"), ("Expires", str(expires))))
            response, sent = await self._ua.send_request(request, transport, addr, self._credentials)
            self._cseq = sent.cseq[0]
            self.last_response = response
            if response.status == 423 and expires != 0:  # never turn an unregister into a register
                min_expires = response.headers.get("Min-Expires")
                if min_expires and min_expires.strip().isdigit() and int(min_expires.strip()) > expires:
                    self._requested = expires = int(min_expires.strip())
                    self.log.info("registrar wants Min-Expires %d", expires)
                    continue
            if not 200 <= response.status < 300:
                raise RegistrationError(f"{response.status} {response.reason}", response.status)
            return self._granted(response, expires)
        raise RegistrationError("registrar kept answering 423", 423)

    def _transport(self) -> str:
        from bridge.sip.uri import SipUri

        return SipUri.parse(self.outbound_proxy or self.registrar).transport

    def _granted(self, response: Response, requested: int) -> int:
        """The expiry the registrar granted our contact (Contact ;expires, else Expires, else requested)."""
        our = self._ua.contact(self._transport(), None, self.contact_user)
        our_uri = NameAddr.parse(our).uri
        for value in response.headers.get_all("Contact"):
            try:
                na = NameAddr.parse(value)
            except ValueError:
                continue
            if na.uri.host == our_uri.host and na.uri.port == our_uri.port:
                exp = na.params.get("expires")
                if exp and exp.isdigit():
                    return int(exp)
        header = response.headers.get("Expires")
        if header and header.strip().isdigit():
            return int(header.strip())
        return requested
