"""Per-user SIP accounts: the interface between the account service (calls/accounts.py) and its front ends
(the bot's commands and the provisioning API in matrix/).

Fixed so the two sides can be built apart: the service logs users in, keeps their REGISTER bindings alive,
routes their calls; front ends only ask it questions and tell the user what it says.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

REG_STATES = ("unregistered", "registering", "registered", "failed", "unregistering")


@dataclass(frozen=True)
class LoginRequest:
    mxid: str
    uri: str
    """``sip:user@domain[:port]``, ``sips:...`` or plain ``user@domain``."""
    password: str = field(repr=False)  # never in a log line through a repr
    auth_username: str | None = None
    """Digest username when it differs from the URI's user part."""
    outbound_proxy: str | None = None
    """``sip:host[:port]`` to send everything through; None = the URI's domain."""
    transport: str | None = None
    """udp | tcp | tls; None = udp (tls for sips: URIs)."""


@dataclass(frozen=True)
class AccountStatus:
    mxid: str
    aor: str
    """The account's address of record, e.g. ``sip:alice@pbx.example``."""
    registrar: str
    transport: str
    outbound_proxy: str | None
    state: str
    """One of REG_STATES."""
    registration_enabled: bool
    """False after ``unregister`` (the account is kept, calls from the user still use it)."""
    expires_at: float | None
    """Unix time the current binding expires; None when not registered."""
    last_error: str | None
    """Human-readable reason of the last failure (e.g. "403 Forbidden", "timeout"), None after a success."""
    number: str | None
    """E.164 digits the account's user part stands for, if it is a number (shown as caller ID)."""


class LoginError(Exception):
    """Login failed; ``str(error)`` is a sentence fit to show the user. Nothing is stored."""

    def __init__(self, message: str, *, code: str = "M_FORBIDDEN") -> None:
        super().__init__(message)
        self.code = code
        """Machine-readable: M_FORBIDDEN (credentials refused), M_BAD_JSON (input), M_NOT_PERMITTED
        (permission level), SIP_UNREACHABLE (registrar did not answer), M_UNKNOWN."""


class AccountService(Protocol):
    async def login(self, request: LoginRequest) -> AccountStatus:
        """Store (encrypted) and register the account, waiting for the first REGISTER outcome (bounded, about
        35 s). Raises LoginError if the registrar refuses the credentials or cannot be reached; nothing is kept
        then. Replaces any previous account of the user."""
        ...

    async def logout(self, mxid: str) -> bool:
        """Unregister (Expires: 0) and delete the account. False if the user had none."""
        ...

    def status(self, mxid: str) -> AccountStatus | None: ...

    async def register(self, mxid: str) -> AccountStatus:
        """Re-enable and (re)register now. KeyError if the user has no account."""
        ...

    async def unregister(self, mxid: str) -> AccountStatus:
        """Remove the binding but keep the account (outbound calls still use it). KeyError if none."""
        ...


class AccountNotifier(Protocol):
    """How the service tells a user about their registration (a notice in their management room)."""

    async def registration_changed(self, mxid: str, status: AccountStatus, *, recovered: bool) -> None:
        """Called once when registration starts failing (``recovered=False``) and once when it works again
        (``recovered=True``); never on every refresh."""
        ...
