"""RFC 3262 reliable provisional responses (100rel / PRACK), both roles.

UAC (`ReliableIn`): a 18x with `Require: 100rel` and an RSeq is handed on once and PRACKed once, in RSeq
order per early dialog; its retransmissions (and out-of-order ones) are dropped (4).
UAS (`ReliableOut`): our 18x carries `Require: 100rel` + RSeq and is re-sent at T1, 2T1, 4T1 ... until its
PRACK (answered 200 here); after 64*T1 without one the INVITE is given up (5xx, 3). A 2xx waits for the PRACK
of a reliable provisional that carried SDP (3: the offer/answer must be complete first).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge.sip.logs import call_log
from bridge.sip.message import Headers, Request, Response
from bridge.sip.session_timer import has_option

if TYPE_CHECKING:
    from bridge.sip.dialog import Dialog
    from bridge.sip.server_transaction import InviteServerTransaction
    from bridge.sip.settings import SipSettings

logger = logging.getLogger(__name__)

REL = "100rel"
MODES = ("off", "supported", "required")


def rseq_of(resp: Response) -> int | None:
    value = resp.headers.get("RSeq")
    if value is None:
        return None
    try:
        rseq = int(value.strip())
    except ValueError:
        return None
    return rseq if 0 < rseq < 2**32 else None


def is_reliable(resp: Response) -> bool:
    return 100 < resp.status < 200 and has_option(resp.headers, REL, ("Require",)) and rseq_of(resp) is not None


def uas_sends_reliably(request: Headers, mode: str) -> bool:
    """Our 18x to this INVITE go reliably: the caller requires it, or supports it and our mode is required."""
    if mode == "off":
        return False
    if has_option(request, REL, ("Require",)):
        return True
    return mode == "required" and has_option(request, REL, ("Supported",))


class ReliableIn:
    """UAC side, one per outgoing INVITE: which reliable provisionals were taken, per To-tag."""

    def __init__(self) -> None:
        self._last: dict[str, int] = {}

    def accept(self, resp: Response) -> bool:
        """True for a new reliable provisional to process and PRACK; False for a retransmission or a gap."""
        rseq = rseq_of(resp)
        tag = resp.to.tag or ""
        if rseq is None:
            return False
        last = self._last.get(tag)
        if last is not None and rseq != last + 1:
            return False
        self._last[tag] = rseq
        return True

    @staticmethod
    def send_prack(dialog: Dialog, resp: Response, spawn: Callable[..., object]) -> None:
        rack = f"{rseq_of(resp)} {resp.cseq[0]} {resp.cseq[1]}"
        log = call_log(logger, dialog.call_id)

        async def run() -> None:
            try:
                answer = await dialog.request("PRACK", headers=[("RAck", rack)])
            except Exception as exc:  # a lost PRACK only costs the peer its retransmissions
                log.info("PRACK (RAck %s) got no final response: %s", rack, exc)
                return
            log.info("PRACK (RAck %s) answered %d", rack, answer.status)

        spawn(run(), "prack")


class ReliableOut:
    """UAS side, one per incoming INVITE answered reliably."""

    def __init__(self, settings: SipSettings, tx: InviteServerTransaction, on_give_up: Callable[[], None]) -> None:
        self._settings = settings
        self._tx = tx
        self._on_give_up = on_give_up
        self._rseq = secrets.randbelow(2**31 - 1) + 1  # 3: any start below 2**31
        self._pending: Response | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._interval = settings.t1
        self._started = 0.0
        self._acked = asyncio.Event()
        self._acked.set()  # nothing outstanding yet
        self._sdp_pending = False
        self.log = call_log(logger, tx.request.call_id)

    @property
    def outstanding(self) -> bool:
        return self._pending is not None

    def send(self, resp: Response) -> bool:
        """Send a 18x reliably. False (not sent) while an earlier one awaits its PRACK (3: one at a time)."""
        if self._pending is not None:
            self.log.info("%d not sent: the previous reliable provisional has no PRACK yet", resp.status)
            return False
        self._rseq += 1
        resp.headers.add("Require", REL)
        resp.headers.add("RSeq", str(self._rseq))
        self._pending = resp
        self._sdp_pending = bool(resp.body)
        self._acked.clear()
        loop = asyncio.get_running_loop()
        self._interval = self._settings.t1
        self._started = loop.time()
        self._tx.respond(resp)
        self._handle = loop.call_later(self._interval, self._retransmit)
        return True

    def _retransmit(self) -> None:
        if self._pending is None or self._tx.state != "proceeding":
            self._handle = None
            return
        loop = asyncio.get_running_loop()
        if loop.time() - self._started >= 64 * self._settings.t1:
            self._handle = None
            self.log.warning("no PRACK for our reliable %d within 64*T1: giving the INVITE up", self._pending.status)
            self.stop()
            self._on_give_up()
            return
        self._tx.retransmit_last()
        self._interval *= 2  # 3: doubling, no T2 cap
        self._handle = loop.call_later(self._interval, self._retransmit)

    def prack(self, request: Request) -> int:
        """The status for a PRACK: 200 when its RAck names our outstanding provisional, else 481 (3)."""
        parts = (request.headers.get("RAck") or "").split()
        pending = self._pending
        if pending is None or len(parts) != 3:
            return 481
        try:
            rseq, cseq = int(parts[0]), int(parts[1])
        except ValueError:
            return 481
        if rseq != self._rseq or cseq != pending.cseq[0] or parts[2].upper() != "INVITE":
            return 481
        self.stop()
        return 200

    async def wait_sdp_acked(self) -> None:
        """Before a 2xx: wait for the PRACK of an outstanding reliable provisional that carried SDP."""
        if self._sdp_pending:
            await self._acked.wait()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._pending = None
        self._sdp_pending = False
        self._acked.set()
