"""Server-side digest check against an independent client: sipp answers our 401 challenge.

The test plays a registrar on a loopback UDP socket with only the pure SIP pieces (parse_message,
Response.serialize, make_challenge, verify_authorization), so sipp also proves that it accepts our
serialized responses and that we parse its requests.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from bridge.sip.digest import make_challenge, parse_authorization, verify_authorization
from bridge.sip.message import Headers, Request, Response, parse_message, reason_phrase
from tests.harness.sipp import SippProcess

REGISTER_WITH_AUTH = """<?xml version="1.0" encoding="ISO-8859-1" ?>
<scenario name="register_with_auth">
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:[service]@bridge.test>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@bridge.test>
Call-ID: [call_id]
CSeq: 1 REGISTER
Contact: <sip:[service]@[local_ip]:[local_port]>
Max-Forwards: 70
Expires: 300
Content-Length: 0

]]></send>
  <recv response="401" auth="true"/>
  <send retrans="500"><![CDATA[
REGISTER sip:[remote_ip]:[remote_port] SIP/2.0
Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
From: <sip:[service]@bridge.test>;tag=[pid]SIPpTag[call_number]
To: <sip:[service]@bridge.test>
Call-ID: [call_id]
CSeq: 2 REGISTER
Contact: <sip:[service]@[local_ip]:[local_port]>
[authentication]
Max-Forwards: 70
Expires: 300
Content-Length: 0

]]></send>
  <recv response="200"/>
</scenario>
"""


def _reply(req: Request, status: int, extra: list[tuple[str, str]]) -> bytes:
    h = Headers()
    for via in req.headers.get_all("Via"):
        h.add("Via", via)
    h.add("From", req.headers.get("From") or "")
    to = req.to
    to.params.setdefault("tag", "registrar1")
    h.add("To", str(to))
    h.add("Call-ID", req.call_id)
    h.add("CSeq", req.headers.get("CSeq") or "")
    for name, value in extra:
        h.add(name, value)
    return Response(status, reason_phrase(status), h).serialize()


async def _recv_request(sock: socket.socket) -> tuple[Request, tuple[str, int]]:
    loop = asyncio.get_running_loop()
    data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, 65535), 20)
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg, addr


@pytest.mark.parametrize("qop", [True, False], ids=["qop-auth", "no-qop"])
async def test_sipp_digest_response_to_our_challenge_verifies(tmp_path: Path, qop: bool) -> None:
    scenario = tmp_path / "register_with_auth.xml"
    scenario.write_text(REGISTER_WITH_AUTH)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    sipp = SippProcess(
        scenario,
        remote=("127.0.0.1", port),
        service="alice",
        extra_args=["-au", "alice", "-ap", "secret"],
        workdir=tmp_path,
        timeout=30,
    )
    loop = asyncio.get_running_loop()
    try:
        await sipp.start()
        challenge, nonce = make_challenge("bridge.test", qop=qop)
        first, addr = await _recv_request(sock)
        assert first.method == "REGISTER" and "Authorization" not in first.headers
        await loop.sock_sendto(sock, _reply(first, 401, [("WWW-Authenticate", challenge)]), addr)

        second, addr = await _recv_request(sock)
        while "Authorization" not in second.headers:  # a retransmission of the first REGISTER
            await loop.sock_sendto(sock, _reply(second, 401, [("WWW-Authenticate", challenge)]), addr)
            second, addr = await _recv_request(sock)
        auth = second.headers.get("Authorization") or ""
        assert ("qop" in parse_authorization(auth)) is qop

        def verify(password: str, *, nonce_ok: bool = True) -> str | None:
            return verify_authorization(
                auth,
                method="REGISTER",
                password_for=lambda user, realm: password if (user, realm) == ("alice", "bridge.test") else None,
                nonce_ok=lambda n: nonce_ok and n == nonce,
                request_uri=second.uri,
            )

        assert verify("secret") == "alice"
        assert verify("wrong") is None
        assert verify("secret", nonce_ok=False) is None

        await loop.sock_sendto(sock, _reply(second, 200, [("Contact", second.headers.get("Contact") or "")]), addr)
        assert await sipp.wait() == 0, sipp.report()
    finally:
        await sipp.aclose()
        sock.close()
