"""The Matrix outbox against a fake homeserver send function: order, back-off, give-up, expiry, withdrawal."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable

import pytest
from mautrix.errors import MatrixConnectionError, MatrixUnknownRequestError, MForbidden

from bridge.matrix.outbox import NotDelivered, Outbox, OutboxItem


class FakeHomeserver:
    """Records every attempt; ``fail`` decides per attempt which error (if any) to raise."""

    def __init__(self, fail: Callable[[OutboxItem], BaseException | None] = lambda item: None) -> None:
        self.fail = fail
        self.attempts: list[tuple[str, str, float]] = []  # (body, txn_id, loop time)
        self.accepted: list[str] = []
        self.hang = False

    async def send(self, item: OutboxItem) -> str:
        self.attempts.append((item.content["body"], item.txn_id, asyncio.get_running_loop().time()))
        if self.hang:
            await asyncio.sleep(3600)
        error = self.fail(item)
        if error is not None:
            raise error
        self.accepted.append(item.content["body"])
        return f"$ev-{item.content['body']}"


def fast_outbox(hs: FakeHomeserver, max_age_s: float = 600.0) -> Outbox:
    return Outbox(hs.send, backoff_start_s=0.01, backoff_max_s=0.05, max_age_s=max_age_s)


async def test_events_of_one_room_are_delivered_in_order_across_an_outage() -> None:
    down = {"until": 5}
    hs = FakeHomeserver(lambda item: MatrixConnectionError("refused") if len(hs.attempts) <= down["until"] else None)
    outbox = fast_outbox(hs)
    items = [outbox.enqueue("!r", "m.call.candidates", {"body": str(i)}, sender="@sip_1:x") for i in range(4)]
    other = outbox.enqueue("!other", "m.call.hangup", {"body": "x"}, sender="@sip_1:x")
    results = await asyncio.gather(*(i.result for i in [*items, other]))
    assert [r for r in results] == ["$ev-0", "$ev-1", "$ev-2", "$ev-3", "$ev-x"]
    assert [b for b in hs.accepted if b != "x"] == ["0", "1", "2", "3"]
    # Every retry of one event reuses its transaction ID (a retry that already landed is not duplicated).
    first_txns = {txn for body, txn, _ in hs.attempts if body == "0"}
    assert len(first_txns) == 1 and items[0].attempts > 1
    await outbox.close()


async def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    hs = FakeHomeserver(lambda item: MatrixUnknownRequestError(502, "bad gateway") if item.attempts < 7 else None)
    outbox = Outbox(hs.send, backoff_start_s=0.02, backoff_max_s=0.08)
    item = outbox.enqueue("!r", "m.call.hangup", {"body": "h"}, sender="@bot:x")
    assert await item.result == "$ev-h"
    times = [t for _, _, t in hs.attempts]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 6
    assert gaps[0] >= 0.02 and gaps[1] >= 0.04 and gaps[2] >= 0.08
    assert all(g < 0.08 + 0.05 for g in gaps)  # capped
    await outbox.close()


@pytest.mark.parametrize("status", [429, 500, 503, 504])
async def test_rate_limits_and_server_errors_are_retried(status: int) -> None:
    hs = FakeHomeserver(lambda item: MatrixUnknownRequestError(status, "x") if item.attempts == 1 else None)
    outbox = fast_outbox(hs)
    assert await outbox.enqueue("!r", "m.call.hangup", {"body": "h"}, sender="@bot:x").result == "$ev-h"
    assert len(hs.attempts) == 2
    await outbox.close()


async def test_refusal_is_given_up_with_one_log_line_and_the_room_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    hs = FakeHomeserver(lambda item: MForbidden(403, "not in room") if item.content["body"] == "a" else None)
    outbox = fast_outbox(hs)
    a = outbox.enqueue("!r", "m.call.hangup", {"body": "a"}, sender="@bot:x")
    b = outbox.enqueue("!r", "m.call.hangup", {"body": "b"}, sender="@bot:x")
    with caplog.at_level(logging.INFO, logger="bridge.matrix.outbox"):
        with pytest.raises(NotDelivered, match="refused"):
            await a.result
        assert await b.result == "$ev-b"
    assert [body for body, _, _ in hs.attempts] == ["a", "b"]
    assert len([r for r in caplog.records if "giving up" in r.getMessage()]) == 1
    await outbox.close()


async def test_an_event_expires_when_its_call_is_long_over(caplog: pytest.LogCaptureFixture) -> None:
    hs = FakeHomeserver(lambda item: MatrixConnectionError("refused"))
    outbox = fast_outbox(hs, max_age_s=0.2)
    item = outbox.enqueue("!r", "m.call.hangup", {"body": "h"}, sender="@bot:x")
    with caplog.at_level(logging.WARNING, logger="bridge.matrix.outbox"):
        with pytest.raises(NotDelivered, match="expired"):
            await asyncio.wait_for(item.result, 2)
    assert len(hs.attempts) >= 3
    assert len([r for r in caplog.records if "expired" in r.getMessage()]) == 1
    assert outbox.pending == 0
    await outbox.close()


async def test_deliver_within_withdraws_an_event_that_is_late() -> None:
    down = {"on": True}
    hs = FakeHomeserver(lambda item: MatrixConnectionError("refused") if down["on"] else None)
    outbox = fast_outbox(hs)
    invite = outbox.enqueue("!r", "m.call.invite", {"body": "invite"}, sender="@bot:x")
    with pytest.raises(NotDelivered):
        await outbox.wait_delivered(invite, 0.1)
    down["on"] = False
    later = outbox.enqueue("!r", "m.call.hangup", {"body": "later"}, sender="@bot:x")
    assert await asyncio.wait_for(later.result, 2) == "$ev-later"
    await asyncio.sleep(0.1)
    assert hs.accepted == ["later"]  # the withdrawn invite is never delivered late
    await outbox.close()


async def test_withdrawing_cancels_an_attempt_that_hangs_and_a_queued_event() -> None:
    hs = FakeHomeserver()
    hs.hang = True
    outbox = fast_outbox(hs)
    head = outbox.enqueue("!r", "m.call.invite", {"body": "head"}, sender="@bot:x")
    queued = outbox.enqueue("!r", "m.call.candidates", {"body": "queued"}, sender="@bot:x")
    await asyncio.sleep(0.05)
    outbox.withdraw(queued)
    with pytest.raises(NotDelivered):
        await outbox.wait_delivered(head, 0.05)
    hs.hang = False
    last = outbox.enqueue("!r", "m.call.hangup", {"body": "last"}, sender="@bot:x")
    assert await asyncio.wait_for(last.result, 2) == "$ev-last"
    assert [body for body, _, _ in hs.attempts] == ["head", "last"]
    await outbox.close()


async def test_close_gives_queued_events_a_grace_period_then_drops_them(caplog: pytest.LogCaptureFixture) -> None:
    hs = FakeHomeserver(lambda item: MatrixConnectionError("refused") if item.content["body"] == "stuck" else None)
    outbox = fast_outbox(hs)
    ok = outbox.enqueue("!a", "m.call.hangup", {"body": "ok"}, sender="@bot:x")
    stuck = outbox.enqueue("!b", "m.call.hangup", {"body": "stuck"}, sender="@bot:x")
    with caplog.at_level(logging.WARNING, logger="bridge.matrix.outbox"):
        await outbox.close(grace_s=0.2)
    assert ok.result.result() == "$ev-ok"
    with pytest.raises(NotDelivered):
        stuck.result.result()
    assert any("1 undelivered" in r.getMessage() for r in caplog.records)
    late = outbox.enqueue("!a", "m.call.hangup", {"body": "late"}, sender="@bot:x")
    with pytest.raises(NotDelivered, match="closed"):
        await late.result
