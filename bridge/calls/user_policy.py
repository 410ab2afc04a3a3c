"""What the call manager asks about a Matrix user beyond "may they use the bridge": which trunk their calls take
(their own SIP account or the shared one: calls/accounts.py), whom an INVITE to an account's Contact rings, and
their dial rules (call/dial_permissions.py bound to bridge.permissions' levels)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..call.dial_permissions import DialPermissions
from .outbound import TrunkTarget


class AccountRouting(Protocol):
    """calls/accounts.AccountManager, structurally."""

    def outbound_trunk(self, mxid: str) -> TrunkTarget | str:
        """The user's trunk, or a sentence saying why they may not call (no account, shared trunk not allowed)."""
        ...

    def uses_account(self, mxid: str) -> bool: ...

    def callee_for_contact(self, user_part: str | None) -> str | None: ...

    def inbound_source_ok(self, mxid: str, host: str) -> bool: ...


class UserDialRules:
    """bridge.dial_permissions for one user, their permission level looked up at the time of the call."""

    def __init__(self, rules: DialPermissions, level: Callable[[str], str]) -> None:
        self.rules = rules
        self.level = level

    def problem(self, mxid: str, number: str) -> str | None:
        return self.rules.check(mxid, self.level(mxid), number)

    def concurrent_calls(self, mxid: str) -> int:
        return self.rules.concurrent_calls(mxid, self.level(mxid))
