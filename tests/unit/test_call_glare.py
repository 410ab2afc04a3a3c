"""Glare rules (call/glare.py) and the machines' glare_lost steps."""

from __future__ import annotations

from bridge.call.actions import Finish, SendMatrixEnding, SendSipCancel, SendSipResponse
from bridge.call.glare import resolve_glare, same_pair
from bridge.call.inbound import InboundCall
from bridge.call.outbound import OutboundCall


def test_lesser_call_id_wins_glare() -> None:
    assert resolve_glare("1700000000000aaaa", "1700000000001aaaa").outbound_wins
    assert resolve_glare("1700000000001aaaa", "1700000000000aaaa").inbound_wins
    assert resolve_glare("Zebra", "apple").outbound_wins  # byte order: upper case sorts first


def test_glare_needs_the_same_user_and_number() -> None:
    assert same_pair("@a:x", "155501", "@a:x", "155501")
    assert not same_pair("@a:x", "155501", "@b:x", "155501")
    assert not same_pair("@a:x", "155501", "@a:x", "155502")
    assert not same_pair("@a:x", "155501", "@a:x", None)


def test_outbound_call_losing_glare_cancels_and_rejects_with_replaced() -> None:
    call = OutboundCall(version="1", caller_party="p")
    actions = call.glare_lost()
    assert actions[0] == SendSipCancel()
    assert isinstance(actions[1], SendMatrixEnding) and actions[1].ending.kind == "reject"
    assert actions[1].ending.reason == "replaced" and actions[2] == Finish("glare_lost")
    v0 = OutboundCall(version=0, caller_party=None).glare_lost()[1]
    assert isinstance(v0, SendMatrixEnding) and v0.ending.kind == "hangup"


def test_answered_outbound_call_is_not_in_glare() -> None:
    call = OutboundCall(version="1", caller_party="p")
    call.sip_answered()
    assert call.glare_lost() == []


def test_inbound_call_losing_glare_answers_486_and_hangs_up_a_sent_invite() -> None:
    waiting = InboundCall(callee="@a:x")
    assert waiting.glare_lost() == [SendSipResponse(486, "Busy Here"), Finish("glare_lost")]
    ringing = InboundCall(callee="@a:x")
    ringing.user_joined()
    actions = ringing.glare_lost()
    assert actions[0] == SendSipResponse(486, "Busy Here")
    assert isinstance(actions[1], SendMatrixEnding) and actions[1].ending.reason == "replaced"
