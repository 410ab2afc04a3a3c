"""Small edits and reads on WebRTC SDP strings (the Matrix side).

aiortc 1.16 neither offers nor answers ``telephone-event``; Element only sends DTMF when the
other side negotiated it, so we add it to the SDP we hand to Matrix and intercept those
packets ourselves (see webrtc_leg.RtpTap).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SdpRtpmap:
    payload_type: int
    name: str
    clock_rate: int
    channels: int = 1


def _audio_section(lines: list[str]) -> tuple[int, int] | None:
    """[start, end) line indices of the first m=audio section."""
    start = None
    for i, line in enumerate(lines):
        if line.startswith("m="):
            if start is not None:
                return start, i
            if line.startswith("m=audio "):
                start = i
    return (start, len(lines)) if start is not None else None


def audio_rtpmaps(sdp: str) -> list[SdpRtpmap]:
    """Codecs of the first audio m-line, in the m-line's (preference) order."""
    lines = sdp.splitlines()
    section = _audio_section(lines)
    if section is None:
        return []
    start, end = section
    maps: dict[int, SdpRtpmap] = {}
    for line in lines[start + 1 : end]:
        if not line.startswith("a=rtpmap:"):
            continue
        try:
            pt_text, encoding = line[len("a=rtpmap:") :].split(" ", 1)
            parts = encoding.strip().split("/")
            channels = int(parts[2]) if len(parts) > 2 else 1
            maps[int(pt_text)] = SdpRtpmap(int(pt_text), parts[0], int(parts[1]), channels)
        except (ValueError, IndexError):
            continue  # one bad rtpmap line must not hide the others
    order: list[SdpRtpmap] = []
    for fmt in lines[start].split()[3:]:
        if fmt.isdigit() and int(fmt) in maps:
            order.append(maps[int(fmt)])
    return order


def find_codec(sdp: str, name: str, clock_rate: int) -> SdpRtpmap | None:
    for rtpmap in audio_rtpmaps(sdp):
        if rtpmap.name.lower() == name.lower() and rtpmap.clock_rate == clock_rate:
            return rtpmap
    return None


def add_telephone_event(sdp: str, payload_type: int, clock_rate: int) -> str:
    """Add ``telephone-event/<clock_rate>`` as ``payload_type`` to the first audio m-line."""
    newline = "\r\n"
    lines = sdp.splitlines()
    section = _audio_section(lines)
    if section is None or find_codec(sdp, "telephone-event", clock_rate) is not None:
        return sdp
    start, end = section
    m_parts = lines[start].split()
    if str(payload_type) in m_parts[3:]:
        return sdp  # payload type already taken by something else: leave the SDP alone
    lines[start] = " ".join([*m_parts, str(payload_type)])
    insert_at = end
    for i in range(start + 1, end):
        if lines[i].startswith(("a=rtpmap:", "a=fmtp:", "a=rtcp-fb:")):
            insert_at = i + 1
    lines[insert_at:insert_at] = [
        f"a=rtpmap:{payload_type} telephone-event/{clock_rate}",
        f"a=fmtp:{payload_type} 0-15",
    ]
    return newline.join(lines) + newline
