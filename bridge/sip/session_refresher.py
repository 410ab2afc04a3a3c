"""RFC 4028 session timers on a live dialog: refreshes at half the interval when we are the refresher
(UPDATE when the peer allows it, else a re-INVITE repeating our last SDP unchanged, same o= version), and at
expiry without a refresh: BYE, and the dialog's owner told (on_terminated("session_expired")).

Every 2xx to an INVITE / UPDATE of either side is a refresh; Dialog calls `our_request_answered` and
`answer_peer_request` for those. The negotiation rules are in session_timer.py.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from bridge.sip.errors import SipTimeout, SipTransportError
from bridge.sip.extensions import glare_retry_delay, supported_options
from bridge.sip.logs import call_log
from bridge.sip.message import Headers, Request, Response
from bridge.sip.session_timer import (
    Negotiated,
    SessionTimerSettings,
    expiry_delay,
    min_se,
    refresh_delay,
    request_headers,
    uac_negotiate,
    uas_negotiate,
)

if TYPE_CHECKING:
    from bridge.sip.dialog import Dialog
    from bridge.sip.settings import SipSettings

logger = logging.getLogger(__name__)

MAX_REFRESH_TRIES = 3  # per refresh: 422 / 491 / UPDATE refused make it try again at once (or after the 491 wait)


def allows_update(headers: Headers) -> bool:
    return any(item.strip().upper() == "UPDATE" for item in headers.get_all("Allow"))


class SessionRefresher:
    def __init__(self, dialog: Dialog, settings: SipSettings, negotiated: Negotiated, *, peer_allows_update: bool
                 ) -> None:
        self._dialog = dialog
        self._sip = settings
        self._settings: SessionTimerSettings = settings.session_timer
        self.negotiated = negotiated
        self.min_se = self._settings.min_se  # raised by a 422 from the peer
        self.peer_allows_update = peer_allows_update
        self.refreshes = 0  # refreshes we sent that got a 2xx (tests, logs)
        self._refresh_handle: asyncio.TimerHandle | None = None
        self._expiry_handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self.log = call_log(logger, dialog.call_id)

    # ----------------------------------------------------------------- creation
    @classmethod
    def for_uac(cls, dialog: Dialog, settings: SipSettings, invite: Request, ok: Response) -> SessionRefresher | None:
        """After the 2xx to our initial INVITE."""
        asked = invite.headers.get("Session-Expires")
        requested = int(asked.split(";")[0]) if asked else settings.session_timer.expires
        negotiated = uac_negotiate(ok.headers, requested, settings.session_timer)
        if negotiated is None:
            return None
        timer = cls(dialog, settings, negotiated, peer_allows_update=allows_update(ok.headers))
        timer.start()
        return timer

    @classmethod
    def for_uas(cls, dialog: Dialog, settings: SipSettings, invite: Request) -> tuple[SessionRefresher,
                                                                                       list[tuple[str, str]]] | None:
        """For our 2xx to an initial INVITE: the timer (started) and the headers the 2xx carries."""
        result = uas_negotiate(invite.headers, settings.session_timer, None)
        if result is None:
            return None
        negotiated, headers = result
        timer = cls(dialog, settings, negotiated, peer_allows_update=allows_update(invite.headers))
        timer.start()
        return timer, headers

    # ----------------------------------------------------------------- refreshes of either side
    def request_headers(self) -> list[tuple[str, str]]:
        """For any INVITE / UPDATE we send in the dialog (each is a refresh, 7.4)."""
        refresher = "uac" if self.negotiated.we_refresh else "uas"
        return [("Supported", ", ".join(supported_options(self._sip))),
                *request_headers(self._settings, interval=self.negotiated.interval, refresher=refresher,
                                 min_se_s=self.min_se)]

    def our_request_answered(self, response: Response) -> None:
        """A 2xx to our re-INVITE / UPDATE."""
        negotiated = uac_negotiate(response.headers, self.negotiated.interval, self._settings)
        if negotiated is not None:
            self.negotiated = negotiated
        self.start()

    def answer_peer_request(self, request: Request) -> list[tuple[str, str]]:
        """Our 2xx to the peer's re-INVITE / UPDATE: the headers it carries; the timer restarts."""
        result = uas_negotiate(request.headers, self._settings, self.negotiated)
        if result is None:
            return []
        self.negotiated, headers = result
        self.start()
        return headers

    # ----------------------------------------------------------------- timers
    def start(self) -> None:
        """(Re)start both timers from now: a refresh just succeeded."""
        if self._stopped:
            return
        self._cancel_handles()
        loop = asyncio.get_running_loop()
        self._expiry_handle = loop.call_later(expiry_delay(self.negotiated), self._expired)
        if self.negotiated.we_refresh:
            self._refresh_handle = loop.call_later(refresh_delay(self.negotiated), self._refresh_due)
        self.log.debug("session timer %d s, we refresh: %s", self.negotiated.interval, self.negotiated.we_refresh)

    def stop(self) -> None:
        self._stopped = True
        self._cancel_handles()
        if self._task is not None and not self._task.done() and self._task is not asyncio.current_task():
            self._task.cancel()

    def _cancel_handles(self) -> None:
        for handle in (self._refresh_handle, self._expiry_handle):
            if handle is not None:
                handle.cancel()
        self._refresh_handle = self._expiry_handle = None

    def _refresh_due(self) -> None:
        self._refresh_handle = None
        if self._task is None or self._task.done():
            self._task = self._dialog._ua.transactions.spawn(self._refresh(), "session refresh")

    def _expired(self) -> None:
        self._expiry_handle = None
        self.log.warning("session timer expired (%d s without a refresh): BYE", self.negotiated.interval)
        self.end("session_expired")

    def end(self, reason: str) -> None:
        """BYE, then tell the dialog's owner `reason` (not "bye_sent": it did not ask for this end)."""
        dialog = self._dialog
        self.stop()
        if dialog.state == "terminated":
            return
        on_terminated = dialog.on_terminated
        dialog.on_terminated = None
        dialog._ua.transactions.spawn(dialog.bye(), "bye after session timer")
        if on_terminated is not None:
            try:
                on_terminated(reason)
            except Exception:
                self.log.exception("on_terminated callback failed")

    # ----------------------------------------------------------------- our refresh
    async def _refresh(self) -> None:
        dialog = self._dialog
        for _ in range(MAX_REFRESH_TRIES):
            if dialog.state == "terminated" or self._stopped:
                return
            method = "UPDATE" if self.peer_allows_update else "INVITE"
            try:
                if method == "UPDATE":
                    response = await self._update()
                else:
                    if dialog.invite_out_pending:
                        return  # a re-INVITE of ours is in flight: its 2xx is the refresh
                    response = await dialog.request("INVITE", body=dialog.local_sdp,
                                                    content_type="application/sdp" if dialog.local_sdp else None)
            except (SipTimeout, SipTransportError) as exc:
                self.log.warning("session refresh (%s) got no answer: %s", method, exc)
                self.end("session_refresh_failed")
                return
            status = response.status
            if 200 <= status < 300:
                self.refreshes += 1
                self.log.info("session refreshed by %s (%d s)", method, self.negotiated.interval)
                return  # Dialog restarted the timers
            if status == 422:
                asked = min_se(response.headers) or 0
                self.min_se = max(self.min_se, asked)
                self.negotiated = Negotiated(max(self.negotiated.interval, asked), self.negotiated.we_refresh)
                continue
            if status == 491:
                await asyncio.sleep(glare_retry_delay(dialog))
                continue
            if method == "UPDATE" and status in (405, 501):
                self.peer_allows_update = False
                continue
            if status in (408, 481):
                self.end(f"session_refresh_{status}")
                return
            self.log.info("session refresh (%s) refused: %d; the call stays up until the session expires",
                          method, status)
            return

    async def _update(self) -> Response:
        """An UPDATE without a body, sent here rather than via Dialog.request: a timeout must end with BYE."""
        dialog = self._dialog
        request, transport, addr = dialog.build_request("UPDATE", headers=self.request_headers())
        response = await dialog._ua.transactions.request(request, transport, addr,
                                                         connection=dialog._conn_for(transport))
        if 200 <= response.status < 300:
            dialog._refresh_target(response)
            self.our_request_answered(response)
        return response
