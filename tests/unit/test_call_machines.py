from collections.abc import Sequence

import pytest

from bridge.call.actions import (
    Finish,
    Renegotiate,
    SendMatrixAnswer,
    SendMatrixEnding,
    SendMatrixInvite,
    SendSelectAnswer,
    SendSipBye,
    SendSipCancel,
    SendSipResponse,
    StartMedia,
)
from bridge.call.events import Negotiate, OutgoingContent, parse_call_event
from bridge.call.hold import sip_direction_for_matrix_offer
from bridge.call.inbound import InboundCall, InState
from bridge.call.outbound import OutboundCall, OutState


def kinds(actions: Sequence[object]) -> list[type]:
    return [type(a) for a in actions]


# --- outbound: Matrix user calls a phone ---

def test_outbound_sip_200_sends_matrix_answer_and_starts_media() -> None:
    call = OutboundCall(version="1", caller_party="P1")
    assert call.sip_provisional(180) == [] and call.state is OutState.RINGING
    assert kinds(call.sip_answered()) == [SendMatrixAnswer, StartMedia]
    assert call.sip_answered() == []  # a retransmitted 200 changes nothing


def test_outbound_sip_486_rejects_version_1_invite_with_user_busy() -> None:
    call = OutboundCall(version="1", caller_party="P1")
    actions = call.sip_failed(486, "Busy Here")
    assert kinds(actions) == [SendMatrixEnding, Finish]
    end = actions[0]
    assert isinstance(end, SendMatrixEnding)
    assert (end.ending.kind, end.ending.reason, end.sip_status) == ("reject", "user_busy", 486)
    assert call.ended and call.end_reason == "sip_486"


def test_outbound_matrix_hangup_before_answer_is_cancel_after_is_bye() -> None:
    ringing = OutboundCall(version="1", caller_party="P1")
    ringing.sip_provisional(180)
    assert kinds(ringing.matrix_hangup("P1", "user_hangup")) == [SendSipCancel, Finish]
    answered = OutboundCall(version="1", caller_party="P1")
    answered.sip_answered()
    assert kinds(answered.matrix_hangup("P1", "user_hangup")) == [SendSipBye, Finish]
    assert answered.matrix_hangup("P1", "user_hangup") == []  # already ended


def test_outbound_hangup_from_another_party_of_the_caller_is_ignored() -> None:
    call = OutboundCall(version="1", caller_party="P1")
    call.sip_answered()
    assert call.matrix_hangup("OTHER", "user_hangup") == []
    assert not call.ended


def test_outbound_sip_bye_hangs_up_matrix_with_user_hangup() -> None:
    call = OutboundCall(version=0, caller_party=None)
    call.sip_answered()
    actions = call.sip_bye()
    end = actions[0]
    assert isinstance(end, SendMatrixEnding) and end.ending.kind == "hangup" and end.ending.reason == "user_hangup"


def test_outbound_lifetime_expiry_while_ringing_cancels_and_reports_invite_timeout() -> None:
    call = OutboundCall(version="1", caller_party="P1")
    call.sip_provisional(183)
    actions = call.lifetime_expired()
    assert kinds(actions) == [SendSipCancel, SendMatrixEnding, Finish]
    end = actions[1]
    assert isinstance(end, SendMatrixEnding) and end.ending.reason == "invite_timeout"
    answered = OutboundCall(version="1", caller_party="P1")
    answered.sip_answered()
    assert answered.lifetime_expired() == []


def test_outbound_select_answer_of_another_party_ends_sip_side() -> None:
    call = OutboundCall(version="1", caller_party="P1")
    call.sip_answered()
    assert call.matrix_select_answer("P1", "ours", our_party="ours") == []
    assert kinds(call.matrix_select_answer("P1", "theirs", our_party="ours")) == [SendSipBye, Finish]


def test_outbound_media_failure_after_answer_byes_and_reports_ice_failed() -> None:
    call = OutboundCall(version="1", caller_party="P1")
    call.sip_answered()
    actions = call.media_failed(media_seen=False)
    assert kinds(actions) == [SendSipBye, SendMatrixEnding, Finish]
    end = actions[1]
    assert isinstance(end, SendMatrixEnding) and end.ending.reason == "ice_failed"


