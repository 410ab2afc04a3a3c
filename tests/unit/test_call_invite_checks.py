import pytest

from bridge.call.events import Invite, parse_call_event
from bridge.call.invite_checks import (
    MIN_REMAINING_MS,
    STALE_REFUSAL_MS,
    USABLE_CODECS,
    Dial,
    Ignore,
    InviteAge,
    Refuse,
    check_invite,
    invite_age,
    offered_audio_codecs,
)
from bridge.media.codecs import choose_webrtc_codecs

ELEMENT_OFFER = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 111 0 8 126\r\nc=IN IP4 0.0.0.0\r\na=mid:0\r\n"
    "a=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    "a=rtpmap:126 telephone-event/8000\r\n"
)
HEAD = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
VIDEO_ONLY = HEAD + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
DATA_ONLY = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
G729_ONLY = ("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=audio 9 RTP/AVP 18 101\r\n"
             "a=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\n")


def invite(sdp: str = ELEMENT_OFFER, *, lifetime: int = 60000, version: object = "1") -> Invite:
    value = parse_call_event("m.call.invite", {
        "call_id": "c1", "party_id": "P", "version": version, "lifetime": lifetime,
        "offer": {"type": "offer", "sdp": sdp},
    })
    assert isinstance(value, Invite)
    return value


FRESH = InviteAge(20, "unsigned.age")


def test_unsigned_age_wins_over_the_timestamp_and_skew_never_makes_an_age_negative() -> None:
    assert invite_age(1500, 1_000_000, 9_000_000) == InviteAge(1500, "unsigned.age")
    assert invite_age(None, 1_000_000, 1_004_000) == InviteAge(4000, "origin_server_ts")
    assert invite_age(None, 1_010_000, 1_000_000) == InviteAge(0, "origin_server_ts")  # our clock is behind
    assert invite_age(-30, 0, 5) == InviteAge(0, "unsigned.age")
    assert invite_age(None, 0, 1_000_000) == InviteAge(None, "unknown")


def test_fresh_element_invite_is_dialled_with_what_is_left_of_its_lifetime() -> None:
    assert check_invite(invite(), FRESH) == Dial(60000 - 20)
    assert check_invite(invite(), InviteAge(45000, "unsigned.age")) == Dial(15000)
    assert check_invite(invite(), InviteAge(None, "unknown")) == Dial(60000)


def test_invite_older_than_its_lifetime_is_refused_with_invite_timeout_then_only_ignored() -> None:
    recent = check_invite(invite(lifetime=1000), InviteAge(3000, "unsigned.age"))
    assert isinstance(recent, Refuse) and recent.reason == "invite_timeout" and recent.notice is None
    assert "expired" in recent.problem and "unsigned.age" in recent.problem
    old = check_invite(invite(lifetime=60000), InviteAge(60000 + STALE_REFUSAL_MS + 1, "origin_server_ts"))
    assert isinstance(old, Ignore) and "origin_server_ts" in old.problem


def test_invite_with_too_little_lifetime_left_is_not_dialled() -> None:
    verdict = check_invite(invite(lifetime=10000), InviteAge(10000 - MIN_REMAINING_MS + 1, "unsigned.age"))
    assert isinstance(verdict, Refuse) and verdict.reason == "invite_timeout"
    assert check_invite(invite(lifetime=10000), InviteAge(10000 - MIN_REMAINING_MS, "unsigned.age")) == Dial(
        MIN_REMAINING_MS)


@pytest.mark.parametrize("version", [0, "1", 1])
def test_versions_0_and_1_are_dialled(version: object) -> None:
    assert isinstance(check_invite(invite(version=version), FRESH), Dial)


@pytest.mark.parametrize("version", ["2", "0", 2, 1.5, None, True, "1.1"])
def test_other_versions_are_refused_before_dialling_with_a_notice(version: object) -> None:
    verdict = check_invite(invite(version=version), FRESH)
    assert isinstance(verdict, Refuse) and verdict.reason == "unknown_error" and verdict.notice
    assert "version" in verdict.problem


@pytest.mark.parametrize("sdp", [VIDEO_ONLY, DATA_ONLY, G729_ONLY])
def test_offer_without_usable_audio_is_refused(sdp: str) -> None:
    verdict = check_invite(invite(sdp), FRESH)
    assert isinstance(verdict, Refuse) and verdict.notice and "audio" in verdict.notice


def test_offered_codecs_read_the_first_audio_line_and_static_payload_types() -> None:
    assert offered_audio_codecs(ELEMENT_OFFER) == [("OPUS", 48000), ("PCMU", 8000), ("PCMA", 8000),
                                                  ("TELEPHONE-EVENT", 8000)]
    static = "v=0\r\nm=audio 4000 RTP/AVP 0 9\r\n"
    assert offered_audio_codecs(static) == [("PCMU", 8000), ("G722", 8000)]
    assert offered_audio_codecs(VIDEO_ONLY + "m=audio 9 RTP/AVP 8\r\n") == [("PCMA", 8000)]
    assert offered_audio_codecs(VIDEO_ONLY) == []


def test_usable_codecs_are_exactly_those_the_webrtc_leg_can_answer_with() -> None:
    names = [name for name, _ in USABLE_CODECS]
    assert {c.upper() for c in choose_webrtc_codecs(None, names, passthrough_ok=False)} == set(names)
