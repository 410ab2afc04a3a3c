"""kill -9 of the bridge with calls up, then a restart on the same database: every call the dead process
left is ended on both sides within 5 s of the restart (BYE / CANCEL / final response to SIP, hangup or
reject to Matrix), and the call log says bridge_crash.

The bridge runs as a real process (`python -m bridge`); real Synapse, sipp as the trunk or phone, aiortc
Matrix clients; a raw UDP socket plays a trunk when the test must send its own BYE while the bridge is down.
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.e2e.conftest import E2E, GHOST, SCENARIOS, eventually
from tests.harness.bridge_process import BridgeProcess
from tests.harness.matrix_client import MatrixTestClient
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e

DIALLED = "18005550100"
CALLER = "15557654321"
ALICE = "@alice:bridge.test"
GOOD_SDP = ("v=0\r\no=phone 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n")
RECOVERY_DEADLINE_S = 5.0

Launcher = Callable[[], Awaitable[BridgeProcess]]


@pytest.fixture
async def crashable(e2e: E2E) -> AsyncIterator[Launcher]:
    """Starts the bridge as a process on this test's DB (the appservice sink steps aside meanwhile)."""
    procs: list[BridgeProcess] = []

    async def launch() -> BridgeProcess:
        def overrides(data: dict[str, Any]) -> None:
            data["appservice"]["database"] = f"sqlite:{e2e.tmp / 'bridge.db'}"
            data["sip"]["inbound"]["routes"] = [{"number": DIALLED, "users": [ALICE]}]

        e2e.plan.homeserver_url = e2e.synapse.url
        proc = BridgeProcess(e2e.plan.config_dict(overrides), e2e.tmp)
        procs.append(proc)
        e2e.plan.sink.stop()
        await proc.start()
        return proc

    try:
        yield launch
    finally:
        for proc in procs:
            await proc.terminate()
        if procs:
            e2e.plan.sink.start()


