"""SIP state that survives a restart: plain snapshots of a dialog, of an INVITE we sent that is still
ringing, and of an INVITE we received that is still unanswered, plus what a new process does with them
(restore the dialog into the UA, CANCEL the INVITE, answer the received INVITE with a final response).

The snapshots are plain dataclasses with ``to_dict``/``from_dict`` (JSON-safe) so any store can keep them.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from bridge.sip.client_transaction import InviteClientTransaction
from bridge.sip.dialog import Dialog
from bridge.sip.errors import SipTimeout, SipTransportError
from bridge.sip.ids import new_tag
from bridge.sip.logs import call_log
from bridge.sip.message import Headers, NameAddr, Request, Response
from bridge.sip.server_transaction import InviteServerTransaction, make_response
from bridge.sip.transport import Source
from bridge.sip.uri import SipUri

if TYPE_CHECKING:
    from bridge.sip.client import ClientInvite
    from bridge.sip.server import ServerInvite
    from bridge.sip.ua import UserAgent

logger = logging.getLogger(__name__)

# A restored dialog continues at the persisted CSeq plus this: in-dialog requests sent after the last
# snapshot (a re-INVITE, an INFO) each used one number, and CSeq only has to grow (12.2.1.1).
CSEQ_MARGIN = 100


@dataclass(frozen=True)
class DialogState:
    """A confirmed dialog, as far as sending BYE and answering the peer's BYE needs it."""

    call_id: str
    local_tag: str
    remote_tag: str
    local_header: str  # From (UAC) / To (UAS) as we send it, with our tag
    remote_header: str  # the peer's name-addr, with its tag
    local_cseq: int
    remote_target: str
    route_set: list[str] = field(default_factory=list)
    transport: str = "udp"
    is_uac: bool = True
    dest_host: str = ""  # where in-dialog requests went (informational; recomputed on restore)
    dest_port: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DialogState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class PendingInviteState:
    """An INVITE we sent that has no final response yet: enough to CANCEL it (9.1) and to know its answer."""

    request_uri: str
    via: str  # our top Via, with the branch the CANCEL must repeat
    from_header: str
    to_header: str
    call_id: str
    cseq: int
    transport: str
    dest_host: str
    dest_port: int
    routes: list[str] = field(default_factory=list)

    @property
    def local_tag(self) -> str:
        return NameAddr.parse(self.from_header).tag or ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PendingInviteState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class ReceivedInviteState:
    """An INVITE we received and have not answered finally: enough to send it a final response (8.2.6)."""

    request_uri: str
    vias: list[str]  # as received, top one stamped with received/rport
    from_header: str
    to_header: str  # without our tag
    call_id: str
    cseq: int
    transport: str
    src_host: str
    src_port: int
    to_tag: str = ""  # our To-tag, if a provisional carried it (the final must repeat it)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReceivedInviteState:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


# ----------------------------------------------------------------------------- snapshots
def snapshot_dialog(dialog: Dialog) -> DialogState:
    _transport, (host, port) = dialog.destination()
    return DialogState(
        call_id=dialog.call_id, local_tag=dialog.local_tag, remote_tag=dialog.remote_tag,
        local_header=dialog.local_header, remote_header=dialog.remote_header, local_cseq=dialog.local_cseq,
        remote_target=str(dialog.remote_target), route_set=list(dialog.route_set), transport=dialog.transport,
        is_uac=dialog.is_uac, dest_host=host, dest_port=port,
    )


def snapshot_client_invite(invite: ClientInvite) -> PendingInviteState:
    req = invite.request
    transport, (host, port) = invite.next_hop
    return PendingInviteState(
        request_uri=req.uri, via=str(req.top_via), from_header=req.headers.get("From") or "",
        to_header=req.headers.get("To") or "", call_id=req.call_id, cseq=req.cseq[0], transport=transport,
        dest_host=host, dest_port=port, routes=req.headers.get_all("Route"),
    )


def snapshot_server_invite(invite: ServerInvite) -> ReceivedInviteState:
    req = invite.request
    host, port = invite.source.addr
    return ReceivedInviteState(
        request_uri=req.uri, vias=req.headers.get_all("Via"), from_header=req.headers.get("From") or "",
        to_header=req.headers.get("To") or "", call_id=req.call_id, cseq=invite.cseq,
        transport=invite.transport, src_host=host, src_port=port, to_tag=invite.local_tag,
    )


