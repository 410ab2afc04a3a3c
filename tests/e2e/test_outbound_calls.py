"""Matrix user calls a phone, end to end: real Synapse, the bridge, sipp as the trunk, real RTP on the
SIP side (a symmetric-RTP peer playing a 1 kHz tone) and an aiortc WebRTC caller playing 440 Hz."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

from bridge.app import Bridge
from tests.e2e.conftest import E2E, GHOST, NUMBER, SCENARIOS, assert_released, eventually
from tests.harness.matrix_client import MatrixTestClient
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e


async def trunk(e2e: E2E, scenario: str, *args: str, timeout: float = 90.0) -> SippProcess:
    sipp = SippProcess(SCENARIOS / scenario, local_port=e2e.plan.trunk_port, extra_args=list(args),
                       timeout=timeout, workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    return sipp


async def reject_trunk(e2e: E2E, status: int, phrase: str) -> SippProcess:
    # sipp checks response codes when it loads the scenario, so the status is written in, not a -key.
    text = (SCENARIOS / "trunk_reject.xml").read_text().replace("STATUS PHRASE", f"{status} {phrase}")
    path = e2e.tmp / f"trunk_reject_{status}.xml"
    path.write_text(text)
    sipp = SippProcess(path, local_port=e2e.plan.trunk_port, timeout=60, workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    return sipp


async def portal_room(alice: MatrixTestClient, ghost: str = GHOST) -> str:
    room = await alice.create_dm(ghost)
    await alice.wait_for_membership(room, ghost, "join", timeout=30)
    return room


async def call_log_row(bridge: Bridge, call_id: str) -> Any:
    return await bridge.matrix.call_log.get(call_id)


async def test_matrix_call_to_phone_has_audio_both_ways_and_matrix_hangup_sends_bye(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=60)
    sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST, trickle=True)
    answer = await call.wait_answer(timeout=30)
    content = answer["content"]
    assert content["version"] == "1" and content["party_id"] and answer["sender"] == GHOST
    assert "a=candidate" in content["answer"]["sdp"]  # aiortc does not trickle: candidates in the SDP
    eoc = await alice.wait_for_event(room, lambda ev: ev.get("type") == "m.call.candidates"
                                     and ev["sender"] == GHOST, timeout=10)
    assert eoc["content"]["candidates"][-1]["candidate"] == ""
    # Audio both ways: the trunk's 1 kHz tone decoded on the Matrix side, Matrix RTP counted at the trunk.
    await call.wait_for_tone(1000.0, timeout=30, min_frames=50)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP packets at the trunk")
    assert rtp_peer.received_payload_types.get(0, 0) >= 50  # PCMU, as negotiated with the trunk
    stats = bridge.calls.outbound[call.call_id].media.stats()
    assert stats.passthrough, "PCMU on both legs should be passed through, not transcoded"
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()  # sipp received the BYE and answered it
    assert "BYE sip:" in sipp.messages
    await assert_released(bridge)
    row = await call_log_row(bridge, call.call_id)
    assert row.direction == "outbound" and row.number == NUMBER and row.answer_ts and row.end_ts
    assert row.end_reason == "matrix_user_hangup" and row.sip_call_id


async def test_phone_hanging_up_ends_matrix_call_with_user_hangup(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=30)
    sipp = await trunk(e2e, "trunk_answer_then_bye.xml", "-key", "rtp_port", str(rtp_peer.port), "-d", "3000")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await call.wait_for_frames(25, timeout=20)
    hangup = await call.wait_hangup_or_reject(timeout=30)
    assert hangup["type"] == "m.call.hangup" and hangup["content"]["reason"] == "user_hangup"
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)
    assert (await call_log_row(bridge, call.call_id)).end_reason == "sip_bye"


@pytest.mark.parametrize("version", ["1", 0])
async def test_busy_phone_refuses_matrix_call_as_user_busy(e2e: E2E, version: str | int) -> None:
    bridge = await e2e.bridge()
    sipp = await reject_trunk(e2e, 486, "Busy Here")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST, version=version)
    end = await call.wait_hangup_or_reject(timeout=30)
    # Element ignores a callee's hangup before answer: version "1" gets m.call.reject; version 0 a hangup.
    assert end["type"] == ("m.call.reject" if version == "1" else "m.call.hangup")
    assert end["content"]["reason"] == "user_busy" and end["content"]["version"] == "1"
    assert await sipp.wait() == 0, sipp.report()  # the 486 was ACKed (sipp matched the ACK)
    await assert_released(bridge)
    assert (await call_log_row(bridge, call.call_id)).end_reason == "sip_486"


async def test_unreachable_number_rejects_and_posts_notice(e2e: E2E) -> None:
    await e2e.bridge()
    sipp = await reject_trunk(e2e, 404, "Not Found")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    end = await call.wait_hangup_or_reject(timeout=30)
    assert end["type"] == "m.call.reject"
    notice = await alice.wait_for_event(
        room, lambda ev: ev.get("type") == "m.room.message" and ev["content"].get("msgtype") == "m.notice",
        timeout=10)
    assert notice["content"]["body"] == "+1 555 123 4567 is not reachable: 404 Not Found"
    assert await sipp.wait() == 0, sipp.report()


async def test_matrix_hangup_while_ringing_sends_matching_cancel(e2e: E2E) -> None:
    bridge = await e2e.bridge()
    sipp = await trunk(e2e, "trunk_ring_until_cancel.xml")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await eventually(lambda: call.call_id in bridge.calls.outbound
                     and bridge.calls.outbound[call.call_id].machine.state.value == "ringing", 20, "ringing")
    await call.hangup()
    # sipp fails the scenario when the CANCEL's branch or CSeq differ from the INVITE's.
    assert await sipp.wait() == 0, sipp.report()
    assert "CANCEL_MISMATCH" not in sipp.logs
    await assert_released(bridge)
    assert (await call_log_row(bridge, call.call_id)).end_reason == "matrix_user_hangup"


async def test_invite_lifetime_running_out_while_ringing_cancels_with_invite_timeout(e2e: E2E) -> None:
    bridge = await e2e.bridge()
    sipp = await trunk(e2e, "trunk_ring_until_cancel.xml")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST, lifetime=3000)
    end = await call.wait_hangup_or_reject(timeout=30)
    assert end["type"] == "m.call.reject" and end["content"]["reason"] == "invite_timeout"
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


async def test_caller_leaving_the_room_hangs_up_the_phone(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=30)
    sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await alice.leave(room)
    assert await sipp.wait() == 0, sipp.report()  # the BYE reached the trunk
    await assert_released(bridge)
    assert (await call_log_row(bridge, call.call_id)).end_reason == "caller_left"


async def test_user_without_permission_is_refused_and_no_sip_is_sent(e2e: E2E) -> None:
    def only_alice(data: dict[str, Any]) -> None:
        data["bridge"]["permissions"] = {"@alice:bridge.test": "user"}

    bridge = await e2e.bridge(only_alice)
    bob = await e2e.client("bob")
    room = await bob.create_dm(GHOST)
    # The ghost refuses a non-permitted user's invite with a reason, so no portal exists and no call goes out.
    await bob.wait_for_membership(room, GHOST, "leave", timeout=30)
    assert bridge.ua.dialogs == [] and not bridge.calls.sessions()


async def test_dtmf_from_element_reaches_the_phone_as_rfc4733_events(e2e: E2E, rtp_peer: RtpPeer) -> None:
    await e2e.bridge()
    rtp_peer.start_sending(seconds=60)
    sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST, dtmf=True)
    answer = await call.wait_answer(timeout=30)
    assert answer["content"]["capabilities"]["m.call.dtmf"] is True  # Element shows its dial pad
    await call.wait_for_frames(25, timeout=20)
    await call.send_dtmf("1#")
    # RFC 4733 on the SIP leg with the payload type the trunk answered: event 1 then event 11 ('#').
    await eventually(lambda: [e for i, e in enumerate(rtp_peer.dtmf_events)
                              if i == 0 or rtp_peer.dtmf_events[i - 1] != e] == [1, 11], 20, "DTMF 1#")
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()


async def test_opus_only_matrix_caller_is_transcoded_to_pcmu_both_ways(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=60)
    sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST, codecs=["opus"])
    answer = await call.wait_answer(timeout=30)
    assert "opus/48000" in answer["content"]["answer"]["sdp"]
    stats = bridge.calls.outbound[call.call_id].media.stats()
    assert not stats.passthrough and stats.codec_sip == "PCMU"
    await call.wait_for_tone(1000.0, timeout=30, min_frames=50)
    await eventually(lambda: rtp_peer.received_payload_types.get(0, 0) >= 50, 20, "PCMU at the trunk")
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


async def test_webrtc_leg_that_never_connects_ends_with_ice_failed_and_bye(e2e: E2E, rtp_peer: RtpPeer) -> None:
    def quick_ice(data: dict[str, Any]) -> None:
        data["media"]["ice_timeout_s"] = 3

    bridge = await e2e.bridge(quick_ice)
    rtp_peer.start_sending(seconds=60)
    sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST, trickle=False)
    assert call.pc is not None
    await call.pc.close()  # the caller's WebRTC stack dies: nothing will ever answer the bridge's ICE checks
    end = await alice.wait_for_event(room, lambda ev: ev.get("type") == "m.call.hangup"
                                     and ev["sender"] == GHOST, timeout=30)
    assert end["content"]["reason"] == "ice_failed" and end["content"]["call_id"] == call.call_id
    assert await sipp.wait() == 0, sipp.report()  # the trunk got its BYE
    await assert_released(bridge)
    assert (await call_log_row(bridge, call.call_id)).end_reason == "ice_failed"


async def test_select_answer_naming_another_party_ends_the_sip_side(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=60)
    sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await eventually(lambda: call.call_id in bridge.calls.outbound
                     and bridge.calls.outbound[call.call_id].machine.state.value == "answered", 30, "answered")
    # Another callee device (or bridge) won: the caller selects its party, not ours.
    await alice.send_event(room, "m.call.select_answer", {
        "call_id": call.call_id, "party_id": call.party_id, "version": "1", "selected_party_id": "SOMEONEELSE"})
    assert await sipp.wait() == 0, sipp.report()  # the trunk got a BYE
    await assert_released(bridge)
    assert (await call_log_row(bridge, call.call_id)).end_reason == "answered_elsewhere"


async def test_call_from_someone_else_in_the_portal_is_refused_visibly_without_sip(e2e: E2E) -> None:
    def only_alice(data: dict[str, Any]) -> None:
        data["bridge"]["permissions"] = {"@alice:bridge.test": "user"}

    bridge = await e2e.bridge(only_alice)
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    bob = await e2e.client("bob")
    await alice.request("POST", f"/rooms/{room}/invite", {"user_id": "@bob:bridge.test"})
    await bob.join(room)
    call = await bob.place_call(room, GHOST)
    end = await call.wait_hangup_or_reject(timeout=20)
    assert end["type"] == "m.call.reject"  # bob's client stops ringing at once
    notice = await bob.wait_for_event(
        room, lambda ev: ev.get("type") == "m.room.message" and ev["content"].get("msgtype") == "m.notice",
        timeout=10)
    assert "not allowed" in notice["content"]["body"]
    assert bridge.ua.dialogs == [] and not bridge.calls.sessions()


async def test_stopping_the_bridge_ends_calls_cleanly_on_both_sides(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=60)
    sipp = await trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await call.wait_for_frames(25, timeout=20)
    await bridge.stop()  # what SIGTERM does
    assert await sipp.wait() == 0, sipp.report()  # the phone got a BYE
    end = await call.wait_hangup_or_reject(timeout=15)
    assert end["type"] == "m.call.hangup" and end["content"]["reason"] == "unknown_error"
    assert bridge.calls.ports.in_use == frozenset() and not bridge.calls.sessions()
    assert (await call_log_row_after_stop(e2e, call.call_id)) == "bridge_shutdown"


async def call_log_row_after_stop(e2e: E2E, call_id: str) -> str | None:
    """Read the call log from the stopped bridge's SQLite file, as the next start would."""
    import sqlite3

    path = e2e.bridges[-1].config.appservice.database.removeprefix("sqlite:")
    with sqlite3.connect(path) as db:
        row = db.execute("SELECT end_reason FROM call_log WHERE call_id=?", (call_id,)).fetchone()
    return row[0] if row else None


