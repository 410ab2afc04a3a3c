"""bridge.stats: the SIGUSR1 introspection line."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.media.ports import PortAllocator
from bridge.stats import BridgeStats, collect, log_stats_on_signal, task_kinds


def fake_bridge() -> Any:
    ports = PortAllocator("127.0.0.1", 20000, 20010)
    ports.allocate()
    calls = SimpleNamespace(inbound={"a": object()}, outbound={"b": object(), "c": object()}, ports=ports)
    ua = SimpleNamespace(dialogs=[object()], transactions=SimpleNamespace(_clients={1: 1}, _servers={}))
    return SimpleNamespace(calls=calls, ua=ua)


async def test_collect_counts_calls_dialogs_transactions_and_ports() -> None:
    stats = collect(fake_bridge())
    assert (stats.calls, stats.inbound, stats.outbound, stats.dialogs, stats.transactions, stats.rtp_ports) == (
        3, 1, 2, 1, 1, 1)
    assert stats.tasks >= 1 and stats.threads >= 1
    assert stats.task_kinds["test_collect_counts_calls_dialogs_transactions_and_ports"] == 1


async def test_task_kinds_name_the_coroutine_most_frequent_first() -> None:
    async def waiter(event: asyncio.Event) -> None:
        await event.wait()

    event = asyncio.Event()
    tasks = {asyncio.create_task(waiter(event)) for _ in range(2)}
    try:
        assert next(iter(task_kinds(asyncio.all_tasks()).items())) == (
            "test_task_kinds_name_the_coroutine_most_frequent_first.<locals>.waiter", 2)
    finally:
        event.set()
        await asyncio.gather(*tasks)


def test_line_is_one_line_of_key_values_with_dash_for_unknown() -> None:
    stats = BridgeStats(calls=1, inbound=1, outbound=0, dialogs=1, transactions=None, tasks=5, threads=1,
                        rtp_ports=1, fds=None, rss_kib=100, py_blocks=7, task_kinds={"CallSession._run": 4, "run": 1})
    assert stats.line() == ("stats: calls=1 inbound=1 outbound=0 dialogs=1 transactions=- tasks=5 threads=1 "
                            "rtp_ports=1 fds=- rss_kib=100 py_blocks=7 task_kinds=CallSession._run:4,run:1")


async def test_sigusr1_logs_one_stats_line_even_at_warning_level(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.WARNING)  # like logging.level: WARNING (caplog's handler itself lets all through)
    logging.getLogger("bridge.stats").setLevel(logging.NOTSET)
    log_stats_on_signal(loop, fake_bridge())
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        for _ in range(100):
            if any("stats:" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)
        root.setLevel(old_level)
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.stats"]
    assert len(lines) == 1
    assert re.fullmatch(r"stats: calls=3 inbound=1 outbound=2 dialogs=1 transactions=1 tasks=\d+ threads=\d+ "
                        r"rtp_ports=1 fds=\d+ rss_kib=\d+ py_blocks=\d+ task_kinds=\S+", lines[0])
