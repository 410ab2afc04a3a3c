"""Call transfer asked for by the phone (REFER inside the answered call), end to end: real Synapse, the bridge,
an aiortc Matrix caller playing 440 Hz, and sipp as the trunk. The transferring phone and the transfer target
are two calls of one sipp (both reach the bridge through the one trunk address), each with its own RTP peer:
the first phone plays 1 kHz, the target 1.5 kHz."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released, eventually
from tests.harness.matrix_client import MatrixTestClient
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e

TARGET = "15559870001"
BLOCKED = "19005550123"  # premium rate: blocked by the default dial plan


@pytest.fixture
async def phone_rtp() -> AsyncIterator[RtpPeer]:
    peer = RtpPeer(tone_hz=1000.0, decode_audio=True)
    await peer.open()
    peer.start_sending(seconds=40)
    yield peer
    await peer.close()


@pytest.fixture
async def target_rtp() -> AsyncIterator[RtpPeer]:
    peer = RtpPeer(tone_hz=1500.0, decode_audio=True)
    await peer.open()
    peer.start_sending(seconds=40)
    yield peer
    await peer.close()


async def trunk(e2e: E2E, scenario: str, *args: str, calls: int = 1) -> SippProcess:
    sipp = SippProcess(SCENARIOS / scenario, local_port=e2e.plan.trunk_port, extra_args=list(args), calls=calls,
                       timeout=60, workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    return sipp


async def portal_room(alice: MatrixTestClient) -> str:
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    return room


def is_type(event_type: str) -> Any:
    return lambda ev: ev.get("type") == event_type and ev.get("sender") == GHOST


@pytest.mark.parametrize("kind", ["blind", "attended"])
async def test_phone_transfer_moves_the_matrix_call_to_the_new_number_with_audio(
    e2e: E2E, phone_rtp: RtpPeer, target_rtp: RtpPeer, kind: str
) -> None:
    bridge = await e2e.bridge()
    refer_to = f"sip:{TARGET}@trunk.test"
    if kind == "attended":  # the phone's consultation call with the target, which our INVITE replaces
        refer_to += "?Replaces=consult%40phone%3Bto-tag%3Dt1%3Bfrom-tag%3Df1"
    sipp = await trunk(e2e, "trunk_refer.xml", "-key", "rtp_port", str(phone_rtp.port), "-key", "rtp_port2",
                       str(target_rtp.port), "-key", "refer_to", refer_to, calls=2)
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await call.wait_for_tone(1000.0, timeout=20, min_frames=25)  # talking to the first phone
    # The phone REFERs after 5 s: the new call reaches the target, which hears the Matrix user ...
    await eventually(lambda: target_rtp.audio_frames >= 50 and target_rtp.tone_ratio(440.0) >= 0.5, 25,
                     "the Matrix user's 440 Hz tone at the transfer target")
    # ... and the Matrix user, on the same call, now hears the target.
    await call.wait_for_tone(1500.0, timeout=20)
    identity = await alice.wait_for_event(room, is_type("org.matrix.call.asserted_identity"), timeout=10)
    assert identity["content"]["call_id"] == call.call_id
    assert identity["content"]["asserted_identity"]["display_name"] == "+1 555 987 0001"
    messages = sipp.messages
    second_invite = messages[messages.index(f"INVITE sip:{TARGET}@"):]
    assert "Referred-By: <sip:transferor@127.0.0.1>" in second_invite.split("\n\n")[0]
    if kind == "attended":
        assert "Replaces: consult@phone;to-tag=t1;from-tag=f1" in second_invite
    assert "Content-Type: message/sipfrag" in messages and "Event: refer" in messages
    await call.hangup()
    # sipp checked 202, NOTIFY 100 Trying (active), NOTIFY 200 OK (terminated), BYE of the old dialog, and the
    # BYE of the new call.
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)
    assert bridge.calls.call_limits.active() == 0


def untrusted_trunk(data: dict[str, Any]) -> None:
    data["sip"]["inbound"]["trusted_sources"] = ["127.0.0.2/32"]  # the trunk answers calls, but is not trusted


@pytest.mark.parametrize(("why", "number"), [("blocked_number", BLOCKED), ("untrusted_source", TARGET)])
async def test_phone_transfer_refused_403_dials_nothing_and_the_call_goes_on(
    e2e: E2E, phone_rtp: RtpPeer, why: str, number: str
) -> None:
    bridge = await e2e.bridge(untrusted_trunk if why == "untrusted_source" else None)
    sipp = await trunk(e2e, "trunk_refer_refused.xml", "-key", "rtp_port", str(phone_rtp.port), "-key",
                       "refer_to", f"sip:{number}@trunk.test")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await eventually(lambda: "SIP/2.0 403" in sipp.messages, 20, "the 403 to the REFER")
    # The call goes on with the first phone.
    frames = call.frames_received
    await call.wait_for_frames(frames + 25, timeout=10)
    await call.wait_for_tone(1000.0, timeout=10)
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    assert sipp.messages.count("INVITE sip:") == 1 and number not in sipp.messages.replace(
        f"Refer-To: <sip:{number}", "")
    await assert_released(bridge)


# ----------------------------------------------------------------------------- the Matrix user transfers
async def receiving_trunk(e2e: E2E, rtp: RtpPeer, reply: str, calls: int = 1) -> SippProcess:
    # sipp checks response codes when it loads the scenario, so the REFER's answer is written in.
    text = (SCENARIOS / "trunk_receive_refer.xml").read_text().replace("[refer_reply]", reply)
    if not reply.startswith("2"):
        text = text.replace(
            "<!-- REFUSED_JUMP: the test expects the BYE here when refer_reply is a refusal -->",
            '<recv request="BYE" timeout="20000" next="bye"/>')  # right after the send: a nop would race it
    path = e2e.tmp / f"trunk_receive_refer_{reply[:3]}.xml"
    path.write_text(text)
    return await trunk_path(e2e, path, "-key", "rtp_port", str(rtp.port), calls=calls)


async def trunk_path(e2e: E2E, path: Any, *args: str, calls: int = 1) -> SippProcess:
    sipp = SippProcess(path, local_port=e2e.plan.trunk_port, extra_args=list(args), calls=calls, timeout=60,
                       workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    return sipp


def replaces_content(call: Any, party_id: str, target: str, **which: str) -> dict[str, Any]:
    """What matrix-js-sdk's MatrixCall.transfer() / transferToCall() send."""
    return {"call_id": call.call_id, "party_id": party_id, "version": "1", "replacement_id": "repl1",
            "target_user": {"id": target, "display_name": "+1 555 987 0001"}, **which}


