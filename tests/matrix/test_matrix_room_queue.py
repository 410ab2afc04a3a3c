"""RoomQueues: per-room order, cross-room concurrency, idle workers retire, close cancels."""

from __future__ import annotations

import asyncio

import pytest

from bridge.matrix.permissions import Permissions
from bridge.matrix.room_queue import RoomQueues


async def test_jobs_of_one_room_run_in_order_while_rooms_run_concurrently() -> None:
    queues = RoomQueues(idle_timeout=5)
    order: list[tuple[str, int]] = []
    gate = asyncio.Event()

    def job(room: str, n: int, wait: bool = False):  # type: ignore[no-untyped-def]
        async def run() -> None:
            if wait:
                await gate.wait()
            order.append((room, n))
        return run

    try:
        futs = [await queues.submit("!a", job("!a", 0, wait=True))]
        futs += [await queues.submit("!a", job("!a", n)) for n in range(1, 5)]
        b = await queues.submit("!b", job("!b", 0))
        await asyncio.wait_for(b, 10)  # room b is not blocked by room a's slow first job
        assert order == [("!b", 0)]
        gate.set()
        await asyncio.wait_for(asyncio.gather(*futs), 10)
        assert [n for room, n in order if room == "!a"] == [0, 1, 2, 3, 4]
    finally:
        await queues.close()


async def test_failing_job_reports_its_error_and_later_jobs_still_run() -> None:
    queues = RoomQueues(idle_timeout=5)

    async def boom() -> None:
        raise ValueError("bad event")

    ran = asyncio.Event()

    async def ok() -> None:
        ran.set()

    try:
        f1 = await queues.submit("!r", boom)
        f2 = await queues.submit("!r", ok)
        with pytest.raises(ValueError, match="bad event"):
            await asyncio.wait_for(f1, 10)
        await asyncio.wait_for(f2, 10)
        assert ran.is_set()
    finally:
        await queues.close()


async def test_idle_room_worker_retires_and_a_new_one_starts_on_demand() -> None:
    queues = RoomQueues(idle_timeout=0.05)
    done: list[int] = []

    async def mark() -> None:
        done.append(1)

    try:
        await asyncio.wait_for(await queues.submit("!r", mark), 10)
        for _ in range(200):
            if queues.active_rooms == 0:
                break
            await asyncio.sleep(0.02)
        assert queues.active_rooms == 0
        await asyncio.wait_for(await queues.submit("!r", mark), 10)
        assert done == [1, 1]
    finally:
        await queues.close()


async def test_close_cancels_running_and_pending_jobs() -> None:
    queues = RoomQueues(idle_timeout=5)
    never = asyncio.Event()

    async def block() -> None:
        await never.wait()

    running = await queues.submit("!r", block)
    pending = await queues.submit("!r", block)
    await asyncio.sleep(0)
    await queues.close()
    assert running.cancelled() and pending.cancelled()
    with pytest.raises(RuntimeError):
        await queues.submit("!r", block)


def test_permissions_most_specific_rule_wins_and_default_is_local_only() -> None:
    p = Permissions({"*": "user", "evil.test": "none", "@boss:evil.test": "admin"}, "example.org")
    assert p.can_use("@anyone:other.test")
    assert not p.can_use("@x:evil.test")
    assert p.can_use("@boss:evil.test") and p.is_admin("@boss:evil.test")
    assert not p.is_admin("@anyone:other.test")
    local_only = Permissions({}, "example.org")
    assert local_only.can_use("@alice:example.org")
    assert not local_only.can_use("@alice:example.org.evil")
    assert not local_only.can_use("@alice:other.test")
    assert not local_only.can_use("not-a-user-id")
