"""Composition root: builds the SIP user agent, the Matrix side, the media settings and the call
driver from one Config, and starts/stops them in order."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from .call.dialplan import format_number
from .calls.manager import CallManager, CallSettings, InboundSettings
from .calls.outbound import TrunkTarget
from .calls.ports import PortalInfo
from .config import Config
from .db.call_log import CallLog, CallLogEntry
from .db.database import create_database
from .logs import setup_logging
from .matrix.connector import MatrixSide
from .matrix.ghosts import UNKNOWN_NUMBER
from .media.ice import restrict_host_addresses
from .media.settings import IceServer, MediaSettings
from .sip.digest import Credentials
from .sip.registration import Registration
from .sip.settings import ListenAddress, SipSettings
from .sip.ua import UserAgent
from .sip.uri import SipUri
from .stats import log_stats_on_signal

log = logging.getLogger(__name__)


def sip_settings(config: Config) -> SipSettings:
    sip = config.sip
    return SipSettings(
        listen=[ListenAddress(item.transport, item.host, item.port) for item in sip.listen],
        advertised_host=sip.advertised_host, advertised_port=sip.advertised_port, user_agent=sip.user_agent,
        t1=sip.t1_ms / 1000, t2=sip.t2_ms / 1000, tls_certfile=sip.tls_cert, tls_keyfile=sip.tls_key,
    )


def media_settings(config: Config) -> MediaSettings:
    m = config.media
    return MediaSettings(
        rtp_host=m.rtp_host, advertised_ip=m.advertised_ip, port_start=m.port_start, port_end=m.port_end,
        codecs=list(m.codecs),
        ice_servers=[IceServer(list(s.urls), s.username, s.credential) for s in m.ice_servers],
        ice_timeout_s=m.ice_timeout_s,
    )


def trunk_target(config: Config) -> TrunkTarget:
    trunk = config.sip.trunk
    proxy = SipUri.parse(trunk.proxy)
    domain = trunk.domain or proxy.host
    from_domain = trunk.from_domain or domain
    creds = None
    if trunk.auth_username and trunk.auth_password is not None:
        creds = Credentials(trunk.auth_username, trunk.auth_password)
    return TrunkTarget(proxy=trunk.proxy, domain=domain, from_uri=f"sip:{trunk.from_user}@{from_domain}",
                       from_display=None, credentials=creds)


class MatrixAdapter:
    """The call driver's view of the Matrix side (calls.ports.MatrixPort)."""

    def __init__(self, side: MatrixSide, config: Config) -> None:
        self.side = side
        self.config = config

    @staticmethod
    def _info(room_id: str, mxid: str, number: str) -> PortalInfo:
        return PortalInfo(room_id=room_id, mxid=mxid, number=None if number == UNKNOWN_NUMBER else number)

    async def portal_for_room(self, room_id: str) -> PortalInfo | None:
        portal = await self.side.portals.get(room_id)
        return self._info(portal.room_id, portal.mxid, portal.number) if portal else None

    async def send_call_event(self, portal: PortalInfo, event_type: str, content: dict[str, Any]) -> str:
        return await self.side.portals.send_call_event(portal.room_id, portal.number, event_type, content)

    async def send_notice(self, portal: PortalInfo, text: str) -> None:
        await self.side.portals.send_notice(portal.room_id, portal.number, text)

    async def portal_for_inbound(self, mxid: str, number: str | None, caller_name: str | None) -> PortalInfo:
        portal = await self.side.portals.get_or_create_portal(mxid, number, caller_name=caller_name)
        return self._info(portal.room_id, portal.mxid, portal.number)

    async def is_joined(self, room_id: str, mxid: str) -> bool:
        return await self.side.portals.is_joined(room_id, mxid)

    async def wait_joined(self, room_id: str, mxid: str, timeout: float) -> bool:
        return await self.side.portals.wait_joined(room_id, mxid, timeout)

    def can_dial(self, mxid: str) -> bool:
        return self.side.permissions.can_use(mxid)

    def format_number(self, number: str | None) -> str:
        return format_number(number) if number else self.config.bridge.unknown_caller_name


