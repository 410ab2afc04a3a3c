"""Builds one bridged call: MatrixPeer (aiortc) <-> CallMedia <-> RtpPeer (plain RTP)."""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field

from bridge.media.call_media import CallMedia
from bridge.media.ports import PortAllocator
from bridge.media.settings import MediaSettings

from .rtp_peer import RtpPeer
from .webrtc_peer import MatrixPeer, strip_candidates

log = logging.getLogger("test.call_media")


def free_port_range(size: int = 20) -> tuple[int, int]:
    """An even-aligned range starting at a port the OS just handed out (ranges of parallel runs differ)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    start = min(port - port % 2, 65534 - size)
    return start, start + size


def make_media(settings: MediaSettings | None = None) -> tuple[CallMedia, PortAllocator]:
    settings = settings or MediaSettings()
    settings.port_start, settings.port_end = free_port_range()
    ports = PortAllocator(settings.rtp_host, settings.port_start, settings.port_end)
    return CallMedia(settings, ports, log=logging.LoggerAdapter(log, {"call_id": "test"})), ports


def sip_sdp(port: int, codecs: str = "0 8 101", *, direction: str = "sendrecv") -> bytes:
    names = {"0": "PCMU/8000", "8": "PCMA/8000", "9": "G722/8000", "101": "telephone-event/8000"}
    lines = [
        "v=0",
        "o=- 42 1 IN IP4 127.0.0.1",
        "s=-",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        f"m=audio {port} RTP/AVP {codecs}",
        *[f"a=rtpmap:{pt} {names[pt]}" for pt in codecs.split()],
        "a=fmtp:101 0-15",
        "a=ptime:20",
        f"a={direction}",
    ]
    return ("\r\n".join(lines) + "\r\n").encode()


@dataclass
class Call:
    media: CallMedia
    ports: PortAllocator
    matrix: MatrixPeer
    rtp: RtpPeer
    rtp_target: tuple[str, int] = ("127.0.0.1", 0)
    failures: list[str] = field(default_factory=list)


async def connect_outbound(call: Call, *, sip_codecs: str = "0 101", announced_port: int | None = None) -> None:
    """Matrix -> SIP: Matrix offer (no candidates, trickled later), SIP answer, our Matrix answer."""
    offer, candidates = strip_candidates(await call.matrix.offer())
    await call.media.set_webrtc_offer(offer)
    host, port = await call.media.open_rtp()
    call.media.sip_offer()
    call.media.apply_sip_answer(sip_sdp(announced_port or call.rtp.port, sip_codecs))
    answer = await call.media.create_webrtc_answer()
    await call.matrix.accept(answer)
    await call.media.add_webrtc_candidates([*candidates, {"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}])
    call.media.start()
    call.rtp_target = (host, port)


async def connect_inbound(call: Call, *, sip_codecs: str = "0 8 101") -> None:
    """SIP -> Matrix: SIP offer, our SIP answer, our Matrix offer, Matrix answer."""
    host, port = await call.media.open_rtp()
    call.media.answer_sip_offer(sip_sdp(call.rtp.port, sip_codecs))
    offer = await call.media.create_webrtc_offer()
    answer = await call.matrix.answer(offer)
    await call.media.set_webrtc_answer(answer)
    call.media.start()
    call.rtp_target = (host, port)
