"""REFER pieces (bridge/sip/refer.py): Refer-To with Replaces, sipfrag bodies, the refer event package."""

from __future__ import annotations

import pytest

from bridge.sip.refer import ReferError, Replaces, is_refer_event, parse_refer_to, parse_sipfrag, sipfrag


def test_blind_refer_to_gives_the_target_uri() -> None:
    target = parse_refer_to("<sip:+15559870001@trunk.example;user=phone>")
    assert target.user == "+15559870001" and target.uri.host == "trunk.example" and target.replaces is None


def test_attended_refer_to_carries_an_escaped_replaces() -> None:
    target = parse_refer_to("<sip:15559870001@pbx?Replaces=abc%40pbx%3Bto-tag%3Dt1%3Bfrom-tag%3Df1>")
    assert target.replaces == Replaces("abc@pbx", "t1", "f1")
    assert not target.uri.headers  # the URI to dial has no headers left
    assert target.replaces.header() == "abc@pbx;to-tag=t1;from-tag=f1"
    assert parse_refer_to(f"<sip:1@h?Replaces={target.replaces.uri_header()}>").replaces == target.replaces


def test_replaces_early_only_flag_round_trips() -> None:
    parsed = Replaces.parse("x@y;from-tag=f;to-tag=t;early-only")
    assert parsed.early_only and parsed.header().endswith(";early-only")


@pytest.mark.parametrize("value", [None, "", "<tel:+15551234567>", "<sip:1@h?Replaces=abc%3Bto-tag%3Dt>",
                                   "not a uri <"])
def test_unusable_refer_to_is_an_error(value: str | None) -> None:
    with pytest.raises(ReferError):
        parse_refer_to(value)


def test_sipfrag_status_lines() -> None:
    assert sipfrag(100, "Trying") == b"SIP/2.0 100 Trying\r\n"
    assert parse_sipfrag(b"SIP/2.0 200 OK\r\n") == (200, "OK")
    assert parse_sipfrag(b"SIP/2.0 486 Busy Here\r\nContent-Length: 0\r\n") == (486, "Busy Here")
    assert parse_sipfrag(b"") is None and parse_sipfrag(b"INVITE sip:x SIP/2.0") is None


def test_refer_event_package() -> None:
    assert is_refer_event("refer") and is_refer_event("Refer;id=93809824")
    assert not is_refer_event("presence") and not is_refer_event(None)