def test_outbound_caller_leaving_is_a_hangup() -> None:
    call = OutboundCall(version="1", caller_party="P1")
    assert kinds(call.caller_left()) == [SendSipCancel, Finish]


def test_outbound_transport_failure_is_unknown_error() -> None:
    call = OutboundCall(version="1", caller_party="P1")
    end = call.sip_no_response(timeout=True)[0]
    assert isinstance(end, SendMatrixEnding) and end.ending.reason == "unknown_error"


# --- inbound: a phone calls a Matrix user ---

ALICE = "@alice:example.org"


def ringing_call() -> InboundCall:
    call = InboundCall(callee=ALICE)
    assert kinds(call.user_joined()) == [SendMatrixInvite, SendSipResponse]
    return call


def test_inbound_first_answer_wins_and_later_answers_are_ignored() -> None:
    call = ringing_call()
    actions = call.matrix_answer(ALICE, "DEV1")
    assert actions[0] == SendSelectAnswer("DEV1")
    assert actions[1] == SendSipResponse(200, "OK")
    assert call.matrix_answer(ALICE, "DEV2") == []
    assert call.selected_party == "DEV1" and call.state is InState.CONNECTED


def test_inbound_answer_from_someone_else_is_ignored() -> None:
    call = ringing_call()
    assert call.matrix_answer("@mallory:example.org", "X") == []


def test_inbound_reject_is_603_and_busy_hangup_is_486_other_hangup_480() -> None:
    call = ringing_call()
    assert call.matrix_reject(ALICE)[0] == SendSipResponse(603, "Decline")
    busy = ringing_call()
    assert busy.matrix_hangup(ALICE, "D", "user_busy")[0] == SendSipResponse(486, "Busy Here")
    other = ringing_call()
    assert other.matrix_hangup(ALICE, "D", "user_hangup")[0] == SendSipResponse(480, "Temporarily Unavailable")


def test_inbound_lifetime_expiry_is_480_and_invite_timeout() -> None:
    call = ringing_call()
    actions = call.lifetime_expired()
    assert actions[0] == SendSipResponse(480, "Temporarily Unavailable")
    end = actions[1]
    assert isinstance(end, SendMatrixEnding) and end.ending.reason == "invite_timeout"


def test_inbound_nobody_joining_before_ring_timeout_is_480_without_matrix_event() -> None:
    call = InboundCall(callee=ALICE)
    assert kinds(call.lifetime_expired()) == [SendSipResponse, Finish]


def test_inbound_sip_cancel_while_ringing_hangs_up_matrix() -> None:
    call = ringing_call()
    assert kinds(call.sip_cancelled()) == [SendMatrixEnding, Finish]
    waiting = InboundCall(callee=ALICE)
    assert kinds(waiting.sip_cancelled()) == [Finish]


def test_inbound_bye_both_ways_after_answer() -> None:
    call = ringing_call()
    call.matrix_answer(ALICE, "DEV1")
    assert call.matrix_hangup(ALICE, "DEV2", "user_hangup") == []  # the losing device
    assert kinds(call.matrix_hangup(ALICE, "DEV1", "user_hangup")) == [SendSipBye, Finish]
    other = ringing_call()
    other.matrix_answer(ALICE, "DEV1")
    assert kinds(other.sip_bye()) == [SendMatrixEnding, Finish]


def test_inbound_user_leaving_after_answer_is_bye() -> None:
    call = ringing_call()
    call.matrix_answer(ALICE, "DEV1")
    assert kinds(call.user_left()) == [SendSipBye, SendMatrixEnding, Finish]


def test_inbound_media_failure_is_bye_and_ice_failed() -> None:
    call = ringing_call()
    call.matrix_answer(ALICE, "DEV1")
    actions = call.media_failed(media_seen=False)
    assert kinds(actions) == [SendSipBye, SendMatrixEnding, Finish]


def test_inbound_answered_elsewhere_hangs_up_a_ringing_branch_without_sip_action() -> None:
    call = ringing_call()
    assert kinds(call.answered_elsewhere()) == [SendMatrixEnding, Finish]
    waiting = InboundCall(callee=ALICE)
    assert kinds(waiting.answered_elsewhere()) == [Finish]
    lost_race = ringing_call()
    lost_race.matrix_answer(ALICE, "D")  # answered too, but the other user's 200 went out first
    assert kinds(lost_race.answered_elsewhere()) == [SendMatrixEnding, Finish]


