"""Branch, tag and Call-ID identifiers (RFC 3261 8.1.1.4, 8.1.1.7, 19.3)."""

from __future__ import annotations

import secrets

MAGIC_COOKIE = "z9hG4bK"


def new_branch() -> str:
    return MAGIC_COOKIE + secrets.token_hex(8)


def new_tag() -> str:
    return secrets.token_hex(6)


def new_call_id() -> str:
    return secrets.token_hex(12)
