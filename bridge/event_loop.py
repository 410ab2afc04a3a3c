"""Which asyncio event loop the bridge's processes run on.

uvloop (libuv) when it is installed: its epoll loop, UDP transports and callback dispatch are compiled code, and
with media relayed packet by packet in datagram callbacks that loop machinery is a large share of the CPU a call
costs (see bench/scale_bench.py). ``BRIDGE_EVENT_LOOP=asyncio`` in the environment keeps asyncio's own loop (for
comparisons, or if a platform's uvloop misbehaves).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_name() -> str:
    """"uvloop" or "asyncio": what :func:`run` uses here."""
    if os.environ.get("BRIDGE_EVENT_LOOP", "").lower() == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop :func:`loop_name` picks."""
    if loop_name() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
