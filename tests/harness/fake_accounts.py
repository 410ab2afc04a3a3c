"""A small in-memory AccountService (calls/account_api.py) for front-end tests: accepts one known password per
SIP address, records every call, and can be told to hold a login (to prove it does not block other events)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field, replace

from bridge.calls.account_api import AccountStatus, LoginError, LoginRequest


@dataclass
class FakeAccounts:
    passwords: dict[str, str] = field(default_factory=dict)
    """SIP address (sip:user@host) -> the password the "registrar" accepts."""
    unreachable: set[str] = field(default_factory=set)
    """Addresses whose registrar "does not answer"."""
    accounts: dict[str, AccountStatus] = field(default_factory=dict)
    logins: list[LoginRequest] = field(default_factory=list)
    calls: list[tuple[str, str]] = field(default_factory=list)
    gate: asyncio.Event | None = None
    """When set, login() waits for it before answering."""

    async def login(self, request: LoginRequest) -> AccountStatus:
        self.logins.append(request)
        self.calls.append(("login", request.mxid))
        if self.gate is not None:
            await self.gate.wait()
        if request.uri in self.unreachable:
            raise LoginError("The registrar did not answer (timeout).", code="SIP_UNREACHABLE")
        if self.passwords.get(request.uri) != request.password:
            raise LoginError("The registrar refused the credentials (403 Forbidden).", code="M_FORBIDDEN")
        host = request.uri.split("@", 1)[1]
        status = AccountStatus(
            mxid=request.mxid, aor=request.uri, registrar=f"sip:{host}", transport=request.transport or "udp",
            outbound_proxy=request.outbound_proxy, state="registered", registration_enabled=True,
            expires_at=time.time() + 300, last_error=None, number=None,
        )
        self.accounts[request.mxid] = status
        return status

    async def logout(self, mxid: str) -> bool:
        self.calls.append(("logout", mxid))
        return self.accounts.pop(mxid, None) is not None

    def status(self, mxid: str) -> AccountStatus | None:
        return self.accounts.get(mxid)

    async def register(self, mxid: str) -> AccountStatus:
        self.calls.append(("register", mxid))
        status = replace(self.accounts[mxid], registration_enabled=True, state="registered",
                         expires_at=time.time() + 300)
        self.accounts[mxid] = status
        return status

    async def unregister(self, mxid: str) -> AccountStatus:
        self.calls.append(("unregister", mxid))
        status = replace(self.accounts[mxid], registration_enabled=False, state="unregistered", expires_at=None)
        self.accounts[mxid] = status
        return status
