"""Small SDP text edits the rtpengine backend needs (rtpengine itself does the real rewriting).

They work on the SDP as text so every attribute rtpengine wrote (ICE, DTLS, mid, ssrc) survives untouched.
"""

from __future__ import annotations

from bridge.sip.sdp import DIRECTIONS

ANSWER_DIRECTION = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def _lines(sdp: str) -> list[str]:
    return [line for line in sdp.replace("\r\n", "\n").split("\n") if line]


def _join(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def audio_direction(sdp: str) -> str:
    """Direction of the first audio m-line (else the session-level one, else sendrecv); c=0.0.0.0 is inactive."""
    session, audio, section = None, None, "session"
    hold_address = False
    for line in _lines(sdp):
        if line.startswith("m="):
            if section == "audio":
                break
            section = "audio" if line.startswith("m=audio ") else "other"
        elif line.startswith("a=") and line[2:] in DIRECTIONS:
            if section == "audio":
                audio = line[2:]
            elif section == "session":
                session = line[2:]
        elif line.startswith("c=") and section in ("session", "audio") and line.split()[-1] in ("0.0.0.0", "::"):
            hold_address = True
    if hold_address:
        return "inactive"
    return audio or session or "sendrecv"


def set_direction(sdp: str, direction: str) -> str:
    """``sdp`` with the first audio m-line's direction set to ``direction`` (session-level ones dropped)."""
    if direction not in DIRECTIONS:
        raise ValueError(f"bad SDP direction {direction!r}")
    out: list[str] = []
    section = "session"
    inserted = False
    for line in _lines(sdp):
        if line.startswith("m="):
            if section == "audio" and not inserted:
                out.append(f"a={direction}")
                inserted = True
            section = "audio" if line.startswith("m=audio ") and not inserted else "other"
        if line.startswith("a=") and line[2:] in DIRECTIONS and section in ("session", "audio"):
            continue
        out.append(line)
    if section == "audio" and not inserted:
        out.append(f"a={direction}")
    return _join(out)


def bump_origin(sdp: str) -> str:
    """Same o= session id, version + 1 (RFC 3264 8: a changed SDP in the same session)."""
    out = []
    for line in _lines(sdp):
        if line.startswith("o="):
            parts = line[2:].split()
            if len(parts) == 6 and parts[2].isdigit():
                parts[2] = str(int(parts[2]) + 1)
                line = "o=" + " ".join(parts)
        out.append(line)
    return _join(out)


def setup_role(sdp: str) -> str | None:
    """The a=setup value (DTLS role: active, passive, actpass, holdconn)."""
    for line in _lines(sdp):
        if line.startswith("a=setup:"):
            return line[8:].strip()
    return None


def set_setup(sdp: str, role: str) -> str:
    """Every a=setup line set to ``role`` (an answer must say active or passive, RFC 5763)."""
    return _join([f"a=setup:{role}" if line.startswith("a=setup:") else line for line in _lines(sdp)])


def origin(sdp: str) -> tuple[str, int] | None:
    """(session id, version) of the o= line."""
    for line in _lines(sdp):
        if line.startswith("o="):
            parts = line[2:].split()
            if len(parts) == 6 and parts[2].isdigit():
                return parts[1], int(parts[2])
    return None


def set_origin(sdp: str, session_id: str, version: int) -> str:
    out = []
    for line in _lines(sdp):
        if line.startswith("o="):
            parts = line[2:].split()
            if len(parts) == 6:
                parts[1], parts[2] = session_id, str(version)
                line = "o=" + " ".join(parts)
        out.append(line)
    return _join(out)


def first_codec(sdp: str) -> str | None:
    """Encoding name of the first audio format that is not telephone-event/CN (None if unknown)."""
    formats: list[str] = []
    names: dict[str, str] = {}
    section = "session"
    for line in _lines(sdp):
        if line.startswith("m="):
            if section == "audio":
                break
            section = "audio" if line.startswith("m=audio ") else "other"
            if section == "audio":
                formats = line.split()[3:]
        elif section == "audio" and line.startswith("a=rtpmap:"):
            pt, _, rest = line[9:].partition(" ")
            names[pt] = rest.split("/")[0]
    static = {"0": "PCMU", "8": "PCMA", "9": "G722"}
    for pt in formats:
        name = names.get(pt) or static.get(pt)
        if name is not None and name.lower() not in ("telephone-event", "cn"):
            return name.upper()
    return None