# ----------------------------------------------------------------------------- after a restart
def restore_dialog(ua: UserAgent, state: DialogState) -> Dialog:
    """Put a persisted dialog back into the UA: the peer's in-dialog requests (its BYE) find it again."""
    dialog = Dialog(
        ua, call_id=state.call_id, local_tag=state.local_tag, remote_tag=state.remote_tag,
        local_header=state.local_header, remote_header=state.remote_header,
        remote_target=SipUri.parse(state.remote_target), route_set=list(state.route_set),
        local_cseq=state.local_cseq + CSEQ_MARGIN, remote_cseq=None,  # the peer's CSeq was not kept
        transport=state.transport, connection=None, state="confirmed", is_uac=state.is_uac,
    )
    ua._add_dialog(dialog)
    return dialog


async def cancel_invite(ua: UserAgent, state: PendingInviteState) -> Response | None:
    """CANCEL an INVITE a previous process sent (9.1: same Request-URI, top Via, From, To, Call-ID, CSeq
    number). Its final response is taken by a stand-in INVITE transaction: a 487 is ACKed there; a 2xx
    that crossed the CANCEL goes to the UA, which knows the INVITE as ours and ACKs + BYEs it."""
    addr = (state.dest_host, state.dest_port)
    ua.remember_sent_invite(state.call_id, state.local_tag, destination=(state.transport, addr))
    _adopt_client_invite(ua, state, addr)
    headers = Headers()
    headers.add("Via", state.via)
    headers.add("Max-Forwards", "70")
    headers.add("From", state.from_header)
    headers.add("To", state.to_header)
    headers.add("Call-ID", state.call_id)
    headers.add("CSeq", f"{state.cseq} CANCEL")
    for route in state.routes:
        headers.add("Route", route)
    headers.add("User-Agent", ua.settings.user_agent)
    cancel = Request("CANCEL", state.request_uri, headers, b"")
    log = call_log(logger, state.call_id)
    try:
        resp = await ua.transactions.request(cancel, state.transport, addr)
    except (SipTimeout, SipTransportError) as exc:
        log.info("CANCEL of the restored INVITE got no answer: %s", exc)
        return None
    log.info("CANCEL of the restored INVITE answered %d", resp.status)
    return resp


def _adopt_client_invite(ua: UserAgent, state: PendingInviteState, addr: tuple[str, int]) -> None:
    """A client INVITE transaction for the persisted INVITE, in Proceeding, never (re)sent by us."""
    headers = Headers()
    headers.add("Via", state.via)
    headers.add("From", state.from_header)
    headers.add("To", state.to_header)
    headers.add("Call-ID", state.call_id)
    headers.add("CSeq", f"{state.cseq} INVITE")
    for route in state.routes:
        headers.add("Route", route)
    request = Request("INVITE", state.request_uri, headers, b"")
    source = Source(state.transport, addr)

    def on_response(resp: Response) -> None:
        if 200 <= resp.status < 300:
            # the UA's handling of a 2xx nobody waits for: ACK + BYE (it knows the INVITE as ours, see above)
            ua._on_stray_response(resp, source)

    def on_error(exc: Exception) -> None:
        call_log(logger, state.call_id).info("restored INVITE got no final response: %s", exc)

    InviteClientTransaction(ua.transactions, request, state.transport, addr, on_response, on_error).adopt()


async def reject_invite(ua: UserAgent, state: ReceivedInviteState, status: int, reason: str | None = None,
                        headers: list[tuple[str, str]] | None = None) -> bool:
    """Answer a persisted INVITE with a final (3xx-6xx) response through a new INVITE server transaction:
    it retransmits over UDP (timer G) until the ACK, which it absorbs, or gives up (timer H).
    Returns True when the ACK came."""
    if status < 300:
        raise ValueError("only a non-2xx final can answer a restored INVITE")
    hdrs = Headers()
    for via in state.vias:
        hdrs.add("Via", via)
    hdrs.add("From", state.from_header)
    hdrs.add("To", state.to_header)
    hdrs.add("Call-ID", state.call_id)
    hdrs.add("CSeq", f"{state.cseq} INVITE")
    request = Request("INVITE", state.request_uri, hdrs, b"")
    source = Source(state.transport, (state.src_host, state.src_port))
    layer = ua.transactions
    tx = InviteServerTransaction(layer, request, source, layer.server_key(request))
    layer._add_server(tx)
    done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def on_ack(_ack: Request) -> None:
        if not done.done():
            done.set_result(True)

    def on_ack_timeout() -> None:
        if not done.done():
            done.set_result(False)

    tx.on_ack = on_ack
    tx.on_ack_timeout = on_ack_timeout
    response = make_response(request, status, reason, to_tag=state.to_tag or new_tag(),
                             user_agent=ua.settings.user_agent)
    for name, value in headers or []:
        response.headers.add(name, value)
    tx.respond(response)
    return await done
