"""Read sipp's message trace (-trace_msg) back as a SIP ladder an admin can follow: who sent what, in order."""

from __future__ import annotations

import re
from dataclasses import dataclass

# sipp writes "UDP message sent (123 bytes):" / "UDP message received [123] bytes :", a blank line, the message.
_BLOCK = re.compile(r"^\w+ message (?P<dir>sent|received)\b[^\n]*\n\s*\n(?P<first>[^\r\n]+)", re.MULTILINE)


@dataclass(frozen=True)
class SipHop:
    sent_by_sipp: bool
    summary: str  # "INVITE" or "200 OK (INVITE)"


def ladder(trace: str) -> list[SipHop]:
    hops = []
    for m in _BLOCK.finditer(trace):
        first = m.group("first").strip()
        if first.startswith("SIP/2.0 "):
            status = first.removeprefix("SIP/2.0 ")
            block_end = trace.find("\n---", m.end())
            cseq = re.search(r"^CSeq:\s*\d+\s+(\w+)", trace[m.end():block_end if block_end > 0 else None],
                             re.MULTILINE | re.IGNORECASE)
            summary = f"{status} ({cseq.group(1)})" if cseq else status
        else:
            method, _, rest = first.partition(" ")
            # The INVITE's Request-URI shows which number was dialled; other requests just name the method.
            summary = f"{method} {rest.split(' ', 1)[0]}" if method == "INVITE" else method
        hops.append(SipHop(m.group("dir") == "sent", summary))
    return hops


def describe(hops: list[SipHop], sipp_name: str, bridge_name: str = "bridge") -> list[str]:
    """One line per run of messages in the same direction: 'bridge -> trunk: INVITE'."""
    lines: list[str] = []
    current: tuple[bool, list[str]] | None = None
    for hop in hops:
        if current is not None and current[0] == hop.sent_by_sipp:
            current[1].append(hop.summary)
            continue
        if current is not None:
            lines.append(_line(current, sipp_name, bridge_name))
        current = (hop.sent_by_sipp, [hop.summary])
    if current is not None:
        lines.append(_line(current, sipp_name, bridge_name))
    return lines


def _line(run: tuple[bool, list[str]], sipp_name: str, bridge_name: str) -> str:
    src, dst = (sipp_name, bridge_name) if run[0] else (bridge_name, sipp_name)
    return f"{src} -> {dst}: {', '.join(run[1])}"
