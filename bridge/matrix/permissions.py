"""Who may use the bridge: ``bridge.permissions`` maps "*", a server name or a user ID to a level."""

from __future__ import annotations

from collections.abc import Mapping

LEVELS = ("none", "user", "admin")


class Permissions:
    def __init__(self, rules: Mapping[str, str], homeserver_domain: str) -> None:
        # An empty mapping still means "only our own users": deny-all-but-local is the safe default.
        self._rules = dict(rules) if rules else {homeserver_domain: "user"}

    def level(self, mxid: str) -> str:
        """The most specific rule wins: full user ID, then server name, then "*", else "none"."""
        if mxid in self._rules:
            return self._rules[mxid]
        _, sep, server = mxid.partition(":")
        if sep and server in self._rules:
            return self._rules[server]
        return self._rules.get("*", "none")

    def can_use(self, mxid: str) -> bool:
        return self.level(mxid) in ("user", "admin")

    def can_login(self, mxid: str) -> bool:
        """May log in to a personal SIP account (bot ``login``, provisioning API): ``user`` and above."""
        return self.level(mxid) in ("user", "admin")

    def is_admin(self, mxid: str) -> bool:
        return self.level(mxid) == "admin"