def _sdp_origins(sipp_messages: str) -> list[tuple[int, int]]:
    """(session id, version) of every o= line the bridge sent (its username is "-"), in order."""
    return [(int(m.group(1)), int(m.group(2))) for m in re.finditer(r"^o=- (\d+) (\d+) IN", sipp_messages, re.M)]


async def test_matrix_hold_reinvites_trunk_inactive_stops_rtp_and_resume_restores_audio(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=120)
    sipp = await trunk(e2e, "trunk_hold.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST, dtmf=True)
    await call.wait_answer(timeout=30)
    await call.wait_for_tone(1000.0, timeout=30, min_frames=50)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP packets at the trunk")
    media = bridge.calls.outbound[call.call_id].media

    # Hold: Element's negotiate offer is inactive; the bridge answers inactive and re-INVITEs the trunk
    # with a=inactive (sipp checks it). After the trunk's 200, no RTP reaches the trunk any more.
    held = await call.hold(True)
    assert held["sender"] == GHOST and held["content"]["version"] == "1"
    assert held["content"]["party_id"] == call.remote_party_id
    assert "a=inactive" in held["content"]["description"]["sdp"]
    await eventually(lambda: media.rtp_leg.hold, 20, "the trunk's 200 to the hold re-INVITE")
    await asyncio.sleep(0.5)  # packets already in flight
    at_trunk, at_matrix = rtp_peer.received, call.frames_received
    await asyncio.sleep(2.0)
    assert rtp_peer.received - at_trunk <= 2, "RTP kept flowing to the trunk while held"
    assert call.frames_received - at_matrix <= 10, "audio kept flowing to Matrix while held"

    # Resume: sendrecv both ways again, audio flows in both directions.
    resumed = await call.hold(False)
    assert "a=sendrecv" in resumed["content"]["description"]["sdp"]
    await eventually(lambda: not media.rtp_leg.hold, 20, "the trunk's 200 to the resume re-INVITE")
    at_trunk, at_matrix = rtp_peer.received, call.frames_received
    await eventually(lambda: rtp_peer.received - at_trunk >= 50, 20, "RTP at the trunk after resume")
    await call.wait_for_frames(at_matrix + 50, timeout=20)
    await call.wait_for_tone(1000.0, timeout=20, min_frames=at_matrix + 50)
    # The same connection, passthrough and DTMF interception survive the renegotiations.
    assert media.stats().passthrough and media.webrtc_connection_state == "connected"
    await call.send_dtmf("5")
    await eventually(lambda: 5 in rtp_peer.dtmf_events, 20, "DTMF 5 at the trunk after resume")

    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    # RFC 3264 8: every re-offer keeps the session id and bumps the version by one.
    origins = _sdp_origins(sipp.messages)
    assert len(origins) == 3, sipp.messages
    assert {sid for sid, _ in origins} == {origins[0][0]}
    assert [v for _, v in origins] == [origins[0][1], origins[0][1] + 1, origins[0][1] + 2]
    await assert_released(bridge)
    assert (await call_log_row(bridge, call.call_id)).end_reason == "matrix_user_hangup"


async def test_trunk_refusing_the_hold_reinvite_keeps_the_call_up(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge()
    rtp_peer.start_sending(seconds=120)
    sipp = await trunk(e2e, "trunk_hold_refused.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP packets at the trunk")
    session = bridge.calls.outbound[call.call_id]
    held = await call.hold(True)  # Matrix still gets its answer
    assert "a=inactive" in held["content"]["description"]["sdp"]
    await eventually(lambda: "488 Not Acceptable Here" in sipp.messages, 20, "the 488 to the re-INVITE")
    await asyncio.sleep(2.0)
    # Still up on both sides, the SIP leg on its previous (sendrecv) session; no hangup anywhere.
    assert session.machine.state.value == "answered" and call.call_id in bridge.calls.outbound
    assert not session.media.rtp_leg.hold and session.media.webrtc_connection_state == "connected"
    assert not [ev for ev in alice.events if ev.get("type") == "m.call.hangup"
                and ev.get("content", {}).get("call_id") == call.call_id]
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()  # the BYE came after the refused re-INVITE
    await assert_released(bridge)
    assert (await call_log_row(bridge, call.call_id)).end_reason == "matrix_user_hangup"
