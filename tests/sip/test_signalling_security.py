"""Signalling security: nothing unsolicited, no look-ups for strangers, Call-IDs logged as data."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest

from bridge.logs import SafeFormatter, call_logger
from bridge.sip.logs import call_log
from bridge.sip.server import ServerInvite
from tests.harness.sip_ua import SDP_ANSWER, SDP_OFFER, RawUdpPeer, fast_settings, raw_request, running_ua
from tests.harness.sip_wiretap import wiretap

ATTACKER = "127.0.0.2"
VICTIM = "127.0.0.3"


def raw_2xx(*, call_id: str, from_tag: str, to_tag: str, contact: str, branch: str = "z9hG4bKstray",
            record_route: str = "", cseq: int = 1, via_host: str = "127.0.0.1", via_port: int = 5060) -> str:
    rr = f"Record-Route: {record_route}\r\n" if record_route else ""
    return (f"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP {via_host}:{via_port};branch={branch}\r\n"
            f"From: <sip:alice@bridge.test>;tag={from_tag}\r\nTo: <sip:bob@{VICTIM}>;tag={to_tag}\r\n"
            f"Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: {contact}\r\n{rr}"
            f"Content-Type: application/sdp\r\nContent-Length: {len(SDP_ANSWER)}\r\n\r\n{SDP_ANSWER.decode()}")


async def test_unsolicited_2xx_sends_nothing_resolves_nothing_and_logs_one_line(
        caplog: pytest.LogCaptureFixture) -> None:
    attacker = await RawUdpPeer.open(ATTACKER)
    victim = await RawUdpPeer.open(VICTIM)
    try:
        async with running_ua(fast_settings()) as ua:
            target = ua.bound_address()
            with wiretap(ua) as tap, caplog.at_level(logging.DEBUG, logger="bridge.sip"):
                for i in range(60):
                    contact = (f"<sip:v@{VICTIM}:{victim.port}>" if i % 2 else
                               "<sip:v@reflect-victim.example.invalid:5060;transport=tcp>")
                    attacker.send(raw_2xx(call_id=f"stray-{i}", from_tag="guess", to_tag=f"t{i}", contact=contact,
                                          record_route=f"<sip:rr.example.invalid;lr>, <sip:{VICTIM}:{victim.port};lr>"),
                                  target)
                # stray non-2xx too (provisional, 4xx, other methods)
                attacker.send(raw_2xx(call_id="x", from_tag="y", to_tag="z", contact=f"<sip:{VICTIM}>")
                              .replace("SIP/2.0 200 OK", "SIP/2.0 486 Busy Here"), target)
                await asyncio.sleep(0.8)  # several T1: any ACK/BYE retransmission would be out by now
            assert ua.unsolicited_responses == 61
            assert tap.sent == [] and tap.resolved == [] and tap.connects == []
            assert attacker.received == [] and victim.received == []
            assert ua.dialogs == []
            lines = [r for r in caplog.records if "unsolicited" in r.getMessage()]
            assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    finally:
        attacker.close()
        victim.close()


async def _call_answered_then_fork(peer: RawUdpPeer, ua_addr: tuple[str, int]) -> tuple[str, str, str]:
    """Answer the UA's INVITE (raw peer as callee): returns (Call-ID, our From-tag, the INVITE's Via branch)."""
    invite = (await peer.wait_for_message("INVITE"))[0].decode()
    headers = dict(line.split(": ", 1) for line in invite.split("\r\n")[1:] if ": " in line)
    call_id = headers["Call-ID"]
    from_tag = headers["From"].split("tag=")[1]
    branch = headers["Via"].split("branch=")[1].split(";")[0]
    peer.send(raw_2xx(call_id=call_id, from_tag=from_tag, to_tag="fork-a", branch=branch,
                      contact=f"<sip:bob@127.0.0.1:{peer.port}>", cseq=int(headers["CSeq"].split()[0])), ua_addr)
    return call_id, from_tag, headers["CSeq"].split()[0]


async def test_late_2xx_for_our_invite_is_acked_and_byed_exactly_once() -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings()) as ua:
            ua_addr = ua.bound_address()
            call = ua.invite(f"sip:bob@127.0.0.1:{peer.port}", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
            call_id, from_tag, cseq = await _call_answered_then_fork(peer, ua_addr)
            assert (await asyncio.wait_for(call.wait_final(), 5)).status == 200
            await peer.wait_for_message("ACK")
            with wiretap(ua) as tap:
                # a second fork answers after the transaction ended, and retransmits its 2xx
                late = raw_2xx(call_id=call_id, from_tag=from_tag, to_tag="fork-b", branch="z9hG4bKfork",
                               contact=f"<sip:bob@127.0.0.1:{peer.port}>", cseq=int(cseq))
                for _ in range(5):
                    peer.send(late, ua_addr)
                    await asyncio.sleep(0.02)
                bye = (await peer.wait_for_message("BYE"))[0].decode()
                assert "tag=fork-b" in bye
                bye_headers = dict(line.split(": ", 1) for line in bye.split("\r\n")[1:] if ": " in line)
                answer = (f"SIP/2.0 200 OK\r\nVia: {bye_headers['Via']}\r\nFrom: {bye_headers['From']}\r\n"
                          f"To: {bye_headers['To']}\r\nCall-ID: {call_id}\r\nCSeq: {bye_headers['CSeq']}\r\n"
                          "Content-Length: 0\r\n\r\n")
                peer.send(answer, ua_addr)
                await asyncio.sleep(0.5)
            firsts = tap.first_lines()
            assert sum(line.startswith("ACK") for line in firsts) == 1
            byes = [d for _, _, d in tap.sent if d.startswith(b"BYE")]
            assert len({d.split(b"branch=")[1][:30] for d in byes}) == 1  # one BYE transaction
            assert all(addr == ("127.0.0.1", peer.port) for _, addr, _ in tap.sent)
            assert call.dialog is not None and call.dialog.state == "confirmed"  # the first fork is untouched
    finally:
        peer.close()


async def test_late_2xx_from_another_address_goes_to_the_invites_hop_never_its_contact() -> None:
    peer = await RawUdpPeer.open()
    attacker = await RawUdpPeer.open(ATTACKER)
    victim = await RawUdpPeer.open(VICTIM)
    try:
        async with running_ua(fast_settings()) as ua:
            ua_addr = ua.bound_address()
            call = ua.invite(f"sip:bob@127.0.0.1:{peer.port}", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
            call_id, from_tag, cseq = await _call_answered_then_fork(peer, ua_addr)
            await asyncio.wait_for(call.wait_final(), 5)
            with wiretap(ua) as tap:
                for contact in (f"<sip:v@{VICTIM}:{victim.port}>", "<sip:v@victim.example.invalid>"):
                    attacker.send(raw_2xx(call_id=call_id, from_tag=from_tag, to_tag=f"evil{len(contact)}",
                                          contact=contact, cseq=int(cseq),
                                          record_route=f"<sip:{VICTIM}:{victim.port};lr>"), ua_addr)
                await asyncio.sleep(0.5)
            assert victim.received == [] and attacker.received == []
            assert tap.resolved == [] and tap.connects == []
            assert {addr for _, addr, _ in tap.sent} == {("127.0.0.1", peer.port)}
    finally:
        for p in (peer, attacker, victim):
            p.close()


async def _answer(si: ServerInvite) -> None:
    await si.respond(200, body=SDP_ANSWER)
    await si.wait_ack(5)


@pytest.mark.parametrize("trusted", [False, True])
async def test_dialog_with_untrusted_peer_never_contacts_hosts_its_invite_names(trusted: bool) -> None:
    caller = await RawUdpPeer.open(ATTACKER)
    victim = await RawUdpPeer.open(VICTIM)
    try:
        settings = fast_settings(trusted_hosts=(ATTACKER,) if trusted else ())
        async with running_ua(settings, on_invite=_answer) as ua:
            target = ua.bound_address()
            invite = raw_request("INVITE", target, via_port=caller.port, host=ATTACKER, body=SDP_OFFER.decode(),
                                 call_id="untrusted-1")
            invite = invite.replace(f"Contact: <sip:raw@{ATTACKER}:{caller.port}>",
                                    f"Contact: <sip:raw@{VICTIM}:{victim.port}>")
            caller.send(invite, target)
            ok = (await caller.wait_for_message("SIP/2.0 200"))[0].decode()
            to_tag = ok.split("To: ")[1].split("tag=")[1].split("\r\n")[0]
            caller.send(raw_request("ACK", target, via_port=caller.port, host=ATTACKER, call_id="untrusted-1",
                                    to_tag=to_tag, branch="z9hG4bKack"), target)
            await asyncio.sleep(0.1)
            dialog = ua.dialogs[0]
            with wiretap(ua) as tap:
                task = asyncio.create_task(dialog.bye())
                if trusted:
                    await victim.wait_for_message("BYE")  # trusted: the Contact, as RFC 3261 says
                    assert caller.messages("BYE") == []
                else:
                    bye = (await caller.wait_for_message("BYE"))[0].decode()  # untrusted: where it came from
                    assert bye.startswith(f"BYE sip:raw@{VICTIM}:{victim.port} ")  # Request-URI still its Contact
                    assert victim.received == []
                task.cancel()
            assert tap.resolved == []
    finally:
        caller.close()
        victim.close()


async def test_dialog_contact_dns_name_from_untrusted_peer_is_not_resolved() -> None:
    caller = await RawUdpPeer.open(ATTACKER)
    try:
        async with running_ua(fast_settings(), on_invite=_answer) as ua:
            target = ua.bound_address()
            invite = raw_request("INVITE", target, via_port=caller.port, host=ATTACKER, body=SDP_OFFER.decode(),
                                 call_id="untrusted-dns", extra="Record-Route: <sip:proxy.example.invalid;lr>\r\n")
            invite = invite.replace(f"Contact: <sip:raw@{ATTACKER}:{caller.port}>",
                                    "Contact: <sip:raw@phone.example.invalid>")
            caller.send(invite, target)
            await caller.wait_for_message("SIP/2.0 200")
            await asyncio.sleep(0.1)
            with wiretap(ua) as tap:
                task = asyncio.create_task(ua.dialogs[0].bye())
                await caller.wait_for_message("BYE")
                task.cancel()
            assert tap.resolved == [] and tap.connects == []
    finally:
        caller.close()


# ------------------------------------------------------------------------- logging remote text as data
PERCENT_ID = "abc%s%d%(x)s%"


async def test_percent_call_id_is_logged_intact_through_the_ua(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    peer = await RawUdpPeer.open()

    async def failing(si: ServerInvite) -> None:
        raise RuntimeError("handler fails so the UA logs about the call")

    try:
        async with running_ua(fast_settings(), on_invite=failing) as ua:
            target = ua.bound_address()
            peer.send(raw_request("INVITE", target, via_port=peer.port, call_id=PERCENT_ID,
                                  body=SDP_OFFER.decode()), target)
            await peer.wait_for_message("SIP/2.0 500")
    finally:
        peer.close()
        root.removeHandler(handler)
        root.setLevel(old_level)
    out = stream.getvalue()
    assert f"[{PERCENT_ID}] on_invite handler failed" in out
    assert "--- Logging error ---" not in capsys.readouterr().err


def test_call_loggers_keep_percent_and_escape_newlines(capsys: pytest.CaptureFixture[str]) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SafeFormatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("test.sipsec.logs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        bridge_log = call_logger("test.sipsec.logs", "!room%s", PERCENT_ID + "\r\nERROR forged")
        bridge_log.info("no args, 100% literal")
        bridge_log.info("remote %s", "text\nINFO forged too %d")
        bridge_log.info("mapping %(a)s", {"a": "%(b)s"})
        call_log(logger, PERCENT_ID).warning("sip core %s", "x%sy")
        call_log(logger, PERCENT_ID).info("bare %")
    finally:
        logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines == [
        "INFO: [call_id=!room%s sip_call_id=abc%s%d%(x)s%\\r\\nERROR forged] no args, 100% literal",
        "INFO: [call_id=!room%s sip_call_id=abc%s%d%(x)s%\\r\\nERROR forged] remote text\\nINFO forged too %d",
        "INFO: [call_id=!room%s sip_call_id=abc%s%d%(x)s%\\r\\nERROR forged] mapping %(b)s",
        "WARNING: [abc%s%d%(x)s%] sip core x%sy",
        "INFO: [abc%s%d%(x)s%] bare %",
    ]
    assert "--- Logging error ---" not in capsys.readouterr().err


async def test_2xx_with_unparsable_record_route_is_acked_without_a_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    peer = await RawUdpPeer.open()
    try:
        async with running_ua(fast_settings()) as ua:
            ua_addr = ua.bound_address()
            call = ua.invite(f"sip:bob@127.0.0.1:{peer.port}", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
            invite = (await peer.wait_for_message("INVITE"))[0].decode()
            headers = dict(line.split(": ", 1) for line in invite.split("\r\n")[1:] if ": " in line)
            peer.send(raw_2xx(call_id=headers["Call-ID"], from_tag=headers["From"].split("tag=")[1], to_tag="rr",
                              branch=headers["Via"].split("branch=")[1].split(";")[0],
                              contact=f"<sip:bob@127.0.0.1:{peer.port}>", record_route="<sip:%s.example.invalid;lr>",
                              cseq=int(headers["CSeq"].split()[0])), ua_addr)
            assert (await asyncio.wait_for(call.wait_final(), 5)).status == 200
            await peer.wait_for_message("ACK")
            assert not [r for r in caplog.records if r.exc_info]
    finally:
        peer.close()


async def test_a_flood_of_garbage_is_logged_within_a_budget(caplog: pytest.LogCaptureFixture) -> None:
    attacker = await RawUdpPeer.open(ATTACKER)
    try:
        async with running_ua(fast_settings()) as ua:
            target = ua.bound_address()
            with caplog.at_level(logging.INFO, logger="bridge.sip"):
                for i in range(1000):
                    attacker.send(f"NOT SIP {i}\r\n\r\n", target)
                    if i % 50 == 49:
                        await asyncio.sleep(0.01)
                await asyncio.sleep(0.3)
            lines = [r for r in caplog.records if "malformed" in r.getMessage()]
            assert 200 <= len(lines) < 300  # the burst, then ~20/s
    finally:
        attacker.close()
