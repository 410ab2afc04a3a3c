"""Outgoing INVITE (UAC core, RFC 3261 13.2): digest retry, early/confirmed dialogs, ACK, CANCEL, forks."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from bridge.sip.client_transaction import ClientTransaction
from bridge.sip.dialog import Dialog, usable_routes
from bridge.sip.digest import Credentials
from bridge.sip.errors import SipTimeout, SipTransportError
from bridge.sip.ids import new_branch
from bridge.sip.logs import call_log
from bridge.sip.message import Headers, Request, Response
from bridge.sip.prack import ReliableIn, is_reliable
from bridge.sip.session_refresher import SessionRefresher
from bridge.sip.session_timer import min_se, session_expires
from bridge.sip.targets import FAILOVER_STATUS, Target
from bridge.sip.transport import Address
from bridge.sip.uri import SipUri

if TYPE_CHECKING:
    from bridge.sip.ua import UserAgent

logger = logging.getLogger(__name__)


class ClientInvite:
    """One outgoing call attempt. Set `on_provisional` right after `UserAgent.invite` returns (the first
    response cannot arrive before the caller yields to the event loop)."""

    def __init__(self, ua: UserAgent, request: Request, transport: str, addr: Address,
                 credentials: Credentials | None) -> None:
        self._ua = ua
        self.request = request
        self.call_id = request.call_id
        self._transport = transport
        self._addr = addr
        self._credentials = credentials
        self._used_nonces: set[str] = set()
        self._answered: set[int] = set()  # 401 / 407 already answered with credentials
        self.on_provisional: Callable[[Response], None] | None = None
        # offerless INVITE: returns the SDP answer for the ACK, given the 2xx carrying the offer (synchronous)
        self.ack_body: Callable[[Response], bytes] | None = None
        self.dialog: Dialog | None = None
        self.early_dialogs: dict[str, Dialog] = {}
        self.final: Response | None = None
        loop = asyncio.get_running_loop()
        self._final: asyncio.Future[Response] = loop.create_future()
        self._progress = asyncio.Event()  # a provisional or a final arrived
        self._tx: ClientTransaction | None = None
        self._cancel_requested = False
        self._cancel_sent = False
        self._reliable = ReliableIn()  # RFC 3262: reliable 18x taken and PRACKed once each
        self._targets: list[Target] = []  # RFC 3263 targets not tried yet (UserAgent.locate)
        self._locating: asyncio.Task[None] | None = None
        self.log = call_log(logger, self.call_id)

    @property
    def local_tag(self) -> str:
        return self.request.from_.tag or ""

    @property
    def next_hop(self) -> tuple[str, Address]:
        """Transport and address the INVITE (and so its CANCEL) goes to."""
        return self._transport, self._addr

    def start(self) -> None:
        self._ua._add_client_invite(self)
        if not self._ua.needs_location(self.request):
            self._send()  # an IP or an explicit port: sent at once, as always
            return
        self._locating = self._ua.transactions.spawn(self._locate_and_send(), "locate INVITE target")

    async def _locate_and_send(self) -> None:
        """RFC 3263: look the next hop up first when it is a domain (else send as built)."""
        try:
            self._targets = await self._ua.locate(self.request)
        except Exception as exc:  # a DNS library error must still end the call attempt
            self.log.exception("locating the INVITE's next hop failed")
            self._on_error(SipTransportError(f"cannot locate next hop: {exc}"))
            return
        if self._cancel_requested:
            self._on_error(SipTransportError("cancelled before the INVITE was sent"))
            return
        if self._targets:
            self._use_next_target()
        self._send()

    def _use_next_target(self) -> None:
        target = self._targets.pop(0)
        self.request = self._ua.retarget(self.request, target, contact=True)
        self._transport, self._addr = target.transport, (target.host, target.port)
        self._ua.remember_sent_invite(self.call_id, self.local_tag, destination=self.next_hop)

    def _fail_over(self, why: str) -> bool:
        """Try the next RFC 3263 target (4.3) unless the call is past that point; True if it did."""
        if not self._targets or self._cancel_requested or self.dialog is not None:
            return False
        self.log.info("INVITE to %s:%s:%d %s: trying the next target", self._transport, self._addr[0],
                      self._addr[1], why)
        if self._ua.locator is not None:
            self._ua.locator.note_failure(self._transport, self._addr[0], self._addr[1])
        for dialog in list(self.early_dialogs.values()):
            dialog.terminate("failover")
        self.early_dialogs.clear()
        self._progress.clear()  # a CANCEL waits for a provisional of the new transaction
        old = self.request
        headers = old.headers.copy()
        headers.set("CSeq", f"{old.cseq[0] + 1} INVITE")
        self.request = Request("INVITE", old.uri, headers, old.body)
        self._use_next_target()
        self._send()
        return True

    def _send(self) -> None:
        self._tx = self._ua.transactions.send_request(self.request, self._transport, self._addr,
                                                      self._on_response, self._on_error)

    # ----------------------------------------------------------------- responses
    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, SipTimeout | SipTransportError) and self._fail_over(f"failed ({exc})"):
            return
        self.log.info("INVITE failed: %s", exc)
        self._progress.set()
        for dialog in list(self.early_dialogs.values()):
            dialog.terminate("timeout" if isinstance(exc, SipTimeout) else "transport_error")
        if not self._final.done():
            self._final.set_exception(exc)
            self._final.exception()  # the caller may never await: do not warn about it
        self._ua._remove_client_invite(self)

    def _on_response(self, resp: Response) -> None:
        status = resp.status
        if status < 200:
            self._progress.set()
            tag = resp.to.tag
            if tag and status > 100:
                dialog = self.early_dialogs.get(tag)
                if dialog is None:
                    dialog = self._dialog_from(resp, state="early")
                    self.early_dialogs[tag] = dialog
                    self._ua._add_dialog(dialog)
                else:
                    dialog._refresh_target(resp)
                if is_reliable(resp):
                    if not self._reliable.accept(resp):
                        return  # a retransmission (its PRACK is on its way) or out of order: 4
                    ReliableIn.send_prack(dialog, resp, self._ua.transactions.spawn)
            if self.on_provisional is not None:
                try:
                    self.on_provisional(resp)
                except Exception:
                    self.log.exception("on_provisional callback failed")
            return
        if status < 300:
            self._on_2xx(resp)
            return
        self._progress.set()
        if status in (401, 407) and self._retry_with_auth(resp):
            return
        if status == 422 and self._retry_with_min_se(resp):
            return
        if status == FAILOVER_STATUS and self._fail_over("answered 503"):
            return
        for dialog in list(self.early_dialogs.values()):
            dialog.terminate(f"rejected_{status}")
        self._finish(resp)
        self._ua._remove_client_invite(self)

    def _on_2xx(self, resp: Response) -> None:
        self._progress.set()
        tag = resp.to.tag or ""
        cseq = resp.cseq[0]
        if self.dialog is not None:
            if tag == self.dialog.remote_tag:
                self.dialog.resend_ack(cseq)  # retransmitted 2xx
                return
            # a second fork answered: ACK it and hang it up, keep the first (13.2.2.4)
            self.log.info("forked 2xx from To-tag %s: ACK + BYE", tag)
            fork = self._dialog_from(resp, state="confirmed")
            fork.send_ack(cseq)
            self._ua.transactions.spawn(fork.bye(), "bye forked 2xx")
            return
        early = self.early_dialogs.pop(tag, None)
        if early is not None:
            dialog = early
            dialog._refresh_target(resp)
            dialog.route_set = usable_routes(list(reversed(resp.headers.get_all("Record-Route"))))
            dialog.remote_header = resp.headers.get("To") or dialog.remote_header
        else:
            dialog = self._dialog_from(resp, state="confirmed")
            self._ua._add_dialog(dialog)
        dialog.confirm()
        self.dialog = dialog
        for other in list(self.early_dialogs.values()):
            other.terminate("other_fork_answered")
        self.early_dialogs.clear()
        body = b""
        if self.ack_body is not None:
            try:
                body = self.ack_body(resp)
            except Exception:
                self.log.exception("ack_body callback failed; ACK without body")
        dialog.send_ack(cseq, body=body)
        dialog.local_sdp = body or self.request.body
        if self._ua.settings.session_timer.enabled:
            dialog.session_timer = SessionRefresher.for_uac(dialog, self._ua.settings, self.request, resp)
        self._finish(resp)
        if self._cancel_requested:
            self.log.info("2xx crossed our CANCEL: ACK sent, now BYE")
            self._ua.transactions.spawn(dialog.bye(), "bye after cancel")
        self._ua._remove_client_invite(self)

    def _finish(self, resp: Response) -> None:
        self.final = resp
        if not self._final.done():
            self._final.set_result(resp)

    def _dialog_from(self, resp: Response, *, state: str) -> Dialog:
        """12.1.2: route set = reversed Record-Route, remote target = Contact, local CSeq = the INVITE's."""
        # The Request-URI is a bare URI: its ;params belong to the URI (a name-addr parse would take them as
        # header parameters and drop e.g. ;transport=tcp from the target).
        try:
            contact = resp.contact
        except ValueError:
            contact = None
        target = contact.uri if contact is not None else SipUri.parse(self.request.uri)
        connection = self._tx.connection if self._tx is not None else None
        return Dialog(
            self._ua, call_id=self.call_id, local_tag=self.local_tag, remote_tag=resp.to.tag or "",
            local_header=self.request.headers.get("From") or "", remote_header=resp.headers.get("To") or "",
            remote_target=target, route_set=usable_routes(list(reversed(resp.headers.get_all("Record-Route")))),
            local_cseq=self.request.cseq[0], remote_cseq=None, transport=self._transport,
            connection=connection, state=state, is_uac=True)

    def _retry_with_auth(self, resp: Response) -> bool:
        """Resend once per challenge with credentials: new branch, CSeq+1, same Call-ID/From-tag."""
        from bridge.sip.digest import build_authorization, parse_challenge

        if self._credentials is None or self._cancel_requested:
            return False
        header = "WWW-Authenticate" if resp.status == 401 else "Proxy-Authenticate"
        values = resp.headers.get_all(header)
        if not values:
            return False
        try:
            challenge = parse_challenge(values[0])
        except ValueError as exc:
            self.log.info("unusable %s: %s", header, exc)
            return False
        if challenge.nonce in self._used_nonces or (resp.status in self._answered and not challenge.stale) \
                or len(self._used_nonces) >= 4:
            return False  # challenged again (maybe with a fresh nonce): the credentials are wrong, never loop
        self._used_nonces.add(challenge.nonce)
        self._answered.add(resp.status)
        old = self.request
        headers = old.headers.copy()
        cseq = old.cseq[0] + 1
        transport = self._transport
        headers.set("Via", self._ua.via(transport, self._addr[0], new_branch()))
        headers.set("CSeq", f"{cseq} INVITE")
        auth_name = "Authorization" if resp.status == 401 else "Proxy-Authorization"
        headers.add(auth_name, build_authorization(challenge, method="INVITE", uri=old.uri,
                                                   credentials=self._credentials, body=old.body))
        self.request = Request("INVITE", old.uri, headers, old.body)
        self.log.info("INVITE challenged (%d), retrying with credentials", resp.status)
        self._send()
        return True

    def _retry_with_min_se(self, resp: Response) -> bool:
        """RFC 4028 6: 422 Session Interval Too Small: again with its Min-SE as our interval (once per value)."""
        asked = min_se(resp.headers)
        current = session_expires(self.request.headers)
        if asked is None or current is None or asked <= current.interval or self._cancel_requested:
            return False
        old = self.request
        headers = old.headers.copy()
        headers.set("Via", self._ua.via(self._transport, self._addr[0], new_branch()))
        headers.set("CSeq", f"{old.cseq[0] + 1} INVITE")
        headers.set("Session-Expires", str(asked))
        headers.set("Min-SE", str(asked))
        self.request = Request("INVITE", old.uri, headers, old.body)
        self.log.info("INVITE got 422 (Min-SE %d): retrying with Session-Expires %d", asked, asked)
        self._send()
        return True

    # ----------------------------------------------------------------- API
    async def wait_final(self) -> Response:
        return await asyncio.shield(self._final)

    async def cancel(self) -> None:
        """9.1: CANCEL after a provisional (waits for one), same branch and CSeq number. No-op after a final."""
        self._cancel_requested = True
        if self._final.done() or self._cancel_sent:
            return
        await self._progress.wait()
        if self._final.done() or self._cancel_sent or self._tx is None:
            return
        self._cancel_sent = True
        cancel = self._build_cancel()
        try:
            resp = await self._ua.transactions.request(cancel, self._transport, self._addr,
                                                       connection=self._tx.connection)
            self.log.info("CANCEL answered %d", resp.status)
        except (SipTimeout, SipTransportError) as exc:
            self.log.info("CANCEL got no answer: %s", exc)

    def _build_cancel(self) -> Request:
        inv = self.request
        headers = Headers()
        headers.add("Via", str(inv.top_via))
        headers.add("Max-Forwards", "70")
        for name in ("From", "To", "Call-ID"):
            value = inv.headers.get(name)
            if value is not None:
                headers.add(name, value)
        headers.add("CSeq", f"{inv.cseq[0]} CANCEL")
        for route in inv.headers.get_all("Route"):
            headers.add("Route", route)
        headers.add("User-Agent", self._ua.settings.user_agent)
        return Request("CANCEL", inv.uri, headers, b"")