# --- hold / resume: m.call.negotiate while connected ---

@pytest.mark.parametrize(
    ("matrix", "sip"),
    [("inactive", "inactive"), ("sendonly", "sendonly"), ("recvonly", "recvonly"), ("sendrecv", "sendrecv"),
     ("bogus", "sendrecv")],
)
def test_matrix_offer_direction_maps_to_the_reinvite_direction(matrix: str, sip: str) -> None:
    assert sip_direction_for_matrix_offer(matrix) == sip


def test_outbound_negotiate_offer_from_caller_while_answered_renegotiates() -> None:
    call = OutboundCall(version="1", caller_party="P1")
    call.sip_answered()
    assert call.matrix_negotiate("P1", "offer", "v=0") == [Renegotiate("v=0")]
    assert call.matrix_negotiate(None, "offer", "v=1") == [Renegotiate("v=1")]  # version 0 style sender
    assert call.state is OutState.ANSWERED


def test_outbound_negotiate_is_ignored_before_answer_from_others_and_for_answers() -> None:
    call = OutboundCall(version="1", caller_party="P1")
    assert call.matrix_negotiate("P1", "offer", "v=0") == []  # still dialling
    call.sip_answered()
    assert call.matrix_negotiate("OTHER", "offer", "v=0") == []
    assert call.matrix_negotiate("P1", "answer", "v=0") == []  # we never send negotiate offers
    call.matrix_hangup("P1", "user_hangup")
    assert call.matrix_negotiate("P1", "offer", "v=0") == []


def test_inbound_negotiate_offer_from_selected_device_while_connected_renegotiates() -> None:
    call = InboundCall(callee="@alice:x")
    call.user_joined()
    assert call.matrix_negotiate("@alice:x", "DEV1", "offer", "v=0") == []  # ringing: nothing to renegotiate
    call.matrix_answer("@alice:x", "DEV1")
    assert call.matrix_negotiate("@alice:x", "DEV1", "offer", "v=0") == [Renegotiate("v=0")]
    assert call.matrix_negotiate("@alice:x", "DEV2", "offer", "v=0") == []  # lost the answer race
    assert call.matrix_negotiate("@mallory:x", "DEV1", "offer", "v=0") == []
    assert call.matrix_negotiate("@alice:x", "DEV1", "answer", "v=0") == []
    assert call.state is InState.CONNECTED


def test_negotiate_answer_content_is_version_1_with_our_party_and_a_lifetime() -> None:
    content = OutgoingContent("CALL", "PARTY").negotiate("answer", "v=0\r\n")
    assert content == {"call_id": "CALL", "party_id": "PARTY", "version": "1", "lifetime": 30000,
                       "description": {"type": "answer", "sdp": "v=0\r\n"}}
    assert parse_call_event("m.call.negotiate", content) == Negotiate(
        "CALL", "PARTY", "1", sdp_type="answer", sdp="v=0\r\n", lifetime_ms=30000)


def test_inbound_homeserver_unreachable_before_or_while_inviting_is_503_with_retry_after() -> None:
    waiting = InboundCall(callee=ALICE)
    assert waiting.homeserver_unreachable() == [
        SendSipResponse(503, "Service Unavailable", retry_after_s=30), Finish("homeserver_unreachable")]
    assert waiting.ended and waiting.homeserver_unreachable() == []
    # The invite itself was not delivered in time (withdrawn; an attempt on the wire may still land): a hangup
    # follows it through the outbox.
    ringing = InboundCall(callee=ALICE)
    ringing.user_joined()
    actions = ringing.homeserver_unreachable()
    assert actions[0] == SendSipResponse(503, "Service Unavailable", retry_after_s=30)
    assert isinstance(actions[1], SendMatrixEnding) and actions[1].ending.reason == "unknown_error"
    assert actions[2:] == [Finish("homeserver_unreachable")]
    connected = InboundCall(callee=ALICE)
    connected.user_joined()
    connected.matrix_answer(ALICE, "p1")
    assert connected.homeserver_unreachable() == []  # a connected call does not depend on the homeserver