async def sipp_trunk(e2e: E2E, scenario: str, *args: str) -> SippProcess:
    sipp = SippProcess(SCENARIOS / scenario, local_port=e2e.plan.trunk_port, extra_args=list(args), timeout=60,
                       workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    return sipp


async def sipp_phone(e2e: E2E, scenario: str, *args: str, replace: dict[str, str] | None = None) -> SippProcess:
    path = SCENARIOS / scenario
    if replace:
        text = path.read_text()
        for old, new in replace.items():
            text = text.replace(old, new)
        path = e2e.tmp / scenario
        path.write_text(text)
    sipp = SippProcess(path, remote=("127.0.0.1", e2e.plan.sip_port), service=DIALLED, timeout=60,
                       extra_args=["-key", "caller", CALLER, "-key", "caller_name", "Bob Phone", *args],
                       workdir=e2e.tmp / "sipp")
    await e2e.own(sipp).start()
    return sipp


async def portal_room(alice: MatrixTestClient) -> str:
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    return room


async def wait_record(proc: BridgeProcess, call_id: str | None, phase: str, *, answered: bool | None = None,
                      with_room: bool = True) -> None:
    """Until the running bridge has written the call's state as it is now (what recovery will act on)."""
    def written() -> bool:
        for row_call_id, row_phase, row_answered, room_id in proc.query(
                "SELECT call_id, sip_phase, answered, room_id FROM call_state"):
            if ((call_id is None or row_call_id == call_id) and row_phase == phase
                    and (answered is None or bool(row_answered) == answered) and (room_id or not with_room)):
                return True
        return False

    await eventually(written, 15, f"call_state {phase} for {call_id}")


async def assert_reaped(proc: BridgeProcess, call_id: str) -> None:
    """Record gone (both sides ended) and the call log names the crash."""
    await eventually(lambda: not proc.query("SELECT call_id FROM call_state"), 10, "call_state to empty")
    assert proc.query("SELECT end_reason FROM call_log WHERE call_id=?", call_id) == [("bridge_crash",)]


async def crash_and_restart(proc: BridgeProcess) -> float:
    proc.kill9()
    await proc.start()
    return proc.started_at


async def test_kill9_with_answered_outbound_call_byes_the_trunk_and_hangs_up_matrix(
    e2e: E2E, crashable: Launcher, rtp_peer: RtpPeer
) -> None:
    proc = await crashable()
    rtp_peer.start_sending(seconds=60)
    sipp = await sipp_trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await wait_record(proc, call.call_id, "dialog", answered=True)
    restarted = await crash_and_restart(proc)
    assert await sipp.wait(timeout=RECOVERY_DEADLINE_S + 5) == 0, sipp.report()  # BYE received and answered
    assert time.monotonic() - restarted < RECOVERY_DEADLINE_S, proc.log_text()
    end = await call.wait_hangup_or_reject(timeout=RECOVERY_DEADLINE_S)
    assert end["type"] == "m.call.hangup" and end["sender"] == GHOST
    assert end["content"]["call_id"] == call.call_id
    await assert_reaped(proc, call.call_id)


async def test_kill9_with_ringing_outbound_call_cancels_it_and_rejects_the_matrix_invite(
    e2e: E2E, crashable: Launcher
) -> None:
    proc = await crashable()
    sipp = await sipp_trunk(e2e, "trunk_ring_until_cancel.xml")
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await wait_record(proc, call.call_id, "invite_sent")
    await eventually(lambda: "180 Ringing" in sipp.messages, 10, "the trunk to ring")
    restarted = await crash_and_restart(proc)
    # sipp checks that the CANCEL repeats the INVITE's branch and CSeq, then wants the ACK for its 487
    assert await sipp.wait(timeout=RECOVERY_DEADLINE_S + 5) == 0, sipp.report()
    assert time.monotonic() - restarted < RECOVERY_DEADLINE_S + 0.5  # sipp lingers 500 ms after the ACK
    assert "CANCEL_MISMATCH" not in sipp.logs
    end = await call.wait_hangup_or_reject(timeout=RECOVERY_DEADLINE_S)
    assert end["type"] == "m.call.reject"  # version "1", unanswered: Element ignores a callee's hangup
    await assert_reaped(proc, call.call_id)


async def test_kill9_with_ringing_inbound_call_answers_the_invite_480_and_hangs_up_matrix(
    e2e: E2E, crashable: Launcher
) -> None:
    proc = await crashable()
    alice = await e2e.client("alice")
    await alice.start_sync(auto_join=True)
    # the ACK of a non-2xx final repeats the INVITE's branch (17.1.1.3): [branch-4] is message 0's
    ack_via = ("Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]\n"
               "From: \"[caller_name]\" <sip:[caller]@[local_ip]:[local_port]>;tag=[pid]SIPpTag00[call_number]\n"
               "[last_To:]")
    sipp = await sipp_phone(e2e, "caller_expect_final.xml", replace={
        "STATUS": "480", "BODY": GOOD_SDP, ack_via: ack_via.replace("[branch]", "[branch-4]")})
    call = await alice.wait_incoming_call(timeout=40)
    await wait_record(proc, call.call_id, "invite_received")
    restarted = await crash_and_restart(proc)
    assert await sipp.wait(timeout=RECOVERY_DEADLINE_S + 5) == 0, sipp.report()  # got the 480, ACKed it
    assert time.monotonic() - restarted < RECOVERY_DEADLINE_S
    assert re.search(r"^SIP/2\.0 480 ", sipp.messages, re.M), sipp.messages
    hangup = await call.wait_hangup(timeout=RECOVERY_DEADLINE_S)
    assert hangup["content"]["call_id"] == call.call_id
    # the ACK ended the retransmissions at once: without it the record would wait for timer H (6.4 s here)
    await eventually(lambda: not proc.query("SELECT call_id FROM call_state"), 3, "call_state to empty")
    await assert_reaped(proc, call.call_id)
    assert "timer H" not in proc.log_text(limit=10**7)


async def test_kill9_with_answered_inbound_call_byes_the_phone_and_hangs_up_matrix(
    e2e: E2E, crashable: Launcher, rtp_peer: RtpPeer
) -> None:
    proc = await crashable()
    alice = await e2e.client("alice")
    await alice.start_sync(auto_join=True)
    rtp_peer.start_sending(seconds=60)
    sipp = await sipp_phone(e2e, "caller_wait_bye.xml", "-key", "rtp_port", str(rtp_peer.port))
    call = await alice.wait_incoming_call(timeout=40)
    await call.answer()
    await call.wait_select_answer(timeout=15)
    await wait_record(proc, call.call_id, "dialog", answered=True)
    restarted = await crash_and_restart(proc)
    assert await sipp.wait(timeout=RECOVERY_DEADLINE_S + 5) == 0, sipp.report()  # BYE received and answered
    assert time.monotonic() - restarted < RECOVERY_DEADLINE_S
    hangup = await call.wait_hangup(timeout=RECOVERY_DEADLINE_S)
    assert hangup["content"]["call_id"] == call.call_id
    await assert_reaped(proc, call.call_id)


async def test_sip_side_is_reaped_even_when_the_homeserver_is_unreachable_at_restart(
    e2e: E2E, crashable: Launcher, rtp_peer: RtpPeer
) -> None:
    proc = await crashable()
    rtp_peer.start_sending(seconds=60)
    sipp = await sipp_trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await wait_record(proc, call.call_id, "dialog", answered=True)
    proc.kill9()
    with socket.socket() as closed:  # a port nothing listens on: the homeserver is "down"
        closed.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    proc.rewrite_config(lambda data: data["homeserver"].update(address=dead_url))
    await proc.start(wait_ready=False)
    try:
        assert await sipp.wait(timeout=RECOVERY_DEADLINE_S + 5) == 0, sipp.report()  # BYE all the same
        assert time.monotonic() - proc.started_at < RECOVERY_DEADLINE_S, proc.log_text()
        # the Matrix side could not be told: the record stays for the next start to finish the job
        assert [r[0] for r in proc.query("SELECT call_id FROM call_state")] == [call.call_id]
    finally:
        proc.kill9()


async def test_sigterm_ends_calls_and_leaves_no_call_state(e2e: E2E, crashable: Launcher, rtp_peer: RtpPeer) -> None:
    proc = await crashable()
    rtp_peer.start_sending(seconds=60)
    sipp = await sipp_trunk(e2e, "trunk_answer.xml", "-key", "rtp_port", str(rtp_peer.port))
    alice = await e2e.client("alice")
    room = await portal_room(alice)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    await wait_record(proc, call.call_id, "dialog", answered=True)
    assert await proc.terminate() == 0, proc.log_text()
    assert await sipp.wait(timeout=10) == 0, sipp.report()
    assert proc.query("SELECT call_id FROM call_state") == []
    assert proc.query("SELECT end_reason FROM call_log WHERE call_id=?", call.call_id) == [("bridge_shutdown",)]


class RawTrunk:
    """A UDP socket playing the trunk by hand: answers the bridge's INVITE, and can send its own BYE."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", port))
        self.sock.setblocking(False)
        self.port = port
        self.received: list[str] = []

    def close(self) -> None:
        self.sock.close()

    async def recv(self, pred: Callable[[str], bool], timeout: float) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"nothing matching arrived; got: {[m.splitlines()[0] for m in self.received]}")
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), remaining)
            except TimeoutError:
                continue
            text = data.decode()
            self.received.append(text)
            if pred(text):
                return text

    def send(self, text: str, addr: tuple[str, int]) -> None:
        self.sock.sendto(text.replace("\n", "\r\n").encode(), addr)


def header(msg: str, name: str) -> str:
    m = re.search(rf"^{name}:\s*(.*?)\r?$", msg, re.M | re.I)
    assert m, f"no {name} in {msg}"
    return m.group(1)


async def test_trunk_bye_sent_while_the_bridge_was_down_gets_200_after_restart(e2e: E2E, crashable: Launcher) -> None:
    proc = await crashable()
    bridge_addr = ("127.0.0.1", e2e.plan.sip_port)
    trunk = RawTrunk(e2e.plan.trunk_port)
    try:
        alice = await e2e.client("alice")
        room = await portal_room(alice)
        call = await alice.place_call(room, GHOST)
        invite = await trunk.recv(lambda m: m.startswith("INVITE "), 20)
        to = f"{header(invite, 'To')};tag=trunktag1"
        common = (f"Via: {header(invite, 'Via')}\nFrom: {header(invite, 'From')}\nTo: {to}\n"
                  f"Call-ID: {header(invite, 'Call-ID')}\n")
        sdp = "v=0\no=trunk 1 1 IN IP4 127.0.0.1\ns=-\nc=IN IP4 127.0.0.1\nt=0 0\nm=audio 40010 RTP/AVP 0\n"
        trunk.send(f"SIP/2.0 200 OK\n{common}CSeq: {header(invite, 'CSeq')}\n"
                   f"Contact: <sip:trunk@127.0.0.1:{trunk.port}>\nContent-Type: application/sdp\n"
                   f"Content-Length: {len(sdp) + sdp.count(chr(10))}\n\n{sdp}", bridge_addr)
        await trunk.recv(lambda m: m.startswith("ACK "), 10)
        await call.wait_answer(timeout=30)
        await wait_record(proc, call.call_id, "dialog", answered=True)
        proc.kill9()
        # the trunk hangs up while the bridge is down; its BYE (retransmitted as UDP wants) must get 200
        bye = (f"BYE {header(invite, 'Contact').strip('<>')} SIP/2.0\n"
               f"Via: SIP/2.0/UDP 127.0.0.1:{trunk.port};branch=z9hG4bKtrunkbye1\n"
               f"From: {to}\nTo: {header(invite, 'From')}\nCall-ID: {header(invite, 'Call-ID')}\n"
               f"CSeq: 1 BYE\nMax-Forwards: 70\nContent-Length: 0\n\n")
        trunk.send(bye, bridge_addr)
        start = asyncio.create_task(proc.start())

        def resend() -> None:
            trunk.send(bye, bridge_addr)

        while not start.done():
            resend()
            await asyncio.sleep(0.2)
        await start
        resend()
        answer = await trunk.recv(lambda m: m.startswith("SIP/2.0 ") and "BYE" in header(m, "CSeq"), 5)
        assert answer.startswith("SIP/2.0 200 "), answer
        assert not [m for m in trunk.received if m.startswith("SIP/2.0 481")]
        for request in [m for m in trunk.received if m.startswith("BYE ")]:  # recovery's own BYE, if it won
            trunk.send(f"SIP/2.0 200 OK\nVia: {header(request, 'Via')}\nFrom: {header(request, 'From')}\n"
                       f"To: {header(request, 'To')}\nCall-ID: {header(request, 'Call-ID')}\n"
                       f"CSeq: {header(request, 'CSeq')}\nContent-Length: 0\n\n", bridge_addr)
        end = await call.wait_hangup_or_reject(timeout=RECOVERY_DEADLINE_S)
        assert end["type"] == "m.call.hangup"
        await assert_reaped(proc, call.call_id)
    finally:
        trunk.close()
