"""Which rtpengine node a new call goes to: weighted random among the nodes not marked failed.

A node that did not answer an ng request in time is taken out for ``retry_after_s``; after that it is tried
again by the next call that draws it (one more timeout puts it out again). A call stays on its node for its
whole life: the node holds the call's media state.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class NodeSpec:
    url: str
    weight: int = 1

    @property
    def address(self) -> tuple[str, int]:
        return parse_ng_url(self.url)


def parse_ng_url(url: str) -> tuple[str, int]:
    """``udp:HOST:PORT`` (``HOST:PORT`` accepted) -> (host, port). Raises ValueError."""
    rest = url[4:] if url.startswith("udp:") else url
    if "://" in url or url.startswith(("tcp:", "ws:", "http")):
        raise ValueError(f"{url!r}: only udp:HOST:PORT ng endpoints are supported")
    host, sep, port = rest.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{url!r} is not udp:HOST:PORT")
    return host, int(port)


class NodePool:
    def __init__(self, nodes: Sequence[NodeSpec], *, retry_after_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        if not nodes:
            raise ValueError("at least one rtpengine node is needed")
        self.nodes = list(nodes)
        self.retry_after_s = retry_after_s
        self._clock = clock
        self._rng = rng or random.Random()
        self._down_until: dict[str, float] = {}

    def is_up(self, node: NodeSpec) -> bool:
        until = self._down_until.get(node.url)
        return until is None or self._clock() >= until

    def candidates(self) -> list[NodeSpec]:
        """Nodes to try for a new call, in order: the live ones by weighted random draw, then the failed ones
        (soonest retry first) as a last resort, so a call still has a chance when every node was marked down."""
        live = [n for n in self.nodes if self.is_up(n) and n.weight > 0]
        order: list[NodeSpec] = []
        while live:
            pick = self._rng.choices(live, weights=[n.weight for n in live])[0]
            order.append(pick)
            live.remove(pick)
        down = sorted((n for n in self.nodes if not self.is_up(n)), key=lambda n: self._down_until[n.url])
        return order + down

    def failed(self, node: NodeSpec) -> None:
        self._down_until[node.url] = self._clock() + self.retry_after_s

    def succeeded(self, node: NodeSpec) -> None:
        self._down_until.pop(node.url, None)
