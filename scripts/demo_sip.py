"""Read sipp's message trace (-trace_msg) back as a SIP ladder an admin can follow: who sent what, and when."""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from datetime import datetime

# sipp writes a "-----... 2026-11-22 04:29:07.210818" line (local time), then "UDP message sent (123 bytes):" /
# "UDP message received [123] bytes :", a blank line and the message.
_HEADER = re.compile(r"^-{5,} (?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)\s*$", re.MULTILINE)
_BLOCK = re.compile(r"^\w+ message (?P<dir>sent|received)\b[^\n]*\n\s*\n(?P<first>[^\r\n]+)", re.MULTILINE)
_CSEQ = re.compile(r"^CSeq:\s*\d+\s+(\w+)", re.MULTILINE | re.IGNORECASE)


@dataclass(frozen=True)
class SipHop:
    sent_by_sipp: bool
    summary: str  # "INVITE sip:1555@host" or "200 OK (INVITE)"
    at: float | None = None  # when sipp sent or received it (Unix time), from the trace's header line


def ladder(trace: str) -> list[SipHop]:
    """Every complete message of the trace, in order. A message still being written (no CSeq yet) ends it."""
    headers = [(m.start(), m.group("ts")) for m in _HEADER.finditer(trace)]
    starts = [pos for pos, _ in headers]
    blocks = list(_BLOCK.finditer(trace))
    hops = []
    for i, m in enumerate(blocks):
        end = blocks[i + 1].start() if i + 1 < len(blocks) else len(trace)
        cseq = _CSEQ.search(trace, m.end(), end)
        if cseq is None:
            break  # sipp has not finished writing this one (or it is no SIP message): stop here
        first = m.group("first").strip()
        if first.startswith("SIP/2.0 "):
            summary = f"{first.removeprefix('SIP/2.0 ')} ({cseq.group(1)})"
        else:
            method, _, rest = first.partition(" ")
            # The INVITE's Request-URI shows which number was dialled; other requests just name the method.
            summary = f"{method} {rest.split(' ', 1)[0]}" if method == "INVITE" else method
        h = bisect.bisect_right(starts, m.start()) - 1
        at = None
        if h >= 0:
            ts = headers[h][1]
            at = datetime.strptime(ts if "." in ts else f"{ts}.0", "%Y-%m-%d %H:%M:%S.%f").timestamp()
        hops.append(SipHop(m.group("dir") == "sent", summary, at))
    return hops


def hop_line(hop: SipHop, sipp_name: str, bridge_name: str = "bridge") -> str:
    """'bridge -> trunk: INVITE sip:15551234567@127.0.0.1'"""
    src, dst = (sipp_name, bridge_name) if hop.sent_by_sipp else (bridge_name, sipp_name)
    return f"{src} -> {dst}: {hop.summary}"
