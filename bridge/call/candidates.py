"""Buffer of ICE candidates per (call_id, party_id).

Candidates can arrive before the invite or answer they belong to (and Element trickles them after
its offer), so they are kept here until the call knows which party it talks to. Bounded: a call
holds at most ``max_per_party`` candidates per party and the buffer at most ``max_calls`` calls.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field

from .events import Candidate


@dataclass
class _PartyBuffer:
    candidates: list[Candidate] = field(default_factory=list)
    ended: bool = False


class CandidateBuffer:
    def __init__(self, *, max_per_party: int = 64, max_calls: int = 1024, ttl_s: float = 120.0) -> None:
        self._max_per_party = max_per_party
        self._max_calls = max_calls
        self._ttl = ttl_s
        self._calls: OrderedDict[str, tuple[float, dict[str | None, _PartyBuffer]]] = OrderedDict()

    def add(self, call_id: str, party_id: str | None, candidates: tuple[Candidate, ...] | list[Candidate]) -> None:
        self._expire()
        entry = self._calls.get(call_id)
        if entry is None:
            if len(self._calls) >= self._max_calls:
                self._calls.popitem(last=False)
            entry = (time.monotonic(), {})
            self._calls[call_id] = entry
        party = entry[1].setdefault(party_id, _PartyBuffer())
        for cand in candidates:
            if cand.is_end:
                party.ended = True
            elif len(party.candidates) < self._max_per_party:
                party.candidates.append(cand)

    def take(self, call_id: str, party_id: str | None) -> tuple[list[Candidate], bool]:
        """Remove and return the buffered candidates of one party and whether its end marker was seen.

        ``party_id`` None (a version 0 peer) takes everything buffered for the call.
        """
        entry = self._calls.get(call_id)
        if entry is None:
            return [], False
        parties = entry[1]
        if party_id is None:
            out: list[Candidate] = []
            ended = False
            for buf in parties.values():
                out.extend(buf.candidates)
                ended = ended or buf.ended
            parties.clear()
            return out, ended
        # A version 0 sender's candidates were stored under None: they belong to whoever answers.
        found = parties.pop(party_id, None)
        if found is None:
            found = parties.pop(None, None)
        if found is None:
            return [], False
        return found.candidates, found.ended

    def drop(self, call_id: str) -> None:
        self._calls.pop(call_id, None)

    def __len__(self) -> int:
        return len(self._calls)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._calls:
            first_id, (created, _) = next(iter(self._calls.items()))
            if now - created < self._ttl:
                break
            del self._calls[first_id]
