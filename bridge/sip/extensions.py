"""The SIP option tags this UA implements (100rel, timer) and the checks a request passes before the
application sees it: Require (420, RFC 3261 8.2.2.3), a too short Session-Expires (422, RFC 4028 9) and
overlapping re-INVITEs (491 / 500, RFC 3261 14.2)."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from bridge.sip.message import Request
from bridge.sip.prack import REL
from bridge.sip.session_timer import TIMER, interval_too_small, request_headers

if TYPE_CHECKING:
    from bridge.sip.dialog import Dialog
    from bridge.sip.settings import SipSettings

Refusal = tuple[int, str | None, tuple[tuple[str, str], ...]]

OVERLAP_RETRY_AFTER_S = (0, 10)  # 14.2: the 500 for an INVITE overlapping the peer's own carries Retry-After 0-10


def supported_options(settings: SipSettings) -> list[str]:
    options = []
    if settings.prack != "off":
        options.append(REL)
    if settings.session_timer.enabled:
        options.append(TIMER)
    return options


def invite_headers(settings: SipSettings) -> list[tuple[str, str]]:
    """What an initial INVITE of ours adds: Supported / Require and the session timer we ask for."""
    headers: list[tuple[str, str]] = []
    options = supported_options(settings)
    if options:
        headers.append(("Supported", ", ".join(options)))
    if settings.prack == "required":
        headers.append(("Require", REL))
    if settings.session_timer.enabled:
        headers.extend(request_headers(settings.session_timer))
    return headers


def screen(settings: SipSettings, request: Request, dialog: Dialog | None) -> Refusal | None:
    """The response a request gets before any application code runs, or None to go on."""
    required = request.headers.get_all("Require")
    if required:
        known = set(supported_options(settings))
        unsupported = [opt for opt in required if opt.strip().lower() not in known]
        if unsupported:
            return 420, None, (("Unsupported", ", ".join(unsupported)),)
    method = request.method
    if method in ("INVITE", "UPDATE") and interval_too_small(request.headers, settings.session_timer):
        return 422, None, (("Min-SE", str(settings.session_timer.min_se)),)
    if dialog is not None and method == "INVITE":
        if dialog.invite_out_pending:
            return 491, None, ()  # 14.2: our own re-INVITE is in progress
        if dialog.invite_in_pending:
            retry = str(random.randint(*OVERLAP_RETRY_AFTER_S))
            return 500, "Overlapping INVITE", (("Retry-After", retry),)
    if dialog is not None and method == "UPDATE" and request.body and dialog.invite_out_pending:
        return 491, None, ()  # RFC 3311 5.2: an offer crossing ours
    return None


def glare_retry_delay(dialog: Dialog) -> float:
    """14.1: after a 491, the owner of the Call-ID (the UAC of the initial INVITE) waits 2.1-4 s, the other
    party 0-2 s, so the two retries do not collide again."""
    return random.uniform(2.1, 4.0) if dialog.is_uac else random.uniform(0.0, 2.0)
