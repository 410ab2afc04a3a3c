"""Media-plane settings (filled from the bridge config by the composition root)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class IceServer:
    """One STUN/TURN server handed to aiortc (``RTCIceServer``)."""

    urls: list[str]
    username: str | None = None
    credential: str | None = None


@dataclass
class MediaSettings:
    rtp_host: str = "127.0.0.1"
    """Address the RTP sockets bind to."""
    advertised_ip: str | None = None
    """Address written into our SIP SDP (defaults to ``rtp_host``)."""
    port_start: int = 16384
    port_end: int = 16484
    codecs: list[str] = field(default_factory=lambda: ["PCMU", "PCMA", "G722"])
    """SIP-leg codec preference (names as in SDP rtpmap)."""
    ice_servers: list[IceServer] = field(default_factory=list)
    """Empty by default: aiortc would otherwise fall back to a public STUN server."""
    ptime: int = 20
    jitter_ms: int = 60
    """How long the RTP jitter buffer waits for a missing packet before skipping it."""
    queue_packets: int = 50
    """Bound of every media queue; the oldest packet is dropped when full."""
    rtp_source: str = "signalling"
    """Who may send us SIP-side RTP: "strict" (the SDP address only), "signalling" (that, or a NATed far end on
    the SDP's or the signalling peer's IP after ``rtp_latch_packets`` consistent packets), "any" (insecure)."""
    rtp_latch_packets: int = 4
    srtp: str = "off"
    """SDES-SRTP on the SIP leg: "off" | "optional" | "required" (bridge/sip/sdp_crypto.py)."""
    rtcp_interval_s: float = 5.0
    """RTCP reports on the SIP leg (sip_rtcp.py): RFC 3550's minimum interval (randomized 0.5-1.5x); 0 = none."""
    ice_timeout_s: float = 30.0
    """After start(), report "ice_timeout" if WebRTC is not connected by then (aioice itself
    needs about 64 s of STUN retransmissions to declare a dead peer failed)."""

    @property
    def sdp_address(self) -> str:
        return self.advertised_ip or self.rtp_host