def ghost_hangup(call_id: str) -> Any:
    return lambda ev: ev.get("type") == "m.call.hangup" and ev["content"].get("call_id") == call_id


def notice(text: str) -> Any:
    return lambda ev: ev.get("type") == "m.room.message" and ev["content"].get("body") == text


TARGET_GHOST = f"@sip_{TARGET}:bridge.test"


async def test_matrix_transfer_sends_refer_to_the_phone_and_ends_the_call_after_notify_200(
    e2e: E2E, phone_rtp: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    sipp = await receiving_trunk(e2e, phone_rtp, "202 Accepted")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await call.wait_for_frames(25, timeout=20)
    await alice.send_event(room, "m.call.replaces", replaces_content(call, alice.party_id, TARGET_GHOST,
                                                                    create_call="newcall1"))
    # sipp: REFER answered 202, NOTIFY 100 and NOTIFY 200 each got 200, then the bridge's BYE.
    assert await sipp.wait() == 0, sipp.report()
    refer = sipp.messages[sipp.messages.index("REFER sip:"):]
    assert f"Refer-To: <sip:{TARGET}@127.0.0.1>" in refer.split("\n\n")[0]
    await alice.wait_for_event(room, ghost_hangup(call.call_id), timeout=10)
    await alice.wait_for_event(room, notice("The call was transferred to +1 555 987 0001."), timeout=10)
    await assert_released(bridge)
    row = await bridge.matrix.call_log.get(call.call_id)
    assert row is not None and row.end_reason == "transferred"
    assert bridge.calls.call_limits.active() == 0


async def test_matrix_transfer_declined_by_the_phone_ends_the_call_with_a_notice(
    e2e: E2E, phone_rtp: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    sipp = await receiving_trunk(e2e, phone_rtp, "603 Declined")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await alice.send_event(room, "m.call.replaces", replaces_content(call, alice.party_id, TARGET_GHOST,
                                                                    create_call="newcall1"))
    assert await sipp.wait() == 0, sipp.report()  # REFER answered 603, then the BYE
    await alice.wait_for_event(room, ghost_hangup(call.call_id), timeout=10)
    await alice.wait_for_event(room, notice(
        "The call could not be transferred to +1 555 987 0001: the phone system refused (603 Declined)."),
        timeout=10)
    await assert_released(bridge)
    row = await bridge.matrix.call_log.get(call.call_id)
    assert row is not None and row.end_reason == "transfer_failed"


async def test_matrix_transfer_the_trunk_refuses_is_done_by_the_bridge_phone_to_phone(
    e2e: E2E, phone_rtp: RtpPeer, target_rtp: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    sipp = await trunk(e2e, "trunk_refer_fallback.xml", "-key", "rtp_port", str(phone_rtp.port), "-key",
                       "rtp_port2", str(target_rtp.port), calls=2)
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await call.wait_for_tone(1000.0, timeout=20)
    await alice.send_event(room, "m.call.replaces", replaces_content(call, alice.party_id, TARGET_GHOST,
                                                                    create_call="newcall1"))
    # REFER answered 405: the bridge calls the target itself, re-INVITEs the phone and relays the two.
    await alice.wait_for_event(room, ghost_hangup(call.call_id), timeout=20)
    await alice.wait_for_event(room, notice("The call was transferred to +1 555 987 0001."), timeout=10)
    # The phone sends where the re-INVITE's SDP says (the RTP peer stands in for its media stack).
    await eventually(lambda: "INVITE sip:trunk@" in sipp.messages, 10, "the re-INVITE at the phone")
    reinvite = sipp.messages[sipp.messages.rindex("INVITE sip:trunk@"):]
    moved = re.search(r"m=audio (\d+) RTP/AVP 0 101", reinvite)
    assert moved is not None and "CSeq:" in reinvite
    phone_rtp.remote = ("127.0.0.1", int(moved.group(1)))
    origins = re.findall(r"o=\S+ (\d+) (\d+) IN IP4", sipp.messages)  # ours: first INVITE ... re-INVITE
    first, last = origins[0], re.findall(r"o=\S+ (\d+) (\d+) IN IP4", reinvite)[0]
    assert first[0] == last[0] and int(last[1]) > int(first[1])  # same SDP session, a newer version (RFC 3264)
    await eventually(lambda: target_rtp.audio_frames >= 50 and target_rtp.tone_ratio(1000.0) >= 0.5, 20,
                     "the phone's 1 kHz tone at the target")
    await eventually(lambda: phone_rtp.tone_ratio(1500.0) >= 0.5, 20, "the target's 1.5 kHz tone at the phone")
    assert bridge.calls.call_limits.active("@alice:bridge.test") == 1  # the bridge's call to the target counts
    # The phone hangs up 8 s after the re-INVITE: the target gets a BYE.
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)
    assert bridge.calls.call_limits.active() == 0
    row = await bridge.matrix.call_log.get(call.call_id)
    assert row is not None and row.end_reason == "transferred"


async def test_matrix_transfer_to_a_blocked_number_sends_no_refer(e2e: E2E, phone_rtp: RtpPeer) -> None:
    bridge = await e2e.bridge()
    sipp = await receiving_trunk(e2e, phone_rtp, "202 Accepted")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await alice.send_event(room, "m.call.replaces", replaces_content(
        call, alice.party_id, f"@sip_{BLOCKED}:bridge.test", create_call="newcall1"))
    assert await sipp.wait() == 0, sipp.report()  # straight to the BYE
    assert "REFER sip:" not in sipp.messages
    await alice.wait_for_event(room, ghost_hangup(call.call_id), timeout=10)
    await assert_released(bridge)


async def test_matrix_attended_transfer_refers_the_phone_with_replaces_naming_the_other_call(
    e2e: E2E, phone_rtp: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    sipp = await receiving_trunk(e2e, phone_rtp, "202 Accepted", calls=2)
    alice = await e2e.client("alice")
    room_a = await portal_room(alice)
    room_b = await alice.create_dm(TARGET_GHOST)
    await alice.wait_for_membership(room_b, TARGET_GHOST, "join", timeout=30)
    call_a = await alice.place_call(room_a, GHOST)  # the call being transferred (transferee: the phone)
    await call_a.wait_answer(timeout=30)
    call_b = await alice.place_call(room_b, TARGET_GHOST)  # the consultation call with the target
    await call_b.wait_answer(timeout=30)
    b_dialog = bridge.calls.outbound[call_b.call_id].dialog
    assert b_dialog is not None
    # Element's transferToCall: await_call in the target's call, create_call in the transferee's.
    await alice.send_event(room_b, "m.call.replaces", replaces_content(call_b, alice.party_id, GHOST,
                                                                      await_call="newcall2"))
    await alice.send_event(room_a, "m.call.replaces", replaces_content(call_a, alice.party_id, TARGET_GHOST,
                                                                      create_call="newcall2"))
    await alice.wait_for_event(room_a, ghost_hangup(call_a.call_id), timeout=20)
    refer = sipp.messages[sipp.messages.index("REFER sip:"):].split("\n\n")[0]
    replaces = quote(f"{b_dialog.call_id};to-tag={b_dialog.remote_tag};from-tag={b_dialog.local_tag}", safe="")
    assert f"Refer-To: <sip:{TARGET}@127.0.0.1?Replaces={replaces}>" in refer
    assert call_b.call_id in bridge.calls.outbound  # the consultation call waits for the target to take over
    await call_b.hangup()  # (a real target would BYE it once the phone's INVITE with Replaces arrived)
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


# ----------------------------------------------------------------------------- a phone that called transfers
DIALLED = "18005550100"
CALLER = "15557654321"


async def test_caller_transfers_its_call_to_alice_to_a_number_the_trunk_answers(
    e2e: E2E, phone_rtp: RtpPeer, target_rtp: RtpPeer
) -> None:
    """Two sipps: the phone calling alice (it sends the REFER) and the trunk, which gets the new INVITE."""

    def route(data: dict[str, Any]) -> None:
        data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": ["@alice:bridge.test"]}]

    bridge = await e2e.bridge(route)
    alice = await e2e.client("alice")
    await alice.start_sync(auto_join=True)
    the_trunk = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(target_rtp.port))
    phone = SippProcess(SCENARIOS / "caller_refer.xml", remote=("127.0.0.1", e2e.plan.sip_port), service=DIALLED,
                        timeout=60, workdir=e2e.tmp / "sipp-phone",
                        extra_args=["-key", "caller", CALLER, "-key", "caller_name", "Bob Phone", "-key", "rtp_port",
                                    str(phone_rtp.port), "-key", "refer_to", f"sip:{TARGET}@trunk.test"])
    await e2e.own(phone).start()
    call = await alice.wait_incoming_call(timeout=30)
    await call.answer(tone_hz=440.0)
    await call.wait_for_tone(1000.0, timeout=20)  # the phone
    await eventually(lambda: target_rtp.audio_frames >= 50 and target_rtp.tone_ratio(440.0) >= 0.5, 25,
                     "alice's 440 Hz tone at the transfer target")
    await call.wait_for_tone(1500.0, timeout=20)  # the target, on the same Matrix call
    assert await phone.wait() == 0, phone.report()  # 202, both NOTIFYs, then our BYE of its dialog
    assert bridge.calls.call_limits.active("@alice:bridge.test") == 1  # alice now has a call out
    await call.hangup()
    assert await the_trunk.wait() == 0, the_trunk.report()  # the target got the BYE
    await assert_released(bridge)
    assert bridge.calls.call_limits.active() == 0


def moved_port(messages: str, request_line: str) -> int:
    """The RTP port the bridge's last re-INVITE starting with ``request_line`` offers."""
    reinvite = messages[messages.rindex(request_line):]
    found = re.search(r"m=audio (\d+) RTP/AVP", reinvite)
    assert found is not None
    return int(found.group(1))


async def test_matrix_attended_transfer_the_trunk_refuses_connects_the_two_calls_phone_to_phone(
    e2e: E2E, phone_rtp: RtpPeer, target_rtp: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    sipp = await trunk(e2e, "trunk_attended_fallback.xml", "-key", "rtp_port", str(phone_rtp.port), "-key",
                       "rtp_port2", str(target_rtp.port), calls=2)
    alice = await e2e.client("alice")
    room_a = await portal_room(alice)
    room_b = await alice.create_dm(TARGET_GHOST)
    await alice.wait_for_membership(room_b, TARGET_GHOST, "join", timeout=30)
    call_a = await alice.place_call(room_a, GHOST)
    await call_a.wait_answer(timeout=30)
    call_b = await alice.place_call(room_b, TARGET_GHOST)
    await call_b.wait_answer(timeout=30)
    await alice.send_event(room_b, "m.call.replaces", replaces_content(call_b, alice.party_id, GHOST,
                                                                      await_call="newcall3"))
    await alice.send_event(room_a, "m.call.replaces", replaces_content(call_a, alice.party_id, TARGET_GHOST,
                                                                      create_call="newcall3"))
    # REFER (with Replaces) answered 405: the bridge re-INVITEs both phones onto its own relay.
    await alice.wait_for_event(room_a, ghost_hangup(call_a.call_id), timeout=20)
    await alice.wait_for_event(room_b, lambda ev: ev.get("type") == "m.call.hangup"
                               and ev["content"].get("call_id") == call_b.call_id, timeout=20)
    await eventually(lambda: "INVITE sip:trunk@" in sipp.messages and "INVITE sip:target@" in sipp.messages, 10,
                     "both re-INVITEs")
    phone_rtp.remote = ("127.0.0.1", moved_port(sipp.messages, "INVITE sip:trunk@"))
    target_rtp.remote = ("127.0.0.1", moved_port(sipp.messages, "INVITE sip:target@"))
    await eventually(lambda: target_rtp.tone_ratio(1000.0) >= 0.5 and phone_rtp.tone_ratio(1500.0) >= 0.5, 20,
                     "each phone hearing the other")
    assert await sipp.wait() == 0, sipp.report()  # the phone hung up; the target got the bridge's BYE
    await assert_released(bridge)
    assert bridge.calls.call_limits.active() == 0
