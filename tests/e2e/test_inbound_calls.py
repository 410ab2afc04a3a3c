"""Phones calling Matrix users, end to end: sipp as the phone (streaming RTP from a symmetric-RTP peer),
real Synapse, the bridge, and aiortc-based Matrix clients that join the portal and answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import E2E, SCENARIOS, assert_released, eventually
from tests.harness.matrix_client import IncomingCall, MatrixTestClient
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e

DIALLED = "18005550100"
CALLER = "15557654321"
CALLER_GHOST = f"@sip_{CALLER}:bridge.test"
ALICE = "@alice:bridge.test"
GOOD_SDP = ("v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")


def routes(**bridge: Any) -> Callable[[dict[str, Any]], None]:
    def apply(data: dict[str, Any]) -> None:
        data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": [ALICE]}]
        data["bridge"].update(bridge)

    return apply


async def phone(e2e: E2E, scenario: str, *args: str, caller: str = CALLER, name: str = "Bob Phone",
                host: str = "127.0.0.1", calls: int = 1, rate: float | None = None,
                replace: dict[str, str] | None = None) -> SippProcess:
    path = SCENARIOS / scenario
    if replace:
        text = path.read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        path = e2e.tmp / f"{len(list(e2e.tmp.glob('*.xml')))}-{scenario}"
        path.write_text(text)
    sipp = SippProcess(path, remote=("127.0.0.1", e2e.plan.sip_port), host=host, service=DIALLED, calls=calls,
                       rate=rate, timeout=90,
                       extra_args=["-key", "caller", caller, "-key", "caller_name", name, *args],
                       workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    return sipp


async def alice_client(e2e: E2E, device_id: str | None = None) -> MatrixTestClient:
    client = await e2e.client("alice", device_id=device_id)
    await client.start_sync(auto_join=True)
    return client


async def test_phone_call_rings_element_with_audio_both_ways_and_caller_bye_ends_it(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=60)
    sipp = await phone(e2e, "caller_talk.xml", "-key", "rtp_port", str(rtp_peer.port), "-d", "4000")
    call = await alice.wait_incoming_call(timeout=40)
    invite = call.invite["content"]
    assert invite["version"] == "1" and invite["invitee"] == ALICE and invite["lifetime"] == 60000
    assert invite["party_id"] and "a=candidate" in invite["offer"]["sdp"]
    assert call.invite["sender"] == CALLER_GHOST
    eoc = await alice.wait_for_event(call.room_id, lambda ev: ev.get("type") == "m.call.candidates"
                                     and ev["sender"] == CALLER_GHOST, timeout=10)
    assert eoc["content"]["candidates"] == [{"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]
    profile = await alice.request("GET", f"/profile/{CALLER_GHOST}/displayname")
    assert profile["displayname"] == "Bob Phone"
    await call.answer()
    select = await call.wait_select_answer(timeout=15)
    assert select["content"]["selected_party_id"] == alice.party_id
    await call.wait_for_tone(1000.0, timeout=30, min_frames=50)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP packets at the phone")
    hangup = await call.wait_hangup(timeout=30)
    assert hangup["content"]["reason"] == "user_hangup"
    assert await sipp.wait() == 0, sipp.report()
    assert "SIP/2.0 180 Ringing" in sipp.messages
    await assert_released(bridge)


async def test_dtmf_from_the_phone_reaches_element_as_rfc4733_events(e2e: E2E, rtp_peer: RtpPeer) -> None:
    await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=60)
    sipp = await phone(e2e, "caller_talk.xml", "-key", "rtp_port", str(rtp_peer.port), "-d", "6000")
    call = await alice.wait_incoming_call(timeout=40)
    assert call.invite["content"]["capabilities"]["m.call.dtmf"] is True
    await call.answer()
    await call.wait_for_tone(1000.0, timeout=30, min_frames=25)
    rtp_peer.send_dtmf("4#")  # the phone's telephone-event PT 101, as its INVITE offered
    await call.wait_for_dtmf("4#", timeout=20)
    await call.wait_hangup(timeout=30)
    assert await sipp.wait() == 0, sipp.report()


async def test_matrix_hangup_after_answer_sends_bye_to_the_phone(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=60)
    sipp = await phone(e2e, "caller_wait_bye.xml", "-key", "rtp_port", str(rtp_peer.port))
    call = await alice.wait_incoming_call(timeout=40)
    await call.answer()
    await call.wait_for_frames(25, timeout=30)
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


@pytest.mark.parametrize(("how", "status"), [("reject", "603"), ("busy", "486")])
async def test_matrix_refusal_maps_to_sip_status(e2e: E2E, how: str, status: str) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    sipp = await phone(e2e, "caller_expect_final.xml", replace={"STATUS": status, "BODY": GOOD_SDP})
    call = await alice.wait_incoming_call(timeout=40)
    if how == "reject":
        await call.reject()
    else:
        await call.hangup("user_busy")
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


async def test_no_answer_within_lifetime_is_480_and_invite_timeout(e2e: E2E) -> None:
    bridge = await e2e.bridge(routes(invite_lifetime_ms=5000))
    alice = await alice_client(e2e)
    sipp = await phone(e2e, "caller_expect_final.xml", replace={"STATUS": "480", "BODY": GOOD_SDP})
    call = await alice.wait_incoming_call(timeout=40)
    hangup = await call.wait_hangup(timeout=20)
    assert hangup["content"]["reason"] == "invite_timeout"
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


async def test_user_not_joining_before_ring_timeout_is_480(e2e: E2E) -> None:
    bridge = await e2e.bridge(routes(ring_timeout_s=5))
    alice = await e2e.client("alice")
    await alice.start_sync(auto_join=False)
    sipp = await phone(e2e, "caller_expect_final.xml", replace={"STATUS": "480", "BODY": GOOD_SDP})
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


async def test_sip_cancel_while_ringing_hangs_up_the_matrix_call(e2e: E2E) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    sipp = await phone(e2e, "caller_cancel.xml", "-key", "rtp_port", "40000", "-d", "1500")
    call = await alice.wait_incoming_call(timeout=40)
    hangup = await call.wait_hangup(timeout=20)
    assert hangup["content"]["reason"] == "user_hangup"
    assert await sipp.wait() == 0, sipp.report()  # 200 for the CANCEL, 487 for the INVITE
    await assert_released(bridge)


async def test_two_devices_answering_first_wins_and_second_never_connects(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge(routes())
    first = await alice_client(e2e, device_id="DEVICEONE")
    second = await e2e.client("alice", device_id="DEVICETWO")
    await second.start_sync(auto_join=False)
    rtp_peer.start_sending(seconds=60)
    sipp = await phone(e2e, "caller_wait_bye.xml", "-key", "rtp_port", str(rtp_peer.port))
    call1 = await first.wait_incoming_call(timeout=40)
    call2: IncomingCall = await second.wait_incoming_call(call1.room_id, timeout=20)
    await call1.answer()
    await call1.wait_select_answer(timeout=15)
    await call2.answer()
    select = await call2.wait_select_answer(timeout=15)
    assert select["content"]["selected_party_id"] == first.party_id != second.party_id
    await call1.wait_for_frames(50, timeout=30)
    await asyncio.sleep(3)
    assert "connected" not in call2.connection_states and call2.frames_received == 0
    await call1.hangup()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


async def test_offerless_invite_gets_offer_in_200_and_answer_from_ack(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=60)
    sipp = await phone(e2e, "caller_offerless.xml", "-key", "rtp_port", str(rtp_peer.port), "-d", "4000")
    call = await alice.wait_incoming_call(timeout=40)
    await call.answer()
    await call.wait_for_tone(1000.0, timeout=30, min_frames=50)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP packets at the phone")
    await call.wait_hangup(timeout=30)
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


async def test_untrusted_source_gets_403_and_leaves_no_trace_in_matrix(e2e: E2E) -> None:
    def untrusted(data: dict[str, Any]) -> None:
        routes()(data)
        data["sip"]["inbound"]["trusted_sources"] = ["127.0.0.2/32"]

    bridge = await e2e.bridge(untrusted)
    alice = await alice_client(e2e)
    sipp = await phone(e2e, "caller_expect_final.xml", replace={"STATUS": "403", "BODY": GOOD_SDP})
    assert await sipp.wait() == 0, sipp.report()
    await asyncio.sleep(2)
    assert await bridge.matrix.tables.portal.all_for_user(ALICE) == []
    assert not bridge.calls.sessions() and bridge.ua.dialogs == []
    with pytest.raises(TimeoutError):
        await alice.wait_incoming_call(timeout=2)


@pytest.mark.parametrize("sdp", [
    "v=0\r\nthis is not sdp\r\n",
    GOOD_SDP.replace("m=audio 40000 RTP/AVP 0 101", "m=audio 99999999 RTP/AVP 0"),
    GOOD_SDP.replace("RTP/AVP 0 101", "RTP/AVP 18").replace("a=rtpmap:0 PCMU/8000", "a=rtpmap:18 G729/8000"),
])
async def test_hostile_or_unusable_sdp_gets_488(e2e: E2E, sdp: str) -> None:
    bridge = await e2e.bridge(routes())
    sipp = await phone(e2e, "caller_expect_final.xml", replace={"STATUS": "488", "BODY": sdp})
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


async def test_invite_flood_from_one_source_is_limited_while_a_real_call_works(e2e: E2E, rtp_peer: RtpPeer) -> None:
    def limited(data: dict[str, Any]) -> None:
        routes()(data)
        data["sip"]["inbound"]["trusted_sources"] = ["127.0.0.0/8"]
        data["sip"]["inbound"]["rate_limit"] = {"per_source_per_second": 2, "burst": 4}

    bridge = await e2e.bridge(limited)
    alice = await alice_client(e2e)
    # The flood dials a number with no route; past the burst the bridge answers 503 without any work.
    flood_text = (SCENARIOS / "caller_expect_final.xml").read_text().replace("BODY", GOOD_SDP).replace(
        '<recv response="STATUS" timeout="60000"/>',
        '<recv response="404" optional="true" next="ack"/>\n  <recv response="503" timeout="60000"/>\n'
        '  <label id="ack"/>')
    flood_path = e2e.tmp / "flood.xml"
    flood_path.write_text(flood_text)
    flood = SippProcess(flood_path, remote=("127.0.0.1", e2e.plan.sip_port), host="127.0.0.3", service="999",
                        calls=60, rate=60, timeout=60, workdir=e2e.tmp / "sipp",
                        extra_args=["-key", "caller", "666", "-key", "caller_name", "Flood", "-l", "60"])
    await e2e.own(flood).start()
    rtp_peer.start_sending(seconds=60)
    legit = await phone(e2e, "caller_talk.xml", "-key", "rtp_port", str(rtp_peer.port), "-d", "3000")
    call = await alice.wait_incoming_call(timeout=40)
    await call.answer()
    await call.wait_for_frames(25, timeout=30)
    assert await legit.wait() == 0, legit.report()
    assert await flood.wait() == 0, flood.report()
    refused = flood.messages.count("SIP/2.0 503 Service Unavailable")
    assert refused >= 40, f"only {refused} of 60 flood INVITEs were rate limited"
    await assert_released(bridge)


async def test_withheld_caller_id_rings_as_unknown_caller(e2e: E2E) -> None:
    await e2e.bridge(routes())
    alice = await alice_client(e2e)
    sipp = await phone(e2e, "caller_expect_final.xml", caller="anonymous", name="Anonymous",
                       replace={"STATUS": "603", "BODY": GOOD_SDP})
    call = await alice.wait_incoming_call(timeout=40)
    assert call.invite["sender"] == "@sip_unknown:bridge.test"
    profile = await alice.request("GET", "/profile/@sip_unknown:bridge.test/displayname")
    assert profile["displayname"] == "Unknown caller"
    await call.reject()
    assert await sipp.wait() == 0, sipp.report()


async def test_number_routed_to_two_users_rings_both_and_one_answer_wins(e2e: E2E, rtp_peer: RtpPeer) -> None:
    carol_id = "@carol:bridge.test"

    def two_users(data: dict[str, Any]) -> None:
        data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": [ALICE, carol_id]}]

    bridge = await e2e.bridge(two_users)
    alice = await alice_client(e2e)
    carol = await e2e.client("carol")
    await carol.start_sync(auto_join=True)
    rtp_peer.start_sending(seconds=60)
    sipp = await phone(e2e, "caller_wait_bye.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice_call = await alice.wait_incoming_call(timeout=40)
    carol_call = await carol.wait_incoming_call(timeout=40)
    assert alice_call.room_id != carol_call.room_id  # each user rings in their own portal
    await alice_call.reject()  # one user declining does not end the call for the other
    await asyncio.sleep(1)
    assert "SIP/2.0 603" not in sipp.messages
    await carol_call.answer()
    await carol_call.wait_select_answer(timeout=15)
    await carol_call.wait_for_tone(1000.0, timeout=30, min_frames=50)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP packets at the phone")
    await carol_call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    assert sipp.messages.count("SIP/2.0 200 OK") >= 1 and "SIP/2.0 603" not in sipp.messages
    await assert_released(bridge)


async def test_number_routed_to_two_users_stops_the_other_ringing_when_one_answers(e2e: E2E) -> None:
    carol_id = "@carol:bridge.test"

    def two_users(data: dict[str, Any]) -> None:
        data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": [ALICE, carol_id]}]

    bridge = await e2e.bridge(two_users)
    alice = await alice_client(e2e)
    carol = await e2e.client("carol")
    await carol.start_sync(auto_join=True)
    sipp = await phone(e2e, "caller_wait_bye.xml", "-key", "rtp_port", "40000")
    alice_call = await alice.wait_incoming_call(timeout=40)
    carol_call = await carol.wait_incoming_call(timeout=40)
    await carol_call.answer()
    hangup = await alice_call.wait_hangup(timeout=15)  # alice's device stops ringing
    assert hangup["content"]["call_id"] == alice_call.call_id
    await carol_call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


async def test_phone_putting_call_on_hold_gets_recvonly_answer_and_rtp_stops(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=60)
    sipp = await phone(e2e, "caller_hold.xml", "-key", "rtp_port", str(rtp_peer.port), "-d", "3000")
    call = await alice.wait_incoming_call(timeout=40)
    await call.answer()
    await eventually(lambda: rtp_peer.received >= 25, 20, "RTP before hold")
    # The scenario fails unless the hold re-INVITE is answered 200 with a=recvonly; then we send nothing.
    await eventually(lambda: "hold answered with a=recvonly" in sipp.logs, 20, "hold re-INVITE answered")
    await asyncio.sleep(0.5)
    held_at = rtp_peer.received
    await asyncio.sleep(1.5)
    assert rtp_peer.received - held_at <= 2, "RTP kept flowing to a phone that put us on hold"
    await call.wait_hangup(timeout=30)
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)


def auth_only(data: dict[str, Any]) -> None:
    routes()(data)
    data["sip"]["inbound"]["trusted_sources"] = ["127.0.0.2/32"]  # the caller (127.0.0.1) is not trusted
    data["sip"]["inbound"]["accounts"] = [{"username": "pbx", "password": "s3cret"}]


async def test_untrusted_caller_with_a_digest_account_is_challenged_and_rings(e2e: E2E) -> None:
    bridge = await e2e.bridge(auth_only)
    alice = await alice_client(e2e)
    sipp = await phone(e2e, "caller_auth.xml", "-au", "pbx", "-ap", "s3cret",
                       replace={"STATUS": "603", "BODY": GOOD_SDP})
    call = await alice.wait_incoming_call(timeout=40)  # authenticated: the call rings
    await call.reject()
    assert await sipp.wait() == 0, sipp.report()
    assert "SIP/2.0 401 Unauthorized" in sipp.messages and "WWW-Authenticate: Digest" in sipp.messages
    await assert_released(bridge)


async def test_wrong_digest_password_gets_403(e2e: E2E) -> None:
    bridge = await e2e.bridge(auth_only)
    sipp = await phone(e2e, "caller_auth.xml", "-au", "pbx", "-ap", "wrong",
                       replace={"STATUS": "403", "BODY": GOOD_SDP})
    assert await sipp.wait() == 0, sipp.report()
    assert not bridge.calls.sessions()


class _Recorder(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.datagrams: list[bytes] = []

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.datagrams.append(data)


async def test_no_sip_request_makes_the_bridge_call_out_toll_fraud(e2e: E2E) -> None:
    """Inbound INVITEs (trusted or not, routed or not, for any number) can only ring Matrix users."""
    bridge = await e2e.bridge(routes())
    loop = asyncio.get_running_loop()
    trunk_transport, trunk = await loop.create_datagram_endpoint(
        _Recorder, local_addr=("127.0.0.1", e2e.plan.trunk_port))
    try:
        for dialled in ("15559998888", "011441234567890", "19005550123"):
            sipp = SippProcess(SCENARIOS / "caller_expect_final.xml", remote=("127.0.0.1", e2e.plan.sip_port),
                               service=dialled, timeout=30, workdir=e2e.tmp / "sipp",
                               extra_args=["-key", "caller", CALLER, "-key", "caller_name", "Fraud"])
            text = sipp.scenario_path.read_text().replace("STATUS", "404").replace("BODY", GOOD_SDP)
            sipp.scenario_path = e2e.tmp / f"fraud-{dialled}.xml"
            sipp.scenario_path.write_text(text)
            await e2e.own(sipp).start()
            assert await sipp.wait() == 0, sipp.report()
        await asyncio.sleep(1)
        assert trunk.datagrams == [], "an inbound INVITE caused traffic towards the trunk"
        assert bridge.ua.dialogs == [] and not bridge.calls.sessions()
    finally:
        trunk_transport.close()


async def test_trusted_p_asserted_identity_names_the_caller(e2e: E2E) -> None:
    await e2e.bridge(routes())
    alice = await alice_client(e2e)
    pai = 'P-Asserted-Identity: "Carrier Verified" <sip:+15550001111@127.0.0.1>\nMax-Forwards: 70\nContent-Type'
    sipp = await phone(e2e, "caller_expect_final.xml", caller="spoofed", replace={
        "STATUS": "603", "BODY": GOOD_SDP, "Max-Forwards: 70\nContent-Type": pai})
    call = await alice.wait_incoming_call(timeout=40)
    assert call.invite["sender"] == "@sip_15550001111:bridge.test"
    await call.reject()
    assert await sipp.wait() == 0, sipp.report()


async def test_matrix_user_leaving_the_room_after_answer_sends_bye(e2e: E2E, rtp_peer: RtpPeer) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=60)
    sipp = await phone(e2e, "caller_wait_bye.xml", "-key", "rtp_port", str(rtp_peer.port))
    call = await alice.wait_incoming_call(timeout=40)
    await call.answer()
    await call.wait_for_frames(25, timeout=30)
    await alice.leave(call.room_id)
    assert await sipp.wait() == 0, sipp.report()  # the BYE reached the phone
    await assert_released(bridge)


async def test_matrix_callee_hold_reinvites_phone_inactive_and_resume_restores_audio(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge(routes())
    alice = await alice_client(e2e)
    rtp_peer.start_sending(seconds=120)
    sipp = await phone(e2e, "caller_held.xml", "-key", "rtp_port", str(rtp_peer.port))
    call = await alice.wait_incoming_call(timeout=40)
    await call.answer()
    await call.wait_for_tone(1000.0, timeout=30, min_frames=50)
    await eventually(lambda: rtp_peer.received >= 50, 20, "RTP packets at the phone")
    media = bridge.calls.inbound[call.call_id].media

    held = await call.hold(True)  # sipp checks the re-INVITE carries a=inactive
    assert held["content"]["party_id"] == call.caller_party_id
    assert "a=inactive" in held["content"]["description"]["sdp"]
    await eventually(lambda: media.rtp_leg.hold, 20, "the phone's 200 to the hold re-INVITE")
    await asyncio.sleep(0.5)
    at_phone, at_matrix = rtp_peer.received, call.frames_received
    await asyncio.sleep(2.0)
    assert rtp_peer.received - at_phone <= 2, "RTP kept flowing to the phone while held"
    assert call.frames_received - at_matrix <= 10, "audio kept flowing to Matrix while held"

    await call.hold(False)  # a=sendrecv
    await eventually(lambda: not media.rtp_leg.hold, 20, "the phone's 200 to the resume re-INVITE")
    at_phone, at_matrix = rtp_peer.received, call.frames_received
    await eventually(lambda: rtp_peer.received - at_phone >= 50, 20, "RTP at the phone after resume")
    await call.wait_for_tone(1000.0, timeout=20, min_frames=at_matrix + 50)

    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    await assert_released(bridge)
