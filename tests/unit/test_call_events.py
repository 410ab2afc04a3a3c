import pytest

from bridge.call.events import (
    Answer,
    Candidates,
    Hangup,
    InvalidCallEvent,
    Invite,
    OutgoingContent,
    SelectAnswer,
    normalize_version,
    parse_call_event,
)

OFFER = {"type": "offer", "sdp": "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"}


def element_invite(**over: object) -> dict[str, object]:
    content: dict[str, object] = {
        "call_id": "1700000000000abcdefghijklmn", "party_id": "ABCDEFGHIJ", "version": "1",
        "lifetime": 60000, "offer": OFFER, "capabilities": {"m.call.dtmf": False}, "invitee": "@sip_1:example.org",
    }
    content.update(over)
    return content


def test_version_zero_int_is_legacy_and_anything_else_is_version_one() -> None:
    assert normalize_version(0) == 0
    for raw in ("1", 1, "0", None, "2", False, 1.5):
        assert normalize_version(raw) == "1"


def test_element_invite_parses_with_party_lifetime_and_no_dtmf() -> None:
    inv = parse_call_event("m.call.invite", element_invite())
    assert isinstance(inv, Invite)
    assert (inv.version, inv.party_id, inv.lifetime_ms, inv.dtmf) == ("1", "ABCDEFGHIJ", 60000, False)
    assert inv.offer_sdp.startswith("v=0")


def test_version_zero_invite_without_party_id_is_accepted() -> None:
    content = element_invite(version=0)
    del content["party_id"]
    inv = parse_call_event("m.call.invite", content)
    assert isinstance(inv, Invite) and inv.version == 0 and inv.party_id is None


@pytest.mark.parametrize(
    "bad",
    [
        {"offer": "not an object"},
        {"offer": {"type": "answer", "sdp": "v=0"}},
        {"offer": {"type": "offer", "sdp": ""}},
        {"lifetime": -5},
        {"lifetime": "60000"},
        {"call_id": "has spaces in it"},
        {"call_id": None},
        {"party_id": "bad/party"},
        {"offer": {"type": "offer", "sdp": "x" * 70000}},
    ],
)
def test_malformed_invites_are_rejected_with_a_reason(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidCallEvent):
        parse_call_event("m.call.invite", element_invite(**bad))


def test_non_object_content_is_invalid() -> None:
    with pytest.raises(InvalidCallEvent):
        parse_call_event("m.call.hangup", ["call_id"])


def test_candidates_with_end_marker_inside_batch() -> None:
    c = parse_call_event("m.call.candidates", {
        "call_id": "c1", "party_id": "p1", "version": "1",
        "candidates": [{"candidate": "candidate:1 1 udp 1 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0},
                       {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}],
    })
    assert isinstance(c, Candidates)
    assert [x.is_end for x in c.candidates] == [False, True]


def test_candidates_must_be_a_bounded_list_of_objects() -> None:
    with pytest.raises(InvalidCallEvent):
        parse_call_event("m.call.candidates", {"call_id": "c1", "version": "1", "candidates": [1]})
    with pytest.raises(InvalidCallEvent):
        parse_call_event("m.call.candidates", {"call_id": "c1", "version": "1",
                                               "candidates": [{"candidate": "x"}] * 1000})


def test_hangup_without_reason_means_user_hangup_and_unknown_reason_is_unknown_error() -> None:
    h = parse_call_event("m.call.hangup", {"call_id": "c1", "version": 0})
    assert isinstance(h, Hangup) and h.reason == "user_hangup"
    h2 = parse_call_event("m.call.hangup", {"call_id": "c1", "party_id": "p", "version": "1", "reason": "weird"})
    assert isinstance(h2, Hangup) and h2.reason == "unknown_error"


def test_answer_and_select_answer() -> None:
    a = parse_call_event("m.call.answer", {"call_id": "c1", "party_id": "p2", "version": "1",
                                           "answer": {"type": "answer", "sdp": "v=0"},
                                           "capabilities": {"m.call.dtmf": True}})
    assert isinstance(a, Answer) and a.dtmf
    s = parse_call_event("m.call.select_answer", {"call_id": "c1", "party_id": "p1", "version": "1",
                                                  "selected_party_id": "p2"})
    assert isinstance(s, SelectAnswer) and s.selected_party_id == "p2"
    with pytest.raises(InvalidCallEvent):
        parse_call_event("m.call.select_answer", {"call_id": "c1", "party_id": "p1", "version": "1"})


def test_outgoing_content_is_version_1_with_party_id() -> None:
    out = OutgoingContent("c1", "bridgeparty")
    for content in (out.answer("v=0"), out.hangup("user_busy"), out.reject("user_busy"), out.end_of_candidates(),
                    out.select_answer("p2"), out.invite("v=0", lifetime_ms=60000, invitee="@a:b")):
        assert content["version"] == "1" and content["party_id"] == "bridgeparty" and content["call_id"] == "c1"
    assert out.end_of_candidates()["candidates"] == [{"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]
    assert out.invite("v=0", lifetime_ms=1000, invitee=None, dtmf=True)["capabilities"] == {"m.call.dtmf": True}
    assert "reason" not in out.reject(None)
