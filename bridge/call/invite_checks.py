"""What an m.call.invite must pass before anything is dialled: its age against its lifetime, a VoIP
version the bridge implements, and an offer with audio the WebRTC leg can use.

Pure: the caller passes the event's age (or timestamp) and the wall clock. Permission and the dial plan
are checked by the driver (they need the portal); per-user limits are in limits.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .events import Invite

# An invite that expired less than this long ago is refused with invite_timeout, so a caller whose client
# still shows it ringing (clock skew, a slow homeserver) stops at once. Older ones are only logged: their
# callers gave up long ago (matrix-js-sdk hangs up itself at the lifetime), a reject would just add noise.
STALE_REFUSAL_MS = 60_000
# Dialling a phone for less than this is pointless: the call would be cancelled before anyone answers.
MIN_REMAINING_MS = 2_000

# (codec, clock rate) the WebRTC leg can answer with: Opus (transcoded) and the SIP codecs it passes
# through or transcodes (media/codecs.choose_webrtc_codecs). A unit test keeps the two in step.
USABLE_CODECS: frozenset[tuple[str, int]] = frozenset(
    {("OPUS", 48000), ("G722", 8000), ("PCMU", 8000), ("PCMA", 8000)}
)
_STATIC_PAYLOAD_TYPES = {0: ("PCMU", 8000), 8: ("PCMA", 8000), 9: ("G722", 8000)}  # RFC 3551, no rtpmap needed

AgeSource = Literal["unsigned.age", "origin_server_ts", "unknown"]


@dataclass(frozen=True)
class InviteAge:
    ms: int | None  # None: nothing told us how old the invite is
    source: AgeSource


def invite_age(unsigned_age: int | None, origin_server_ts: int, now_ms: int) -> InviteAge:
    """``unsigned.age`` is measured on the homeserver's clock, so it wins; else our clock minus the event's
    timestamp (wrong by the clock skew between the two machines). Negative ages (skew) count as 0."""
    if unsigned_age is not None:
        return InviteAge(max(0, unsigned_age), "unsigned.age")
    if origin_server_ts > 0:
        return InviteAge(max(0, now_ms - origin_server_ts), "origin_server_ts")
    return InviteAge(None, "unknown")


@dataclass(frozen=True)
class Dial:
    remaining_ms: int  # what is left of the invite's lifetime: the driver's invite-lifetime timer


@dataclass(frozen=True)
class Refuse:
    reason: str  # Matrix reject/hangup reason
    problem: str  # for the log
    notice: str | None  # for the room; None: the reason says enough


@dataclass(frozen=True)
class Ignore:
    problem: str  # for the log; nothing is sent to Matrix


Verdict = Dial | Refuse | Ignore


def offered_audio_codecs(sdp: str) -> list[tuple[str, int]]:
    """(codec name upper-cased, clock rate) of the first audio m-line, in offer order; [] without audio.

    The first audio m-line is the one the media plane uses (media/webrtc_sdp.audio_rtpmaps).
    """
    lines = [line.strip() for line in sdp.splitlines()]
    start = next((i for i, line in enumerate(lines) if line.startswith("m=audio ")), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("m=")), len(lines))
    rtpmaps: dict[int, tuple[str, int]] = {}
    for line in lines[start + 1:end]:
        if not line.startswith("a=rtpmap:"):
            continue
        pt_text, _, encoding = line[len("a=rtpmap:"):].partition(" ")
        parts = encoding.strip().split("/")
        if pt_text.isdigit() and len(parts) >= 2 and parts[1].isdigit():
            rtpmaps[int(pt_text)] = (parts[0].upper(), int(parts[1]))
    out = []
    for fmt in lines[start].split()[3:]:
        if fmt.isdigit():
            codec = rtpmaps.get(int(fmt)) or _STATIC_PAYLOAD_TYPES.get(int(fmt))
            if codec is not None:
                out.append(codec)
    return out


def check_invite(invite: Invite, age: InviteAge) -> Verdict:
    """Decide whether an invite may be dialled. Cheap: runs for every invite, floods included."""
    if age.ms is not None:
        remaining = invite.lifetime_ms - age.ms
        if remaining < MIN_REMAINING_MS:
            state = "expired" if remaining <= 0 else f"only {remaining} ms left"
            problem = f"{state}: age {age.ms} ms ({age.source}), lifetime {invite.lifetime_ms} ms"
            if remaining > -STALE_REFUSAL_MS:
                return Refuse("invite_timeout", problem, None)
            return Ignore(problem)
    else:
        remaining = invite.lifetime_ms
    if invite.unsupported_version is not None:
        return Refuse(
            "unknown_error", f"unsupported VoIP version {invite.unsupported_version}",
            'Your Matrix client uses a VoIP version this bridge does not support (it supports 0 and "1").',
        )
    codecs = offered_audio_codecs(invite.offer_sdp)
    if not codecs:
        return Refuse("unknown_error", "the offer has no audio",
                      "Cannot place a phone call: your call offer has no audio.")
    if not any(codec in USABLE_CODECS for codec in codecs):
        offered = ", ".join(f"{name}/{rate}" for name, rate in codecs[:8])
        return Refuse("unknown_error", f"no usable audio codec offered ({offered})",
                      "Cannot place a phone call: your client offered no audio codec the bridge can use "
                      "(Opus, G.722, PCMU or PCMA).")
    return Dial(remaining)
