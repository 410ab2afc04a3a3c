"""Caller identity across the bridge: P-Asserted-Identity / Privacy (RFC 3325, RFC 3323) <-> MSC3086
``m.call.asserted_identity``. Pure functions, no I/O.

Trust is decided by the caller of these functions (the driver knows where a message came from): an identity
header from anywhere but a trusted source is never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import CallerId, DialplanConfig
from .dialplan import normalize_number

ANONYMOUS_USERS = frozenset({"anonymous", "unknown", "unavailable", "restricted", "private", "withheld"})
# MSC3086 event types: the stable name and the unstable one matrix-js-sdk (Element) also listens to.
ASSERTED_IDENTITY_TYPES = ("m.call.asserted_identity", "org.matrix.call.asserted_identity")
HEADER_NAMES = {"pai": "P-Asserted-Identity", "ppi": "P-Preferred-Identity"}


@dataclass(frozen=True)
class Identity:
    number: str  # E.164 digits, no '+'
    name: str | None = None  # display name from the header, if any


def privacy_withholds_id(privacy: str | None) -> bool:
    """``Privacy: id`` (RFC 3325) or ``header``/``user`` (RFC 3323): the identity must not be shown."""
    if not privacy:
        return False
    values = {p.strip().lower() for p in privacy.replace(",", ";").split(";")}
    return bool(values & {"id", "header", "user"})


def identity_for(user: str | None, display: str | None, plan: DialplanConfig) -> Identity | None:
    """The identity one (trusted, not withheld) P-Asserted-Identity value names: its URI user part as a phone
    number. None for an anonymous user or one that is not a number."""
    if not user or user.lower() in ANONYMOUS_USERS:
        return None
    number = normalize_number(user, plan)
    if number is None:
        return None
    name = display.strip().strip('"').strip() if display else ""
    return Identity(number=number, name=name or None)


def asserted_identity_content(call_id: str, party_id: str, mxid: str | None, display_name: str) -> dict[str, Any]:
    """MSC3086 content: who the remote party of ``call_id`` now is."""
    return {
        "call_id": call_id,
        "party_id": party_id,
        "version": "1",
        "asserted_identity": {"id": mxid, "display_name": display_name, "avatar_url": None},
    }


def outbound_identity_headers(mode: str, caller: CallerId | None, domain: str) -> list[tuple[str, str]]:
    """Headers for an outbound INVITE placed by a Matrix user: their admin-configured number as PAI/PPI (when
    the trunk expects one) and ``Privacy: id`` when the user's number is to be withheld."""
    if caller is None:
        return []
    headers: list[tuple[str, str]] = []
    name = HEADER_NAMES.get(mode)
    if name is not None and caller.number:
        headers.append((name, f"<sip:+{caller.number}@{domain};user=phone>"))
    if caller.withhold:
        headers.append(("Privacy", "id"))
    return headers
