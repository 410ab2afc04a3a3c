"""Small async helpers for the media tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_for(predicate: Callable[[], bool], within: float = 15.0, what: str = "condition") -> None:
    """Poll ``predicate`` until true; generous deadline because the suite shares 2 cores."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {within} s")
        await asyncio.sleep(0.02)
