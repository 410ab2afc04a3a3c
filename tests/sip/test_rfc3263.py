"""RFC 3263 server location: target selection and caching on fake answers, then failover of REGISTER and
INVITE between two SRV targets served by a real dnsmasq (the first dead or answering 503)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bridge.sip.registration import Registration
from bridge.sip.resolver import DnsResolver, NaptrRecord, SrvRecord, parse_nameserver
from bridge.sip.server import ServerInvite, ServerRequest
from bridge.sip.targets import Target, TargetLocator, order_srv
from bridge.sip.uri import SipUri
from tests.harness.dnsmasq import Dnsmasq
from tests.harness.sip_ua import SDP_ANSWER, SDP_OFFER, fast_settings, running_ua


class FakeDns:
    def __init__(self, naptr: dict[str, list[NaptrRecord]] | None = None,
                 srv: dict[str, list[SrvRecord]] | None = None, a: dict[str, list[str]] | None = None) -> None:
        self._naptr, self._srv, self._a = naptr or {}, srv or {}, a or {}
        self.asked: list[str] = []

    async def naptr(self, name: str) -> list[NaptrRecord]:
        self.asked.append(f"NAPTR {name}")
        return self._naptr.get(name, [])

    async def srv(self, name: str) -> list[SrvRecord]:
        self.asked.append(f"SRV {name}")
        return self._srv.get(name, [])

    async def addresses(self, name: str) -> list[str]:
        self.asked.append(f"A {name}")
        return self._a.get(name, [])


def test_srv_order_follows_priority_then_weight() -> None:
    records = [SrvRecord(20, 0, 5060, "backup"), SrvRecord(10, 90, 5060, "heavy"), SrvRecord(10, 10, 5060, "light")]
    firsts = Counter(order_srv(records, random.Random(seed))[0].target for seed in range(2000))
    assert set(firsts) == {"heavy", "light"}  # priority 20 is never first
    assert 0.85 < firsts["heavy"] / 2000 < 0.95  # 90:10 weights (RFC 2782 running sum)
    for seed in range(50):
        assert order_srv(records, random.Random(seed))[-1].target == "backup"


def test_srv_weight_zero_records_still_get_picked() -> None:
    records = [SrvRecord(10, 0, 5060, "zero"), SrvRecord(10, 0, 5060, "zero2")]
    firsts = Counter(order_srv(records, random.Random(seed))[0].target for seed in range(400))
    assert firsts["zero"] > 100 and firsts["zero2"] > 100


async def test_naptr_picks_services_in_order_and_srv_then_addresses() -> None:
    dns = FakeDns(
        naptr={"provider.example": [
            NaptrRecord(20, 10, "s", "SIP+D2U", "_sip._udp.provider.example"),
            NaptrRecord(10, 10, "s", "SIP+D2T", "_sip._tcp.provider.example"),
            NaptrRecord(5, 10, "s", "E2U+SIP", "ignored.example")]},
        srv={"_sip._tcp.provider.example": [SrvRecord(10, 0, 5070, "t.provider.example")],
             "_sip._udp.provider.example": [SrvRecord(10, 0, 5080, "u.provider.example"),
                                            SrvRecord(10, 0, 5080, "")]},  # "." = no service
        a={"t.provider.example": ["192.0.2.1"], "u.provider.example": ["192.0.2.2", "2001:db8::2"]})
    targets = await TargetLocator(dns).locate(SipUri.parse("sip:provider.example"))
    assert targets == [Target("tcp", "192.0.2.1", 5070, "t.provider.example"),
                       Target("udp", "192.0.2.2", 5080, "u.provider.example"),
                       Target("udp", "2001:db8::2", 5080, "u.provider.example")]
    assert "NAPTR ignored.example" not in dns.asked


async def test_without_naptr_srv_for_udp_and_tcp_and_sips_only_tls() -> None:
    dns = FakeDns(srv={"_sip._tcp.p.example": [SrvRecord(1, 1, 5062, "x.p.example")],
                       "_sips._tcp.p.example": [SrvRecord(1, 1, 5063, "x.p.example")]},
                  a={"x.p.example": ["192.0.2.9"]})
    assert await TargetLocator(dns).locate(SipUri.parse("sip:p.example")) == [
        Target("tcp", "192.0.2.9", 5062, "x.p.example")]
    assert await TargetLocator(dns).locate(SipUri.parse("sips:p.example")) == [
        Target("tls", "192.0.2.9", 5063, "x.p.example")]
    # transport= skips NAPTR: only that transport's SRV
    dns.asked.clear()
    assert await TargetLocator(dns).locate(SipUri.parse("sip:p.example;transport=tcp")) == [
        Target("tcp", "192.0.2.9", 5062, "x.p.example")]
    assert dns.asked == ["SRV _sip._tcp.p.example", "A x.p.example"]


async def test_no_srv_falls_back_to_a_records_then_to_the_os_resolver() -> None:
    dns = FakeDns(a={"plain.example": ["192.0.2.7"]})
    assert await TargetLocator(dns).locate(SipUri.parse("sip:plain.example")) == [
        Target("udp", "192.0.2.7", 5060, "plain.example")]

    async def os_resolve(host: str) -> str:
        return "127.0.0.1" if host == "localhost" else ""

    assert await TargetLocator(FakeDns(), fallback=os_resolve).locate(SipUri.parse("sip:localhost")) == [
        Target("udp", "127.0.0.1", 5060, "localhost")]


@pytest.mark.parametrize("uri", ["sip:provider.example:5060", "sip:192.0.2.1", "sip:[2001:db8::1]"])
def test_explicit_port_or_numeric_ip_skips_srv(uri: str) -> None:
    assert not TargetLocator.applies(SipUri.parse(uri))


async def test_resolver_caches_each_answer_for_its_ttl() -> None:
    now = [0.0]
    calls: list[tuple[str, str]] = []

    class Srv:
        priority, weight, port, target = 1, 1, 5060, "x.example."

    async def query(name: str, rdtype: str) -> tuple[list[Any], float]:
        calls.append((name, rdtype))
        return ([Srv()], 60.0) if rdtype == "SRV" else ([], 30.0)

    resolver = DnsResolver(query=query, clock=lambda: now[0])
    assert await resolver.srv("_sip._udp.Example.") == [SrvRecord(1, 1, 5060, "x.example")]
    await resolver.srv("_sip._udp.example")
    now[0] = 59.0
    await resolver.srv("_sip._udp.example")
    assert calls == [("_sip._udp.example", "SRV")]
    await resolver.naptr("example")
    now[0] = 90.0  # the empty NAPTR answer (30 s from 59) and the SRV (60 s from 0) have both expired
    await resolver.srv("_sip._udp.example")
    await resolver.naptr("example")
    assert calls == [("_sip._udp.example", "SRV"), ("example", "NAPTR")] * 2
    assert resolver.queries == 4


def test_nameserver_syntax() -> None:
    assert parse_nameserver("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert parse_nameserver("[::1]:54") == ("::1", 54)
    assert parse_nameserver("::1") == ("::1", 53)
    for bad in ("dns.example", "127.0.0.1:0", "[::1]x"):
        with pytest.raises(ValueError):
            parse_nameserver(bad)


# ------------------------------------------------------------------ real DNS (dnsmasq) + loopback UAs
async def _dns_for(tmp_path: Path, first_port: int, second_port: int) -> Dnsmasq:
    return await Dnsmasq(tmp_path / "dns", [
        "naptr-record=provider.example,10,10,S,SIP+D2U,,_sip._udp.provider.example",
        f"srv-host=_sip._udp.provider.example,dead.provider.example,{first_port},10,100",
        f"srv-host=_sip._udp.provider.example,live.provider.example,{second_port},20,100",
        "host-record=dead.provider.example,127.0.0.1",
        "host-record=live.provider.example,127.0.0.1",
    ]).start()


def _locator(dns: Dnsmasq) -> TargetLocator:
    return TargetLocator(DnsResolver([dns.nameserver], timeout=2.0))


def _silent_port() -> tuple[Any, int]:
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never read: requests time out
    sock.bind(("127.0.0.1", 0))
    return sock, int(sock.getsockname()[1])


@pytest.mark.parametrize("first", ["timeout", "503"])
async def test_register_fails_over_to_the_second_srv_target(tmp_path: Path, first: str) -> None:
    seen: dict[str, int] = Counter()

    def handler(name: str, status: int) -> Any:
        async def on_request(req: ServerRequest) -> None:
            seen[name] += 1
            contact = req.request.headers.get("Contact") or ""
            await req.respond(status, headers=[("Contact", contact + ";expires=60")] if status == 200 else [])
        return on_request

    silent, silent_port = _silent_port()
    async with running_ua(fast_settings(), on_request=handler("busy", 503)) as busy, \
            running_ua(fast_settings(), on_request=handler("live", 200)) as live, \
            running_ua(fast_settings()) as client:
        first_port = silent_port if first == "timeout" else busy.bound_address()[1]
        dns = await _dns_for(tmp_path, first_port, live.bound_address()[1])
        try:
            client.locator = _locator(dns)
            reg = Registration(client, registrar="sip:provider.example", aor="sip:bridge@provider.example",
                               credentials=None, expires=60)
            await asyncio.wait_for(reg.start(), 15)
            assert reg.state == "registered"
            assert seen["live"] == 1 and seen["busy"] == (1 if first == "503" else 0)
            assert dns.queries("_sip._udp.provider.example") == 1
            await reg.stop()
            assert seen["live"] == 2  # the un-REGISTER too; the SRV answer came from the cache
            assert dns.queries("_sip._udp.provider.example") == 1
        finally:
            silent.close()
            await dns.stop()


async def test_invite_fails_over_after_timeout_and_503(tmp_path: Path) -> None:
    answered: list[str] = []

    def answering(name: str, status: int) -> Any:
        async def on_invite(inv: ServerInvite) -> None:
            answered.append(name)
            if status == 200:
                await inv.respond(200, body=SDP_ANSWER, headers=[("Content-Type", "application/sdp")])
            else:
                await inv.respond(status)
        return on_invite

    silent, silent_port = _silent_port()
    async with running_ua(fast_settings(), on_invite=answering("busy", 503)) as busy, \
            running_ua(fast_settings(), on_invite=answering("live", 200)) as live, \
            running_ua(fast_settings()) as client:
        dns = await Dnsmasq(tmp_path / "dns", [
            f"srv-host=_sip._udp.provider.example,dead.provider.example,{silent_port},10,100",
            f"srv-host=_sip._udp.provider.example,busy.provider.example,{busy.bound_address()[1]},20,100",
            f"srv-host=_sip._udp.provider.example,live.provider.example,{live.bound_address()[1]},30,100",
            *(f"host-record={n}.provider.example,127.0.0.1" for n in ("dead", "busy", "live")),
        ]).start()
        try:
            client.locator = _locator(dns)
            call = client.invite("sip:+15551234567@provider.example", from_uri="sip:bridge@bridge.example",
                                 outbound_proxy="sip:provider.example", sdp=SDP_OFFER)
            final = await asyncio.wait_for(call.wait_final(), 20)
            assert final.status == 200 and answered == ["busy", "live"]
            assert call.dialog is not None and call.next_hop == ("udp", ("127.0.0.1", live.bound_address()[1]))
            await call.dialog.bye()
            # the next call tries the targets that failed last: no second wait on the dead one
            started = asyncio.get_running_loop().time()
            again = client.invite("sip:+15551234567@provider.example", from_uri="sip:bridge@bridge.example",
                                  outbound_proxy="sip:provider.example", sdp=SDP_OFFER)
            assert (await asyncio.wait_for(again.wait_final(), 20)).status == 200
            assert answered == ["busy", "live", "live"]
            assert asyncio.get_running_loop().time() - started < 2.0  # Timer B (64 x T1) is 3.2 s here
            assert again.dialog is not None
            await again.dialog.bye()
        finally:
            silent.close()
            await dns.stop()


async def test_preflight_accepts_a_trunk_domain_with_only_srv_records_and_flags_an_unknown_one(tmp_path: Path) -> None:
    import dataclasses

    from bridge.config import SipDnsConfig, load_config
    from bridge.preflight import check_trunk_proxy

    dns = await _dns_for(tmp_path, 5070, 5080)  # provider.example has NAPTR/SRV but no A record of its own
    try:
        base = load_config(Path(__file__).parents[2] / "bridge" / "example-config.yaml", {})

        def with_proxy(proxy: str) -> Any:
            sip = dataclasses.replace(base.sip, trunk=dataclasses.replace(base.sip.trunk, proxy=proxy),
                                      dns=SipDnsConfig(nameservers=(dns.nameserver,), timeout_s=1.0))
            return dataclasses.replace(base, sip=sip)

        assert await check_trunk_proxy(with_proxy("sip:provider.example")) is None
        warning = await check_trunk_proxy(with_proxy("sip:nothing.provider.example"))
        assert warning is not None and warning.startswith("sip.trunk.proxy: 'nothing.provider.example' does not")
    finally:
        await dns.stop()


async def test_naptr_choosing_tcp_sends_the_invite_over_tcp_with_a_tcp_contact(tmp_path: Path) -> None:
    contacts: list[str] = []

    async def on_invite(inv: ServerInvite) -> None:
        contacts.append(inv.request.headers.get("Contact") or "")
        await inv.respond(200, body=SDP_ANSWER, headers=[("Content-Type", "application/sdp")])

    async with running_ua(fast_settings("tcp"), on_invite=on_invite) as live, \
            running_ua(fast_settings("udp", "tcp")) as client:
        dns = await Dnsmasq(tmp_path / "dns", [
            "naptr-record=provider.example,10,10,S,SIP+D2T,,_sip._tcp.provider.example",
            "naptr-record=provider.example,20,10,S,SIP+D2U,,_sip._udp.provider.example",
            f"srv-host=_sip._tcp.provider.example,live.provider.example,{live.bound_address('tcp')[1]},10,100",
            "host-record=live.provider.example,127.0.0.1",
        ]).start()
        try:
            client.locator = _locator(dns)
            call = client.invite("sip:+15551234567@provider.example", from_uri="sip:bridge@bridge.example",
                                 outbound_proxy="sip:provider.example", sdp=SDP_OFFER)
            final = await asyncio.wait_for(call.wait_final(), 10)
            assert final.status == 200 and call.next_hop[0] == "tcp"
            assert "SIP/2.0/TCP" in (call.request.headers.get("Via") or "")
            assert contacts and contacts[0].endswith(f":{client.bound_address('tcp')[1]};transport=tcp>")
            assert call.dialog is not None and call.dialog.transport == "tcp"
            await call.dialog.bye()
        finally:
            await dns.stop()


@pytest.mark.parametrize("cert_name,expected", [("provider.example", 200), ("other.example", "refused")])
async def test_sips_srv_target_must_present_a_certificate_for_the_domain_looked_up(
        tmp_path: Path, cert_name: str, expected: int | str) -> None:
    """RFC 5922 4.1: the certificate of a target found by SRV names the domain of the URI (not the SRV target's
    name nor its address: this leaf has neither as a SAN)."""
    from bridge.sip.errors import SipTransportError
    from tests.harness.tls_certs import TestCa

    ca = TestCa(tmp_path)
    leaf = ca.leaf(cert_name)

    async def on_invite(inv: ServerInvite) -> None:
        await inv.respond(200, body=SDP_ANSWER, headers=[("Content-Type", "application/sdp")])

    async with running_ua(fast_settings("tls", tls_certfile=leaf.cert, tls_keyfile=leaf.key),
                          on_invite=on_invite) as live, \
            running_ua(fast_settings("udp", tls_cafile=ca.cert)) as client:
        dns = await Dnsmasq(tmp_path / "dns", [
            f"srv-host=_sips._tcp.provider.example,live.provider.example,{live.bound_address('tls')[1]},10,100",
            "host-record=live.provider.example,127.0.0.1",
        ]).start()
        try:
            client.locator = _locator(dns)
            call = client.invite("sips:+15551234567@provider.example", from_uri="sip:bridge@bridge.example",
                                 outbound_proxy="sips:provider.example", sdp=SDP_OFFER)
            if expected == 200:
                final = await asyncio.wait_for(call.wait_final(), 10)
                assert final.status == 200 and call.next_hop[0] == "tls"
                assert call.dialog is not None
                await call.dialog.bye()
            else:
                with pytest.raises(SipTransportError, match=r"certificate of provider\.example refused"):
                    await asyncio.wait_for(call.wait_final(), 10)
        finally:
            await dns.stop()
