"""RFC 4028 session timers end to end (real Synapse, the bridge, sipp as the trunk, an aiortc Matrix caller):
a trunk that goes silent is hung up at expiry (BYE to SIP, m.call.hangup to Matrix), and the bridge's refreshes
(UPDATE, or a re-INVITE with the unchanged SDP when the trunk does not allow UPDATE) keep a call up.

The trunk's 2xx lowers the interval to a few seconds (a UAS may; the bridge's own Min-SE stays at 90 s)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from tests.e2e.conftest import E2E, GHOST, SCENARIOS, assert_released
from tests.harness.rtp_peer import RtpPeer
from tests.harness.sipp import SippProcess

pytestmark = pytest.mark.e2e

REFRESH = """  <recv request="{method}" timeout="10000"/>
  <send><![CDATA[
SIP/2.0 200 OK
[last_Via:]
[last_From:]
[last_To:]
[last_Call-ID:]
[last_CSeq:]
Contact: <sip:trunk@[local_ip]:[local_port];transport=[transport]>
Session-Expires: 4;refresher=uac
Require: timer
{body}
]]></send>
{ack}"""
SDP_BODY = """Content-Type: application/sdp
Content-Length: [len]

v=0
o=trunk 1 1 IN IP4 127.0.0.1
s=-
c=IN IP4 127.0.0.1
t=0 0
m=audio [rtp_port] RTP/AVP 0 101
a=rtpmap:0 PCMU/8000
a=rtpmap:101 telephone-event/8000
a=ptime:20
a=sendrecv
"""


async def trunk(e2e: E2E, rtp_port: int, *, expires: str, allow: str, middle: str) -> SippProcess:
    text = (SCENARIOS / "trunk_answer_session_timer.xml").read_text()
    text = text.replace("SESSION_EXPIRES", expires).replace("ALLOW_LIST", allow).replace("MIDDLE", middle)
    path = e2e.tmp / "trunk_answer_session_timer.xml"
    path.write_text(text)
    sipp = SippProcess(path, local_port=e2e.plan.trunk_port, timeout=60, workdir=e2e.tmp / "sipp",
                       extra_args=["-key", "rtp_port", str(rtp_port)])
    await e2e.own(sipp).start()
    return sipp


async def test_trunk_that_goes_silent_is_hung_up_at_session_expiry_on_both_sides(
    e2e: E2E, rtp_peer: RtpPeer
) -> None:
    bridge = await e2e.bridge()
    # the trunk is the refresher (refresher=uas in its 2xx) and never refreshes: a dead far end
    sipp = await trunk(e2e, rtp_peer.port, expires="6;refresher=uas", allow="INVITE, ACK, BYE, CANCEL",
                       middle="")
    alice = await e2e.client("alice")
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    answered = time.monotonic()
    hangup = await call.wait_hangup_or_reject(timeout=15)
    elapsed = time.monotonic() - answered
    assert hangup["type"] == "m.call.hangup"
    # the non-refresher ends min(32, 6/3) = 2 s before the 6 s expiry
    assert 3.0 <= elapsed <= 8.0, elapsed
    assert await sipp.wait() == 0, sipp.report()  # the BYE reached the trunk
    assert "BYE sip:" in sipp.messages
    await assert_released(bridge)
    row = await bridge.matrix.call_log.get(call.call_id)
    assert row is not None and row.end_reason == "sip_dialog_lost"


@pytest.mark.parametrize("method", ["UPDATE", "INVITE"])
async def test_bridge_refreshes_keep_the_call_up_past_the_interval(
    e2e: E2E, rtp_peer: RtpPeer, method: str
) -> None:
    bridge = await e2e.bridge()
    allow = "INVITE, ACK, BYE, CANCEL" + (", UPDATE" if method == "UPDATE" else "")
    ack = '  <recv request="ACK" crlf="true"/>' if method == "INVITE" else ""
    body = SDP_BODY if method == "INVITE" else "Content-Length: 0\n"
    # the bridge refreshes (refresher=uac: the UAC of each transaction, the bridge) every 2 s; two are answered
    middle = "\n".join(REFRESH.format(method=method, body=body, ack=ack) for _ in range(2))
    sipp = await trunk(e2e, rtp_peer.port, expires="4;refresher=uac", allow=allow, middle=middle)
    alice = await e2e.client("alice")
    room = await alice.create_dm(GHOST)
    await alice.wait_for_membership(room, GHOST, "join", timeout=30)
    call = await alice.place_call(room, GHOST)
    await call.wait_answer(timeout=30)
    session = bridge.calls.outbound[call.call_id]
    assert session.dialog is not None and session.dialog.session_timer is not None
    timer = session.dialog.session_timer
    for _ in range(100):  # two refreshes: past the 4 s interval
        if timer.refreshes >= 2:
            break
        await asyncio.sleep(0.1)
    assert timer.refreshes >= 2
    assert call.call_id in bridge.calls.outbound  # still up
    await call.hangup()
    assert await sipp.wait() == 0, sipp.report()
    assert len(re.findall(rf"^{method} sip:", sipp.messages, re.M)) == (3 if method == "INVITE" else 2)
    if method == "INVITE":
        # RFC 4028: the re-INVITE repeats the session description unchanged (same o= line as the first INVITE;
        # the log holds every copy of the bridge's SDP, the trunk's own o= lines are left out)
        ours = [line for line in re.findall(r"^o=.*$", sipp.messages, re.M) if not line.startswith("o=trunk")]
        assert len(ours) >= 3 and len(set(ours)) == 1, ours
    await assert_released(bridge)

