"""What the application gets for an incoming request: `ServerRequest` (non-INVITE) and `ServerInvite`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from bridge.sip.dialog import Dialog
from bridge.sip.ids import new_tag
from bridge.sip.logs import call_log
from bridge.sip.message import NameAddr, Request, Response
from bridge.sip.prack import ReliableOut, uas_sends_reliably
from bridge.sip.server_transaction import (
    InviteServerTransaction,
    NonInviteServerTransaction,
    ServerTransaction,
    make_response,
)
from bridge.sip.session_refresher import SessionRefresher
from bridge.sip.transport import RELIABLE, Source

if TYPE_CHECKING:
    from bridge.sip.ua import UserAgent

logger = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE"


def _build(ua: UserAgent, request: Request, source: Source, status: int, reason: str | None, *, to_tag: str | None,
           body: bytes, headers: Sequence[tuple[str, str]], contact: bool) -> Response:
    resp = make_response(request, status, reason, to_tag=to_tag, user_agent=ua.settings.user_agent, body=body)
    if contact:
        resp.headers.add("Contact", ua.contact(source.transport, source.addr[0],
                                               secure=request.uri.lower().startswith("sips:")))
    if status == 405 or (200 <= status < 300 and request.method in ("INVITE", "OPTIONS")):
        resp.headers.add("Allow", ALLOW)
    for name, value in headers:
        resp.headers.add(name, value)
    if body and "Content-Type" not in resp.headers:
        resp.headers.add("Content-Type", "application/sdp")
    return resp


class ServerRequest:
    """A non-INVITE server transaction handed to the application; `respond` once (later calls are no-ops)."""

    def __init__(self, ua: UserAgent, request: Request, source: Source, tx: ServerTransaction | None,
                 dialog: Dialog | None = None) -> None:
        self._ua = ua
        self.request = request
        self.source = source
        self.transport = source.transport
        self.call_id = request.call_id
        self.dialog = dialog
        self._tx = tx
        self.responded = False

    @property
    def method(self) -> str:
        return self.request.method

    async def respond(self, status: int, reason: str | None = None, *, body: bytes = b"",
                      headers: Sequence[tuple[str, str]] = ()) -> None:
        self.respond_now(status, reason, body=body, headers=headers)

    def respond_now(self, status: int, reason: str | None = None, *, body: bytes = b"",
                    headers: Sequence[tuple[str, str]] = ()) -> None:
        if self.responded or self._tx is None:
            return
        if status >= 200:
            self.responded = True
        to_tag = None if self.request.to.tag else new_tag()
        dialog = self.dialog
        if 200 <= status < 300 and dialog is not None and self.method == "UPDATE":
            if body:
                dialog.local_sdp = body
            if dialog.session_timer is not None:  # RFC 4028: the peer's UPDATE refreshed the session
                headers = [*headers, *dialog.session_timer.answer_peer_request(self.request)]
        resp = _build(self._ua, self.request, self.source, status, reason, to_tag=to_tag, body=body,
                      headers=headers, contact=False)
        assert isinstance(self._tx, NonInviteServerTransaction)
        self._tx.respond(resp)


class _OkRetransmitter:
    """13.3.1.4: the UAS core re-sends its 2xx at T1, 2T1, ... T2 until the ACK, giving up at 64*T1."""

    def __init__(self, ua: UserAgent, tx: InviteServerTransaction, invite: ServerInvite, dialog: Dialog) -> None:
        self._ua = ua
        self._tx = tx
        self._invite = invite
        self._dialog = dialog
        self._loop = asyncio.get_running_loop()
        self._interval = ua.settings.t1
        self._retransmit_handle: asyncio.TimerHandle | None = None
        if tx.transport not in RELIABLE:
            self._retransmit_handle = self._loop.call_later(self._interval, self._retransmit)
        self._timeout_handle = self._loop.call_later(64 * ua.settings.t1, self._give_up)

    def _retransmit(self) -> None:
        self._tx.retransmit_last()
        self._interval = min(2 * self._interval, self._ua.settings.t2)
        self._retransmit_handle = self._loop.call_later(self._interval, self._retransmit)

    def _give_up(self) -> None:
        self.stop()
        self._dialog._pending_ok.pop(self._invite.cseq, None)
        self._dialog.log.warning("no ACK for 2xx (64*T1): hanging up")
        self._invite._ack_received(None)
        if self._dialog.state != "terminated":
            on_term = self._dialog.on_terminated
            # BYE first (it terminates with "bye_sent"), but report the real reason
            self._dialog.on_terminated = None
            self._ua.transactions.spawn(self._dialog.bye(), "bye after ack timeout")
            if on_term is not None:
                try:
                    on_term("ack_timeout")
                except Exception:
                    self._dialog.log.exception("on_terminated callback failed")

    def ack(self, request: Request) -> None:
        self.stop()
        self._invite._ack_received(request)

    def stop(self) -> None:
        if self._retransmit_handle is not None:
            self._retransmit_handle.cancel()
            self._retransmit_handle = None
        self._timeout_handle.cancel()


class ServerInvite:
    """An incoming INVITE (initial or re-INVITE). The To-tag is fixed for the whole transaction."""

    def __init__(self, ua: UserAgent, request: Request, source: Source, tx: InviteServerTransaction,
                 dialog: Dialog | None = None) -> None:
        self._ua = ua
        self.request = request
        self.source = source
        self.transport = source.transport
        self.call_id = request.call_id
        self.cseq = request.cseq[0]
        self._tx = tx
        self.is_reinvite = dialog is not None
        self.dialog: Dialog | None = dialog
        self.local_tag = dialog.local_tag if dialog is not None else new_tag()
        self.cancelled = asyncio.Event()
        self.final_status: int | None = None
        self._ack: asyncio.Future[Request | None] = asyncio.get_running_loop().create_future()
        self.log = call_log(logger, self.call_id)
        tx.on_ack_timeout = self._on_final_ack_timeout
        tx.server_invite = self  # CANCEL finds us through the transaction
        if dialog is not None:
            dialog._reinvites_in.add(self.cseq)  # RFC 3261 14.2: a second one meanwhile gets 500
        # RFC 3262: our 18x go reliably when the caller requires (or, per sip.prack, supports) 100rel
        self._reliable: ReliableOut | None = None
        if dialog is None and uas_sends_reliably(request.headers, ua.settings.prack):
            self._reliable = ReliableOut(ua.settings, tx, self._reliable_given_up)

    @property
    def method(self) -> str:
        return "INVITE"

    @property
    def responded(self) -> bool:
        return self.final_status is not None

    async def respond(self, status: int, reason: str | None = None, *, body: bytes = b"",
                      headers: Sequence[tuple[str, str]] = ()) -> Dialog | None:
        if 200 <= status < 300 and self._reliable is not None:
            await self._reliable.wait_sdp_acked()  # RFC 3262 3: no 2xx before the PRACK of a 18x with SDP
        return self.respond_now(status, reason, body=body, headers=headers)

    def respond_now(self, status: int, reason: str | None = None, *, body: bytes = b"",
                    headers: Sequence[tuple[str, str]] = ()) -> Dialog | None:
        if self.final_status is not None or self.cancelled.is_set():
            return None
        if status < 100 or status > 699:
            raise ValueError(f"bad status {status}")
        to_tag = None if self.is_reinvite else self.local_tag
        contact = 100 < status < 300
        if 200 <= status < 300:
            headers = [*headers, *self._session_timer_headers(body)]
        resp = _build(self._ua, self.request, self.source, status, reason, to_tag=to_tag, body=body,
                      headers=headers, contact=contact)
        if status == 100:
            self._tx.respond(resp)
            return None
        if status < 200:
            dialog = self._ensure_dialog()
            if self._reliable is not None:
                self._reliable.send(resp)
            else:
                self._tx.respond(resp)
            return dialog
        self.final_status = status
        self._final_sent()
        if status < 300:
            dialog = self._ensure_dialog()
            dialog.confirm()
            if self.is_reinvite:
                dialog._refresh_target(self.request)
            self._tx.respond(resp)
            dialog._pending_ok[self.cseq] = _OkRetransmitter(self._ua, self._tx, self, dialog)
            return dialog
        self._tx.respond(resp)
        if self.dialog is not None and not self.is_reinvite:
            self.dialog.terminate(f"rejected_{status}")
        return None

    def _final_sent(self) -> None:
        if self._reliable is not None:
            self._reliable.stop()
        if self.dialog is not None:
            self.dialog._reinvites_in.discard(self.cseq)
            if not self.is_reinvite:
                self.dialog._pending_invite = None

    def _session_timer_headers(self, body: bytes) -> list[tuple[str, str]]:
        """Our 2xx (initial or re-INVITE) as RFC 4028 refresh: start or restart the timer, its headers."""
        dialog = self._ensure_dialog()
        if body:
            dialog.local_sdp = body
        if dialog.session_timer is not None:
            return dialog.session_timer.answer_peer_request(self.request)
        if self.is_reinvite or not self._ua.settings.session_timer.enabled:
            return []
        started = SessionRefresher.for_uas(dialog, self._ua.settings, self.request)
        if started is None:
            return []
        dialog.session_timer, headers = started
        return headers

    def prack(self, request: Request) -> int:
        """The status for a PRACK in this INVITE's early dialog (RFC 3262 3)."""
        return self._reliable.prack(request) if self._reliable is not None else 481

    def _reliable_given_up(self) -> None:
        """No PRACK within 64*T1: 504 to the INVITE; the application sees it like a CANCEL."""
        if self.final_status is not None:
            return
        self.respond_now(504, "No PRACK")
        self.cancelled.set()

    def _ensure_dialog(self) -> Dialog:
        if self.dialog is None:
            req = self.request
            contact = req.headers.get("Contact")
            target = NameAddr.parse(contact).uri if contact else req.from_.uri
            to_value = req.headers.get("To") or ""
            self.dialog = Dialog(
                self._ua, call_id=self.call_id, local_tag=self.local_tag, remote_tag=req.from_.tag or "",
                local_header=f"{to_value};tag={self.local_tag}", remote_header=req.headers.get("From") or "",
                remote_target=target, route_set=req.headers.get_all("Record-Route"), local_cseq=0,
                remote_cseq=self.cseq, transport=self.transport, connection=self.source.connection,
                state="early", is_uac=False, peer=(self.source.transport, self.source.addr),
                peer_trusted=self._ua.transport.trust.is_trusted(self.source.addr[0]))
            self.dialog._pending_invite = self
            self._ua._add_dialog(self.dialog)
        return self.dialog

    async def wait_ack(self, timeout: float | None = None) -> Request | None:
        """The ACK for our 2xx (carries the answer for an offerless INVITE); None on timeout/no ACK."""
        try:
            return await asyncio.wait_for(asyncio.shield(self._ack), timeout)
        except TimeoutError:
            return None

    def _ack_received(self, request: Request | None) -> None:
        if not self._ack.done():
            self._ack.set_result(request)

    def _on_final_ack_timeout(self) -> None:
        self._ack_received(None)

    def _end_early(self) -> None:
        """BYE in the early dialog (the caller gave up without CANCEL): 487 the INVITE."""
        self._cancel()

    def _cancel(self) -> None:
        """CANCEL arrived (200 already sent to it): 487 to the INVITE unless a final went out."""
        if self.final_status is not None:
            return
        resp = _build(self._ua, self.request, self.source, 487, None, to_tag=self.local_tag, body=b"",
                      headers=(), contact=False)
        self.final_status = 487
        self._final_sent()
        self.cancelled.set()
        self._tx.respond(resp)
        # a cancelled re-INVITE leaves its dialog as it was (RFC 3261 9.2); an initial one ends the early dialog
        if self.dialog is not None and not self.is_reinvite:
            self.dialog._pending_invite = None
            self.dialog.terminate("cancelled")
