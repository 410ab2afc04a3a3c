"""RFC 4028 session timer rules (pure): header parsing, who refreshes, the intervals, 422 decisions,
and the RFC 3261 14.1 glare retry delays."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bridge.sip.extensions import glare_retry_delay, invite_headers, screen
from bridge.sip.message import Headers, Request
from bridge.sip.session_timer import (
    Negotiated,
    SessionExpires,
    SessionTimerSettings,
    expiry_delay,
    interval_too_small,
    refresh_delay,
    uac_negotiate,
    uas_negotiate,
)
from bridge.sip.settings import SipSettings

ON = SessionTimerSettings(enabled=True, expires=1800, min_se=90)


def hdrs(*items: tuple[str, str]) -> Headers:
    return Headers(items)


def test_session_expires_parses_interval_and_refresher_and_prints_back() -> None:
    assert SessionExpires.parse("1800;refresher=uac") == SessionExpires(1800, "uac")
    assert SessionExpires.parse(" 90 ; Refresher=UAS") == SessionExpires(90, "uas")
    assert SessionExpires.parse("600") == SessionExpires(600, None)
    assert SessionExpires.parse("600;refresher=bogus").refresher is None
    assert str(SessionExpires(600, "uas")) == "600;refresher=uas"
    with pytest.raises(ValueError):
        SessionExpires.parse("abc")
    with pytest.raises(ValueError):
        SessionExpires.parse("0")


def test_uas_keeps_the_callers_refresher_and_lowers_the_interval_to_ours() -> None:
    result = uas_negotiate(hdrs(("Supported", "timer"), ("Session-Expires", "3600;refresher=uac")), ON, None)
    assert result is not None
    negotiated, headers = result
    assert negotiated == Negotiated(1800, we_refresh=False)
    assert ("Session-Expires", "1800;refresher=uac") in headers and ("Require", "timer") in headers


def test_uas_refreshes_itself_when_the_caller_does_not_know_session_timers() -> None:
    result = uas_negotiate(hdrs(("Session-Expires", "1000;refresher=uac")), ON, None)
    assert result is not None
    negotiated, headers = result
    assert negotiated == Negotiated(1000, we_refresh=True)
    assert headers == [("Session-Expires", "1000;refresher=uas")]  # no Require: the caller does not know it


def test_uas_without_session_expires_in_the_request_uses_its_own_interval() -> None:
    result = uas_negotiate(hdrs(("Min-SE", "2000")), ON, None)
    assert result is not None and result[0] == Negotiated(2000, True)
    assert uas_negotiate(hdrs(("Session-Expires", "1000")), SessionTimerSettings(enabled=False), None) is None


def test_uas_raises_a_too_short_interval_of_a_caller_that_cannot_handle_422() -> None:
    result = uas_negotiate(hdrs(("Session-Expires", "30")), ON, None)
    assert result is not None and result[0].interval == 90


def test_422_only_for_a_too_short_interval_from_a_caller_that_knows_the_extension() -> None:
    assert interval_too_small(hdrs(("Supported", "timer"), ("Session-Expires", "60")), ON)
    assert not interval_too_small(hdrs(("Session-Expires", "60")), ON)
    assert not interval_too_small(hdrs(("Supported", "timer"), ("Session-Expires", "90")), ON)
    assert not interval_too_small(hdrs(("Supported", "timer"), ("Session-Expires", "60")),
                                  SessionTimerSettings(enabled=False))


def test_uac_follows_the_2xx_or_refreshes_itself_when_the_peer_ignores_timers() -> None:
    assert uac_negotiate(hdrs(("Session-Expires", "900;refresher=uas")), 1800, ON) == Negotiated(900, False)
    assert uac_negotiate(hdrs(("Session-Expires", "900;refresher=uac")), 1800, ON) == Negotiated(900, True)
    assert uac_negotiate(hdrs(), 1800, ON) == Negotiated(1800, True)
    assert uac_negotiate(hdrs(), 1800, SessionTimerSettings(enabled=False)) is None


def test_refresh_at_half_and_non_refresher_ends_min_32_or_a_third_before_expiry() -> None:
    assert refresh_delay(Negotiated(1800, True)) == 900
    assert expiry_delay(Negotiated(1800, False)) == 1800 - 32
    assert expiry_delay(Negotiated(90, False)) == 60
    assert expiry_delay(Negotiated(90, True)) == 90


def _request(method: str, *extra: tuple[str, str]) -> Request:
    headers = Headers([("Via", "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1"), ("From", "<sip:a@x>;tag=1"),
                       ("To", "<sip:b@y>"), ("Call-ID", "c1"), ("CSeq", f"1 {method}"), *extra])
    return Request(method, "sip:b@y", headers, b"")


def test_screen_refuses_unknown_options_and_short_intervals_and_accepts_what_is_configured() -> None:
    off = SipSettings()
    on = SipSettings(session_timer=ON, prack="supported")
    assert screen(off, _request("INVITE", ("Require", "100rel")), None) == (
        420, None, (("Unsupported", "100rel"),))
    assert screen(on, _request("INVITE", ("Require", "100rel, timer")), None) is None
    assert screen(on, _request("INVITE", ("Require", "foo")), None) == (420, None, (("Unsupported", "foo"),))
    assert screen(on, _request("INVITE", ("Supported", "timer"), ("Session-Expires", "10")), None) == (
        422, None, (("Min-SE", "90"),))


def test_screen_answers_overlapping_reinvites_with_491_and_500() -> None:
    settings = SipSettings()
    ours: Any = SimpleNamespace(invite_out_pending=True, invite_in_pending=False)
    theirs: Any = SimpleNamespace(invite_out_pending=False, invite_in_pending=True)
    assert screen(settings, _request("INVITE"), ours) == (491, None, ())
    refusal = screen(settings, _request("INVITE"), theirs)
    assert refusal is not None and refusal[0] == 500
    assert refusal[2][0][0] == "Retry-After" and 0 <= int(refusal[2][0][1]) <= 10


def test_invite_headers_follow_the_settings() -> None:
    assert invite_headers(SipSettings()) == []
    headers = invite_headers(SipSettings(session_timer=ON, prack="required"))
    assert ("Supported", "100rel, timer") in headers and ("Require", "100rel") in headers
    assert ("Session-Expires", "1800") in headers and ("Min-SE", "90") in headers


def test_glare_retry_delay_depends_on_who_owns_the_call_id() -> None:
    owner: Any = SimpleNamespace(is_uac=True)
    other: Any = SimpleNamespace(is_uac=False)
    owner_delays = [glare_retry_delay(owner) for _ in range(200)]
    other_delays = [glare_retry_delay(other) for _ in range(200)]
    assert all(2.1 <= d <= 4.0 for d in owner_delays)
    assert all(0.0 <= d <= 2.0 for d in other_delays)
