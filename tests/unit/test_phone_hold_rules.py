"""PhoneHold (calls/phone_hold.py) with a stand-in media plane: one negotiation at a time, the latest phone wish
wins, an unanswered offer is withdrawn, and glare follows MSC2746 politeness."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import pytest

from bridge.calls import phone_hold
from bridge.calls.phone_hold import PhoneHold


class FakeMedia:
    def __init__(self) -> None:
        self.sip_direction = "sendrecv"
        self.offers: list[str] = []
        self.answers: list[str] = []
        self.rollbacks: list[str | None] = []
        self.pending = False

    async def reoffer_webrtc(self, direction: str) -> str:
        assert not self.pending
        self.pending = True
        self.offers.append(direction)
        return f"offer {direction}"

    async def apply_webrtc_reanswer(self, sdp: str) -> str:
        self.pending = False
        self.answers.append(sdp)
        return sdp

    def rollback_webrtc_offer(self, direction: str | None) -> bool:
        self.pending = False
        self.rollbacks.append(direction)
        return True


class Harness:
    def __init__(self, *, polite: bool) -> None:
        self.media = FakeMedia()
        self.sent: list[str] = []
        self.tasks: list[asyncio.Task[Any]] = []
        log = cast(Any, logging.LoggerAdapter(logging.getLogger("test"), {}))
        self.hold = PhoneHold(cast(Any, self.media), log, send_offer=self._send, spawn=self._spawn, polite=polite)

    async def _send(self, sdp: str) -> None:
        self.sent.append(sdp)

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    def phone(self, ours_on_sip: str) -> None:
        self.media.sip_direction = ours_on_sip
        self.hold.phone_renegotiated()

    async def settle(self) -> None:
        for _ in range(10):
            await asyncio.sleep(0)


async def test_phone_hold_then_resume_offers_the_mirrored_directions_one_at_a_time() -> None:
    h = Harness(polite=True)
    h.phone("recvonly")  # phone a=sendonly
    await h.settle()
    assert h.sent == ["offer sendonly"] and h.hold.offer_pending
    h.phone("inactive")  # the phone changes its mind before Matrix answered: queued, not a second offer
    h.phone("sendrecv")
    await h.settle()
    assert h.sent == ["offer sendonly"]
    h.hold.matrix_answer("answer recvonly")
    await h.settle()
    assert h.sent == ["offer sendonly", "offer sendrecv"]  # the latest wish; "inactive" was skipped
    h.hold.matrix_answer("answer sendrecv")
    await asyncio.gather(*h.tasks)
    assert h.hold.told == "sendrecv" and not h.hold.offer_pending


async def test_same_direction_again_sends_nothing_and_stray_answers_are_ignored() -> None:
    h = Harness(polite=True)
    h.phone("sendrecv")  # a codec change, say: Matrix already has sendrecv
    h.hold.matrix_answer("stray")
    await h.settle()
    assert h.sent == [] and h.media.answers == []


async def test_glare_polite_bridge_withdraws_its_offer_and_lets_the_matrix_offer_through() -> None:
    h = Harness(polite=True)  # Matrix -> SIP call: the bridge is the callee
    h.phone("inactive")
    await h.settle()
    assert h.hold.offer_pending
    assert h.hold.matrix_offer_arrived() is True
    await asyncio.gather(*h.tasks)
    assert h.media.rollbacks == [None]  # the transceiver keeps "inactive": the answer to Matrix carries it
    assert h.hold.told == "inactive" and h.sent == ["offer inactive"]


async def test_glare_impolite_bridge_drops_the_matrix_offer_and_keeps_its_own() -> None:
    h = Harness(polite=False)  # SIP -> Matrix call: the bridge is the caller
    h.phone("inactive")
    await h.settle()
    assert h.hold.matrix_offer_arrived() is False
    assert h.hold.offer_pending and h.media.rollbacks == []
    h.hold.matrix_answer("answer inactive")
    await asyncio.gather(*h.tasks)
    assert h.hold.told == "inactive"


async def test_unanswered_offer_is_withdrawn_back_to_the_last_agreed_direction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(phone_hold, "ANSWER_TIMEOUT_S", 0.05)
    h = Harness(polite=True)
    h.phone("inactive")
    await asyncio.gather(*h.tasks)
    assert h.media.rollbacks == ["sendrecv"] and h.hold.told == "sendrecv" and not h.hold.offer_pending
    assert h.hold.matrix_offer_arrived() is True  # nothing pending any more: no glare


async def test_version_0_calls_are_not_told_no_negotiate_in_the_legacy_protocol() -> None:
    h = Harness(polite=True)
    h.hold.enabled = False
    h.phone("inactive")
    await h.settle()
    assert h.sent == [] and not h.tasks
