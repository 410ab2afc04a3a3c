"""Print the demo's lines in the order things happened, SIP messages and Matrix call events interleaved.

Each line carries the time its event happened: sipp's trace stamps every SIP message, the homeserver every Matrix
event (origin_server_ts), and the demo's own remarks are stamped when made. The sources are polled a few times a
second, and a line is printed once it is ``hold_s`` old, so that one reported a little late (the /sync round trip,
sipp's trace write) still lands in its place. All clocks are this machine's.
"""

from __future__ import annotations

import asyncio
import heapq
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from demo_sip import hop_line, ladder

Line = tuple[float, str]  # (Unix time, text)


class Source(Protocol):
    def __call__(self) -> list[Line]: ...


class Timeline:
    def __init__(self, t0: float, *, hold_s: float = 0.6, out: Callable[[str], None] | None = None) -> None:
        self.t0 = t0  # Unix time shown as 0.0 s
        self.hold_s = hold_s
        self._out = out or (lambda text: print(text, flush=True))
        self._pending: list[tuple[float, int, str]] = []
        self._seq = 0
        self._sources: list[Source] = []

    def add(self, at: float, text: str) -> None:
        heapq.heappush(self._pending, (at, self._seq, text))
        self._seq += 1

    def watch(self, source: Source) -> None:
        self._sources.append(source)

    def unwatch(self, source: Source) -> None:
        self.poll()
        if source in self._sources:
            self._sources.remove(source)

    def poll(self) -> None:
        for source in self._sources:
            for at, text in source():
                self.add(at, text)

    def flush(self, *, everything: bool = False) -> None:
        limit = time.time() - self.hold_s
        while self._pending and (everything or self._pending[0][0] <= limit):
            at, _, text = heapq.heappop(self._pending)
            self._out(f"[{at - self.t0:5.1f}s] {text}")

    def print_now(self, text: str) -> None:
        """Print everything known so far, then ``text`` (for headers and the final verdict)."""
        self.poll()
        self.flush(everything=True)
        self._out(text)

    async def settle(self) -> None:
        """Wait out the hold time, then print everything reported so far."""
        await asyncio.sleep(self.hold_s)
        self.poll()
        self.flush(everything=True)

    async def run(self) -> None:
        """Poll and print until cancelled (the demo owns this task)."""
        while True:
            self.poll()
            self.flush()
            await asyncio.sleep(0.1)


class SippTrace:
    """New SIP messages in a sipp message trace (-trace_msg), each at the time sipp logged it."""

    def __init__(self, path: Path, sipp_name: str, indent: str) -> None:
        self.path = path
        self.sipp_name = sipp_name
        self.indent = indent
        self._seen = 0

    def __call__(self) -> list[Line]:
        try:
            trace = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        hops = ladder(trace)[self._seen:]
        self._seen += len(hops)
        return [(hop.at or time.time(), f"{self.indent}SIP     {hop_line(hop, self.sipp_name)}") for hop in hops]


_RTPMAP = re.compile(r"^a=rtpmap:(\d+) ([\w-]+)/", re.MULTILINE)
_M_AUDIO = re.compile(r"^m=audio \S+ \S+ ([\d ]+)", re.MULTILINE)


def sdp_codecs(sdp: str) -> list[str]:
    """Audio codec names in the order of the m= line, without DTMF/comfort noise ("opus", "PCMU", ...)."""
    names = dict(_RTPMAP.findall(sdp))
    m = _M_AUDIO.search(sdp)
    order = m.group(1).split() if m else list(names)
    static = {"0": "PCMU", "8": "PCMA", "9": "G722"}
    codecs = [names.get(pt) or static.get(pt, pt) for pt in order]
    seen: list[str] = []
    for c in codecs:
        if c not in seen and c.lower() not in ("telephone-event", "cn", "red", "rtx"):
            seen.append(c)
    return seen


def describe_call_event(ev: dict[str, Any]) -> str:
    """'m.call.invite (call_id X, offer: opus, PCMU, PCMA)': the event type and what matters in it."""
    kind = str(ev.get("type"))
    c = ev.get("content") if isinstance(ev.get("content"), dict) else {}
    assert isinstance(c, dict)
    details: list[str] = []
    if kind == "m.call.invite":
        details.append(f"call_id {c.get('call_id')}")
        offer = c.get("offer", {}).get("sdp", "") if isinstance(c.get("offer"), dict) else ""
        details.append(f"offer: {', '.join(sdp_codecs(offer)) or 'no audio'}")
    elif kind in ("m.call.answer", "m.call.negotiate"):
        desc = c.get("answer") or c.get("description") or {}
        sdp = desc.get("sdp", "") if isinstance(desc, dict) else ""
        details.append(f"{'answer' if kind == 'm.call.answer' else desc.get('type')}: "
                       f"{', '.join(sdp_codecs(sdp)[:1]) or 'no audio'}")
    elif kind == "m.call.candidates":
        raw = c.get("candidates")
        cands: list[Any] = raw if isinstance(raw, list) else []
        real = [x for x in cands if isinstance(x, dict) and x.get("candidate")]
        details.append(f"{len(real)} ICE candidate{'s' if len(real) != 1 else ''}"
                       + (", end of candidates" if len(real) < len(cands) else ""))
    elif kind in ("m.call.hangup", "m.call.reject"):
        details.append(f"reason {c.get('reason', 'user_hangup')}")
    elif kind == "m.call.select_answer":
        details.append(f"party {c.get('selected_party_id')}")
    return f"{kind} ({'; '.join(details)})" if details else kind


class MatrixCallEvents:
    """New m.call.* events the Matrix client has seen, each at the time the homeserver accepted it."""

    def __init__(self, events: list[dict[str, Any]], user_id: str, user_name: str, indent: str) -> None:
        self.events = events  # the client's list of every event /sync returned (appended to)
        self.user_id = user_id
        self.user_name = user_name
        self.indent = indent
        self._seen = len(events)  # only what happens from now on

    def __call__(self) -> list[Line]:
        new = self.events[self._seen:]
        self._seen += len(new)
        lines = []
        for ev in new:
            if not str(ev.get("type", "")).startswith("m.call."):
                continue
            src, dst = ((self.user_name, "bridge") if ev.get("sender") == self.user_id
                        else ("bridge", self.user_name))
            at = ev.get("origin_server_ts")
            lines.append((at / 1000 if isinstance(at, int | float) else time.time(),
                          f"{self.indent}Matrix  {src} -> {dst}: {describe_call_event(ev)}"))
        return lines
