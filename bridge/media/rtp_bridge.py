"""Two plain RTP legs relayed to each other: a phone call the bridge keeps connecting to another phone after the
Matrix user left it (a transfer the phone system would not do itself). One codec on both legs: packets are passed
through (re-stamped per leg), telephone-events are relayed as events."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from bridge.sip import sdp as sip_sdp

from .errors import MediaError
from .ports import PortAllocator
from .rtp_leg import RtpLeg
from .settings import MediaSettings

TELEPHONE_EVENT_PT = 101


class RtpBridge:
    def __init__(self, settings: MediaSettings, ports: PortAllocator, codec: sip_sdp.Codec, *,
                 log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.settings = settings
        self.ports = ports
        self.codec = codec
        self.log = log
        self.legs = (self._leg(), self._leg())
        self._ports: list[int] = []
        self._offers: dict[int, sip_sdp.SessionDescription] = {}

    def _leg(self) -> RtpLeg:
        s = self.settings
        return RtpLeg(log=self.log, ptime=s.ptime, jitter_ms=s.jitter_ms, queue_packets=s.queue_packets)

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        for leg in self.legs:
            for _ in range(self.ports.capacity):
                port = self.ports.allocate()
                try:
                    await loop.create_datagram_endpoint(_factory(leg), local_addr=(self.settings.rtp_host, port))
                except OSError:
                    self.ports.release(port)
                    continue
                self._ports.append(port)
                break
            else:
                raise MediaError("no bindable RTP port in the configured range")

    def offer(self, index: int, *, session_id: int | None = None, version: int = 1) -> bytes:
        """An SDP offer for leg ``index`` (0 or 1) with the bridge's one codec."""
        offer = sip_sdp.build_offer(self.settings.sdp_address, self._ports[index], [self.codec],
                                    telephone_event_pt=TELEPHONE_EVENT_PT, ptime=self.settings.ptime,
                                    session_id=session_id, version=version)
        self._offers[index] = offer
        return offer.serialize().encode()

    def apply_answer(self, index: int, sdp: bytes) -> None:
        negotiated = sip_sdp.read_answer(self._offers[index], sip_sdp.SessionDescription.parse(sdp))
        if not negotiated.codec.same_format(self.codec):
            raise sip_sdp.SdpError(f"answer chose {negotiated.codec.name}, the bridge relays only {self.codec.name}")
        remote = None if negotiated.remote_port == 0 else (negotiated.remote_address, negotiated.remote_port)
        leg = self.legs[index]
        leg.configure(payload_type=negotiated.codec.payload_type, clock_rate=negotiated.codec.clock_rate,
                      telephone_event_pt=negotiated.telephone_event_pt, remote=remote)
        leg.hold = negotiated.on_hold

    def start(self) -> None:
        a, b = self.legs
        a.on_audio = lambda packet: b.send_audio(packet.payload, packet.timestamp)
        b.on_audio = lambda packet: a.send_audio(packet.payload, packet.timestamp)
        a.on_dtmf_event = b.relay_dtmf
        b.on_dtmf_event = a.relay_dtmf

    async def close(self) -> None:
        for leg in self.legs:
            leg.on_audio = None
            leg.on_dtmf_event = None
            await leg.close()
        for port in self._ports:
            self.ports.release(port)
        self._ports.clear()


def _factory(leg: RtpLeg) -> Callable[[], RtpLeg]:
    return lambda: leg
