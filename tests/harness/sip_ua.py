"""Helpers to run real `UserAgent`s on loopback in tests (ephemeral ports only)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from bridge.sip.server import ServerInvite, ServerRequest
from bridge.sip.settings import ListenAddress, SipSettings
from bridge.sip.ua import UserAgent

SDP_OFFER = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)
SDP_ANSWER = SDP_OFFER.replace(b"40000", b"40002")


def fast_settings(*transports: str, host: str = "127.0.0.1", t1: float = 0.05, **kwargs: Any) -> SipSettings:
    """Settings with small timers (T1 = 50 ms) and ephemeral ports for every transport given."""
    listen = [ListenAddress(t, host, 0) for t in (transports or ("udp",))]
    kwargs.setdefault("t2", 0.4)
    kwargs.setdefault("t4", 0.5)
    return SipSettings(listen=listen, t1=t1, **kwargs)


@asynccontextmanager
async def running_ua(settings: SipSettings, *,
                     on_invite: Callable[[ServerInvite], Awaitable[None]] | None = None,
                     on_request: Callable[[ServerRequest], Awaitable[None]] | None = None,
                     ) -> AsyncIterator[UserAgent]:
    ua = UserAgent(settings, on_invite=on_invite, on_request=on_request)
    await ua.start()
    try:
        yield ua
    finally:
        await ua.stop()


def uri_of(ua: UserAgent, transport: str = "udp", user: str = "bob") -> str:
    host, port = ua.bound_address(transport)
    hostpart = f"[{host}]" if ":" in host else host
    suffix = "" if transport == "udp" else f";transport={transport}"
    return f"sip:{user}@{hostpart}:{port}{suffix}"


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until predicate() holds (generous timeout: tests run on a loaded 2-core box)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.01)


class RawUdpPeer(asyncio.DatagramProtocol):
    """A bare UDP socket that records every datagram (arrival time, bytes) and never answers by itself."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.port = 0
        self._event = asyncio.Event()

    @classmethod
    async def open(cls, host: str = "127.0.0.1") -> RawUdpPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(cls, local_addr=(host, 0))
        assert peer.transport is not None
        peer.port = int(peer.transport.get_extra_info("sockname")[1])
        return peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.received.append((asyncio.get_running_loop().time(), data))
        self._event.set()

    def send(self, data: bytes | str, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data.encode() if isinstance(data, str) else data, addr)

    def messages(self, start: str = "") -> list[tuple[float, bytes]]:
        return [(t, d) for t, d in self.received if d.decode(errors="replace").startswith(start)]

    async def wait_for_message(self, start: str, count: int = 1, timeout: float = 10.0) -> list[bytes]:
        await wait_for(lambda: len(self.messages(start)) >= count, timeout)
        return [d for _, d in self.messages(start)]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def raw_request(method: str, target: tuple[str, int], *, via_port: int, branch: str = "z9hG4bKraw1",
                call_id: str = "raw-call-1", cseq: int = 1, to_tag: str | None = None, from_tag: str = "rawtag",
                body: str = "", extra: str = "", rport: bool = True, host: str = "127.0.0.1") -> str:
    """A hand-written request, as a peer on the wire would send it (Content-Length from the body)."""
    to = f"<sip:bob@{host}:{target[1]}>" + (f";tag={to_tag}" if to_tag else "")
    ct = "Content-Type: application/sdp\r\n" if body else ""
    return (f"{method} sip:bob@{host}:{target[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{via_port};branch={branch}{';rport' if rport else ''}\r\n"
            f"From: <sip:raw@{host}>;tag={from_tag}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n"
            f"CSeq: {cseq} {method}\r\nContact: <sip:raw@{host}:{via_port}>\r\nMax-Forwards: 70\r\n"
            f"{extra}{ct}Content-Length: {len(body.encode())}\r\n\r\n{body}")


def self_signed_cert(directory: Any, host: str = "127.0.0.1") -> tuple[str, str]:
    """(certfile, keyfile) of a fresh self-signed certificate for `host` (IP SAN), for TLS tests."""
    import datetime
    import ipaddress
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    d = Path(directory)
    certfile, keyfile = d / "cert.pem", d / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(certfile), str(keyfile)