class CallLogAdapter:
    """calls.ports.CallLogPort on the call_log table; a DB failure is logged, never ends a call."""

    def __init__(self, table: CallLog) -> None:
        self.table = table

    @staticmethod
    def _now() -> int:
        return int(time.time() * 1000)

    async def call_started(self, *, call_id: str, party_id: str, sip_call_id: str, room_id: str, direction: str,
                           number: str | None, mxid: str) -> None:
        try:
            await self.table.insert(CallLogEntry(
                call_id=call_id, party_id=party_id, sip_call_id=sip_call_id, room_id=room_id,
                direction="inbound" if direction == "inbound" else "outbound", number=number, mxid=mxid,
                invite_ts=self._now(),
            ))
        except Exception:
            log.exception("call log insert failed for %s", call_id)

    async def call_answered(self, call_id: str) -> None:
        try:
            await self.table.update_answered(call_id, self._now())
        except Exception:
            log.exception("call log update failed for %s", call_id)

    async def call_ended(self, call_id: str, reason: str) -> None:
        try:
            await self.table.update_ended(call_id, self._now(), reason)
        except Exception:
            log.exception("call log update failed for %s", call_id)


class Bridge:
    """The running bridge. ``start()`` then ``stop()``; construct inside a running event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.matrix = MatrixSide(config, create_database(config.appservice.database))
        plan = config.dialplan
        inbound = config.sip.inbound
        self.calls = CallManager(
            settings=CallSettings(
                trunk=trunk_target(config),
                inbound=InboundSettings(
                    trusted_sources=list(inbound.trusted_sources),
                    accounts={a.username: a.password for a in inbound.accounts},
                    realm=inbound.realm or config.homeserver.domain,
                    routes=list(inbound.routes),
                    default_route=list(inbound.default_route),
                    rate_per_second=inbound.rate_limit.per_source_per_second, rate_burst=inbound.rate_limit.burst,
                    lifetime_ms=config.bridge.invite_lifetime_ms, ring_timeout_s=config.bridge.ring_timeout_s,
                ),
                media=media_settings(config),
                dialplan=plan,
                failure_notices=config.bridge.failure_notices,
            ),
            ua_ref=lambda: self.ua,
            matrix=MatrixAdapter(self.matrix, config),
            call_log=CallLogAdapter(self.matrix.call_log),
        )
        self.matrix.handler = self.calls
        self.ua = UserAgent(sip_settings(config), on_invite=self.calls.on_invite)
        self.registration: Registration | None = None

    async def start(self) -> None:
        await self.ua.start()
        await self.matrix.start()
        stale = await self.matrix.call_log.close_unfinished(int(time.time() * 1000), "bridge_restart")
        if stale:
            log.warning("%d call(s) were still in progress when the bridge last stopped; marked bridge_restart", stale)
        trunk = self.config.sip.trunk
        if trunk.register:
            domain = trunk.domain or SipUri.parse(trunk.proxy).host
            creds = trunk_target(self.config).credentials
            self.registration = Registration(
                self.ua, registrar=f"sip:{domain}", aor=f"sip:{trunk.auth_username or trunk.from_user}@{domain}",
                credentials=creds, expires=trunk.register_expires, outbound_proxy=trunk.proxy,
            )
            await self.registration.start()
        host, port = self.ua.bound_address()
        log.info("bridge running: SIP on %s:%d, appservice on %s:%s", host, port,
                 self.config.appservice.hostname, self.matrix.port)

    async def stop(self) -> None:
        await self.calls.stop()
        if self.registration is not None:
            await self.registration.stop()
        await self.matrix.stop()
        await self.ua.stop()


async def run(config: Config) -> None:
    """Run until SIGINT/SIGTERM."""
    setup_logging(config.logging.level, config.logging.format)
    restrict_host_addresses(config.media.ice_host_addresses)
    bridge = Bridge(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log_stats_on_signal(loop, bridge)  # SIGUSR1: one "stats: ..." log line (bridge/stats.py)
    await bridge.start()
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await bridge.stop()
