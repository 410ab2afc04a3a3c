"""Per-user dial rules (bridge.dial_permissions): which numbers a Matrix user may call and how many calls they may
have in progress. Pure: the user's permission level is passed in.

Entries are keyed by a full user ID, a permission level ("user", "admin") or "*". Each field (allowed, blocked,
concurrent_calls) is taken from the most specific entry that sets it: user ID, then level, then "*", then the
global setting (dialplan.allowed / dialplan.blocked, bridge.limits.concurrent_calls).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from bridge.config import Config


class RuleLike(Protocol):
    """config.DialPermissionRule, structurally (None = inherit)."""

    @property
    def allowed(self) -> tuple[str, ...] | None: ...
    @property
    def blocked(self) -> tuple[str, ...] | None: ...
    @property
    def concurrent_calls(self) -> int | None: ...


@dataclass(frozen=True)
class EffectiveRule:
    allowed: tuple[str, ...]
    blocked: tuple[str, ...]
    concurrent_calls: int
    source: str  # which entry decided the patterns, for messages: "dialplan", "user", "@bob:example.org", ...


class DialPermissions:
    def __init__(self, rules: Mapping[str, RuleLike], *, allowed: Sequence[str], blocked: Sequence[str],
                 concurrent_calls: int) -> None:
        self._rules = dict(rules)
        self._default = EffectiveRule(tuple(allowed), tuple(blocked), concurrent_calls, "dialplan")

    def rule_for(self, mxid: str, level: str) -> EffectiveRule:
        chain = [self._rules[k] for k in (mxid, level, "*") if k in self._rules]
        names = [k for k in (mxid, level, "*") if k in self._rules]
        allowed, blocked, concurrent, source = (self._default.allowed, self._default.blocked,
                                                self._default.concurrent_calls, self._default.source)
        for rule, name in reversed(list(zip(chain, names, strict=True))):  # least specific first, overridden
            if rule.allowed is not None:
                allowed, source = rule.allowed, name
            if rule.blocked is not None:
                blocked, source = rule.blocked, name
            if rule.concurrent_calls is not None:
                concurrent = rule.concurrent_calls
        return EffectiveRule(allowed, blocked, concurrent, source)

    def check(self, mxid: str, level: str, number: str) -> str | None:
        """None if ``mxid`` (at ``level``) may dial ``number`` (E.164 digits), else a sentence for the user."""
        rule = self.rule_for(mxid, level)
        whose = "the bridge's dial plan" if rule.source == "dialplan" else "your dial permissions"
        for pattern in rule.blocked:
            if re.search(pattern, number):
                return f"+{number} is blocked by {whose}"
        if not any(re.search(pattern, number) for pattern in rule.allowed):
            return f"+{number} is not allowed by {whose}"
        return None

    def check_anyone(self, number: str) -> str | None:
        """None if at least one user of the bridge (any listed user ID, or anyone else, at level user or admin) may
        dial ``number``; else the reason a plain user gets. For look-ups that do not say who asks (/thirdparty)."""
        reason = self.check("", "user", number)
        if reason is None:
            return None
        who = ["", *(k for k in self._rules if k.startswith("@"))]
        if any(self.check(mxid, level, number) is None for mxid in who for level in ("user", "admin")):
            return None
        return reason

    def concurrent_calls(self, mxid: str, level: str) -> int:
        return self.rule_for(mxid, level).concurrent_calls


def dial_permissions_for(config: Config) -> DialPermissions:
    """bridge.dial_permissions over dialplan.allowed/blocked and bridge.limits.concurrent_calls."""
    return DialPermissions(config.bridge.dial_permissions, allowed=config.dialplan.allowed,
                           blocked=config.dialplan.blocked, concurrent_calls=config.bridge.limits.concurrent_calls)
