"""Which far-end address the SIP-side RTP socket takes media from, and sends to ("media follows signalling").

Modes (``media.rtp_source``):

- ``strict``: only the address the SDP names (c= / m= port).
- ``signalling``: that address, or any port on the SDP's IP or on the signalling peer's IP (where the INVITE or
  its 200 came from) once ``latch_packets`` consistent packets (one SSRC, consecutive sequence numbers, a
  negotiated payload type) arrived from it: symmetric RTP behind NAT. Asterisk's ``strictrtp`` probation and
  rtpengine's "strict source" are the models.
- ``any``: the first RTP packet from anywhere (the old, insecure behaviour).

Once a source is locked, no other may latch until the SDP names a new address (a re-INVITE), except the SDP
address itself, which always wins. Nothing is sent before the leg is configured, and never to an address other
than the SDP one or a locked source. The per-packet check is the caller's one tuple compare with :attr:`source`;
everything here runs only for packets that fail it.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from .rtp_packet import RtpParseError, is_rtcp, parse_rtp

Address = tuple[str, int]  # as asyncio reports it (IPv6 adds flowinfo and scope_id: compared as given)

SOURCE_MODES = ("strict", "signalling", "any")
MAX_LOGGED_SOURCES = 64
"""Distinct refused sources remembered (and logged once each) per call; more are only counted."""


def normalise_ip(host: str) -> str:
    """The text asyncio reports for that IP (``::0001`` -> ``::1``); a host name is kept as it is."""
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        return host


class RtpSourceGuard:
    def __init__(self, log: logging.Logger | logging.LoggerAdapter[Any], *, mode: str = "signalling",
                 latch_packets: int = 4) -> None:
        if mode not in SOURCE_MODES:
            raise ValueError(f"rtp source mode {mode!r} is not one of {SOURCE_MODES}")
        self.log = log
        self.mode = mode
        self.latch_packets = max(1, latch_packets)
        self.source: Address | None = None
        """The locked source: its packets pass the caller's hot-path compare."""
        self.target: Address | None = None
        """Where we send: the locked source, else the SDP address, else nowhere."""
        self._sdp: tuple[str, int] | None = None
        self._payload_types: tuple[int, ...] = ()
        self._signalling_ip: str | None = None
        self._latch_ips: tuple[str, ...] = ()
        self._ssrc: int | None = None  # of the locked stream (mode "any": a NAT rebinding keeps it)
        # probation: (address, ssrc, next expected sequence number, packets so far)
        self._candidate: tuple[Address, int, int, int] | None = None
        self._probation_logged = False
        self.refused = 0
        """Datagrams refused (RTP and RTCP), ``early`` included."""
        self.early = 0
        """Refused before the leg was configured."""
        self.refused_by_source: dict[Address, int] = {}
        self._overflow_logged = False
        self._forbidden: set[tuple[str, int]] = set()  # far ends the call was transferred away from

    # -- setup ------------------------------------------------------------------------------
    def configure(self, remote: tuple[str, int] | None, payload_types: tuple[int, ...]) -> None:
        """The SDP's address (None: no media, e.g. c=0.0.0.0 hold) and the payload types a source may latch with.
        A new address (first answer, re-INVITE) forgets the locked source: it must qualify again."""
        self._payload_types = payload_types
        sdp = (normalise_ip(remote[0]), remote[1]) if remote is not None else None
        if sdp != self._sdp:
            self._sdp = sdp
            self.source = None
            self.target = sdp
            self._ssrc = None
            self._candidate = None
            self._update_latch_ips()

    def forbid(self, addr: Address) -> None:
        """A far end this call left (a transfer): its leftover stream never latches again, unless a later SDP
        names that very address."""
        self._forbidden.add((normalise_ip(addr[0]), addr[1]))

    def set_signalling_peer(self, ip: str | None) -> None:
        """The IP the SIP INVITE (inbound) or its 200 (outbound) came from: a NATed far end sends RTP from there."""
        self._signalling_ip = normalise_ip(ip) if ip else None
        self._update_latch_ips()

    def _update_latch_ips(self) -> None:
        if self.mode != "signalling":
            self._latch_ips = ()
            return
        ips = [self._sdp[0]] if self._sdp is not None else []
        if self._signalling_ip is not None and self._signalling_ip not in ips:
            ips.append(self._signalling_ip)
        self._latch_ips = tuple(ips)

    @property
    def latched(self) -> bool:
        """A source is locked and it is not the SDP address (symmetric RTP)."""
        return self.source is not None and (self.source[0], self.source[1]) != self._sdp

    # -- the slow path ------------------------------------------------------------------------
    def admit(self, data: bytes, addr: Address) -> bool:
        """Judge a datagram from an address other than :attr:`source`; True if the caller should take it."""
        if not self._payload_types:
            self._refuse(addr, "media not configured yet")
            return False
        sdp_match = (addr[0], addr[1]) == self._sdp
        rtcp = is_rtcp(data)
        if rtcp and not sdp_match:
            self._refuse(addr, "RTCP not from the media source")
            return False
        try:
            packet = parse_rtp(data) if not rtcp else None
        except RtpParseError:
            packet = None
        if sdp_match:
            # the SDP address is always taken; only RTP locks it in (RTCP and junk are the caller's to count)
            if packet is not None:
                self._lock(addr, packet.ssrc, "the SDP address")
            return True
        if packet is None:
            self._refuse(addr, "not RTP")
            return False
        if packet.payload_type not in self._payload_types:
            self._refuse(addr, "payload type not negotiated")
            return False
        if self.mode == "any":
            if self.source is None or packet.ssrc == self._ssrc:
                self._lock(addr, packet.ssrc, "first packet (media.rtp_source: any)")
                return True
            self._refuse(addr, "another stream is locked")
            return False
        if (addr[0], addr[1]) in self._forbidden:
            self._refuse(addr, "a far end this call was transferred away from")
            return False
        if self.source is not None or addr[0] not in self._latch_ips:
            self._refuse(addr, "not the SDP address" if self.source is None else "another source is locked")
            return False
        return self._probation(addr, packet.ssrc, packet.sequence)

    def _probation(self, addr: Address, ssrc: int, seq: int) -> bool:
        cand = self._candidate
        if cand is not None and cand[0] == addr and cand[1] == ssrc and cand[2] == seq:
            count = cand[3] + 1
        else:
            count = 1
            # once per call at INFO: a source on an allowed IP could otherwise restart probation every packet
            level = logging.DEBUG if self._probation_logged else logging.INFO
            self._probation_logged = True
            self.log.log(level, "RTP from %s:%s, not the SDP address %s: latching after %d consistent packets",
                         addr[0], addr[1], self._sdp, self.latch_packets)
        if count >= self.latch_packets:
            self._candidate = None
            self._lock(addr, ssrc, f"{count} consistent packets")
            return True
        self._candidate = (addr, ssrc, (seq + 1) & 0xFFFF, count)
        return False

    def _lock(self, addr: Address, ssrc: int, why: str) -> None:
        if (addr[0], addr[1]) != self._sdp:
            self.log.info("symmetric RTP: media from and to %s:%s after %s (SDP said %s)", addr[0], addr[1], why,
                          self._sdp)
        self.source = self.target = addr
        self._ssrc = ssrc
        self._candidate = None

    def _refuse(self, addr: Address, why: str) -> None:
        self.refused += 1
        if not self._payload_types:
            # before the SDP is known the legitimate far end may be early (183 media): one INFO line, and the
            # source still gets its WARNING if it goes on once the SDP is known
            self.early += 1
            if self.early == 1:
                self.log.info("refusing RTP from %s:%s: media not configured yet; further ones only counted",
                              addr[0], addr[1])
            return
        seen = self.refused_by_source.get(addr)
        if seen is not None:
            self.refused_by_source[addr] = seen + 1
        elif len(self.refused_by_source) < MAX_LOGGED_SOURCES:
            self.refused_by_source[addr] = 1
            self.log.warning("refusing RTP from %s:%s (%s; expected %s, media.rtp_source %s); "
                             "further packets from it only counted", addr[0], addr[1], why,
                             self.source or self._sdp, self.mode)
        elif not self._overflow_logged:
            self._overflow_logged = True
            self.log.warning("RTP refused from more than %d sources; further ones only counted", MAX_LOGGED_SOURCES)

    @property
    def refused_sources(self) -> int:
        return len(self.refused_by_source)
