"""Composition root: builds the SIP user agent, the Matrix side, the media settings and the call
driver from one Config, and starts/stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .call.dial_permissions import dial_permissions_for
from .call.dialplan import format_number
from .call.limits import CallLimits
from .call.policy import TrustedSources
from .call.record import CallRecord
from .call.recovery import CRASH_REASON
from .calls.accounts import AccountManager, AccountSettings
from .calls.caller_id import CallerIdSettings
from .calls.manager import CallManager, CallSettings, InboundSettings
from .calls.outbound import TrunkTarget
from .calls.ports import MatrixUnavailable, PortalInfo
from .calls.recovery import CrashRecovery
from .calls.user_policy import UserDialRules
from .config import Config
from .db.call_log import CallLog, CallLogEntry
from .db.call_state import CallStateTable
from .db.credential_cipher import CredentialCipher
from .db.database import create_database
from .logs import call_logger, configure_logging
from .matrix.connector import MatrixSide
from .matrix.ghosts import UNKNOWN_NUMBER
from .matrix.outbox import NotDelivered, OutboxItem
from .media import fastrelay
from .media.factory import InProcessMedia, MediaFactory, WorkerMedia
from .media.ice import restrict_host_addresses
from .media.rtpengine_media import RtpengineBackend, RtpengineSettings
from .media.rtpengine_nodes import NodeSpec
from .media.settings import IceServer, MediaSettings
from .media.worker_pool import WorkerPool, default_workers
from .metrics import Metrics
from .observability import HomeserverProbe, Listen, ObservabilityServer
from .preflight import run_preflight
from .sip.digest import Credentials
from .sip.registration import Registration
from .sip.resolver import DnsResolver
from .sip.session_timer import SessionTimerSettings
from .sip.settings import ListenAddress, SipSettings
from .sip.targets import TargetLocator
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
        tls_cafile=sip.tls_ca, tls_verify=sip.tls_verify,
        tcp_idle_timeout=sip.tcp_idle_timeout_s,
        max_connections=sip.max_connections,
        max_connections_per_source=sip.max_connections_per_source,
        session_timer=SessionTimerSettings(sip.session_timer.enabled, sip.session_timer.expires_s,
                                           sip.session_timer.min_se_s),
        prack=sip.prack,
        # names in the messages of the trunk and of trusted sources may be resolved; nobody else's
        trusted_hosts=(*sip.inbound.trusted_sources, SipUri.parse(sip.trunk.proxy).host),
    )


def media_settings(config: Config) -> MediaSettings:
    m = config.media
    return MediaSettings(
        rtp_host=m.rtp_host, advertised_ip=m.advertised_ip, port_start=m.port_start, port_end=m.port_end,
        codecs=list(m.codecs),
        ice_servers=[IceServer(list(s.urls), s.username, s.credential) for s in m.ice_servers],
        ice_timeout_s=m.ice_timeout_s, rtp_source=m.rtp_source, rtp_latch_packets=m.rtp_latch_packets,
        srtp=m.srtp,
        rtcp_interval_s=m.rtcp_interval_s,
    )


def media_factory(config: Config, settings: MediaSettings) -> MediaFactory:
    """In-process media (``media.workers: 0``) or a pool of worker processes (one per core for "auto")."""
    count = default_workers() if config.media.workers is None else config.media.workers
    if count == 0:
        return InProcessMedia()
    lg = config.logging
    return WorkerMedia(WorkerPool(settings, count, ice_host_addresses=list(config.media.ice_host_addresses),
                                  log_level=lg.level, log_format=lg.format, log_loggers=dict(lg.loggers)))


def rtpengine_backend(config: Config) -> RtpengineBackend | None:
    r = config.media.rtpengine
    if config.media.backend != "rtpengine" or r is None:
        return None
    nodes = [NodeSpec(n.url, n.weight) for n in r.nodes]
    return RtpengineBackend(RtpengineSettings(nodes, timeout_s=r.timeout_s, retry_after_s=r.retry_after_s,
                                              call_id_prefix=r.call_id_prefix), media_settings(config))


def trunk_target(config: Config) -> TrunkTarget:
    trunk = config.sip.trunk
    proxy = SipUri.parse(trunk.proxy)
    domain = trunk.domain or proxy.host
    from_domain = trunk.from_domain or domain
    creds = None
    if trunk.auth_username and trunk.auth_password is not None:
        creds = Credentials(trunk.auth_username, trunk.auth_password)
    return TrunkTarget(proxy=trunk.proxy, domain=domain, from_uri=f"sip:{trunk.from_user}@{from_domain}",
                       from_display=None, credentials=creds,
                       scheme="sips" if proxy.scheme == "sips" else "sip")


def caller_id_settings(config: Config, ghost_mxid: Callable[[str], str | None]) -> CallerIdSettings:
    trunk = config.sip.trunk
    proxy_host = SipUri.parse(trunk.proxy).host
    # PAI in the trunk's answers is believed only when the proxy is an address in sip.inbound.trusted_sources
    # (a host name is not resolved here: list the trunk by address to trust it).
    trunk_trusted = TrustedSources(config.sip.inbound.trusted_sources).allows(proxy_host)
    return CallerIdSettings(
        identity_header=trunk.identity_header, caller_ids=config.bridge.caller_ids,
        identity_domain=trunk.from_domain or trunk.domain or proxy_host, trunk_trusted=trunk_trusted,
        ghost_mxid=ghost_mxid,
    )


def account_manager(config: Config, matrix: MatrixSide, ua_ref: Callable[[], UserAgent]) -> AccountManager:
    """Per-user SIP accounts on the sip_account table; without bridge.accounts.encryption_key logins are refused."""
    acc = config.bridge.accounts
    cipher = CredentialCipher(acc.encryption_key, acc.previous_keys) if acc.key_configured else None
    return AccountManager(
        ua_ref=ua_ref, store=matrix.tables.sip_account, cipher=cipher,
        settings=AccountSettings(shared_trunk=acc.shared_trunk, register_expires=acc.register_expires,
                                 login_timeout_s=acc.login_timeout_s),
        shared_trunk=trunk_target(config), dialplan=config.dialplan, permission_level=matrix.permissions.level)


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

    async def send_call_event(self, portal: PortalInfo, event_type: str, content: dict[str, Any], *,
                              deliver_within: float | None = None) -> str:
        item = self.side.portals.send_call_event(portal.room_id, portal.number, event_type, content)
        return await self._delivered(item, deliver_within)

    async def send_notice(self, portal: PortalInfo, text: str, *, deliver_within: float | None = None) -> str:
        item = self.side.portals.send_notice(portal.room_id, portal.number, text)
        return await self._delivered(item, deliver_within)

    async def _delivered(self, item: OutboxItem, deliver_within: float | None) -> str:
        if deliver_within is not None:
            try:
                await self.side.portals.outbox.wait_delivered(item, deliver_within)
            except NotDelivered as e:
                raise MatrixUnavailable(f"{item.event_type} to {item.room_id}: {e}") from e
        return item.txn_id

    async def send_audio(self, portal: PortalInfo, data: bytes, *, filename: str, mimetype: str, duration_ms: int,
                         body: str) -> None:
        await self.side.portals.send_audio(portal.room_id, portal.number, data, filename=filename,
                                           mimetype=mimetype, duration_ms=duration_ms, body=body)

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

    def number_for_ghost(self, mxid: str) -> str | None:
        number = self.side.ghosts.number_from_mxid(mxid)
        return None if number == UNKNOWN_NUMBER else number


class CallLogAdapter:
    """calls.ports.CallLogPort on the call_log table; a DB failure is logged, never ends a call."""

    def __init__(self, table: CallLog) -> None:
        self.table = table

    @staticmethod
    def _now() -> int:
        return int(time.time() * 1000)

    async def call_started(self, *, call_id: str, party_id: str, sip_call_id: str, room_id: str, direction: str,
                           number: str | None, mxid: str) -> bool:
        try:
            claimed = await self.table.claim(CallLogEntry(
                call_id=call_id, party_id=party_id, sip_call_id=sip_call_id, room_id=room_id,
                direction="inbound" if direction == "inbound" else "outbound", number=number, mxid=mxid,
                invite_ts=self._now(),
            ))
        except Exception:
            call_logger(__name__, call_id, sip_call_id).exception("call log insert failed")
            return False
        if not claimed:
            call_logger(__name__, call_id, sip_call_id).warning("call_id already in the call log: not logged again")
        return claimed

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


class CallStateAdapter:
    """calls.ports.CallStateStore on the call_state table; a DB failure is logged, never ends a call."""

    def __init__(self, table: CallStateTable) -> None:
        self.table = table

    async def save(self, record: CallRecord) -> None:
        try:
            await self.table.save(record)
        except Exception:
            log.exception("call state save failed for %s", record.call_id)

    async def delete(self, call_id: str) -> None:
        try:
            await self.table.delete(call_id)
        except Exception:
            log.exception("call state delete failed for %s", call_id)

    async def all(self) -> list[CallRecord]:
        return await self.table.all()


class Bridge:
    """The running bridge. ``start()`` then ``stop()``; construct inside a running event loop."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.metrics = Metrics()  # its own CollectorRegistry: nothing global
        self.matrix = MatrixSide(config, create_database(config.appservice.database))
        plan = config.dialplan
        inbound = config.sip.inbound
        call_state = CallStateAdapter(self.matrix.tables.call_state)
        self.rtpengine = rtpengine_backend(config)  # None: embedded media
        early_media = config.bridge.early_media
        if self.rtpengine is not None and early_media == "announce":
            log.warning("bridge.early_media announce needs embedded media (it records the audio): off with "
                        "media.backend rtpengine")
            early_media = "off"
        self.media: MediaFactory = self.rtpengine if self.rtpengine is not None else media_factory(
            config, media_settings(config))
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
                    homeserver_timeout_s=config.bridge.homeserver_timeout_s,
                ),
                media=media_settings(config),
                dialplan=plan,
                failure_notices=config.bridge.failure_notices,
                early_media=early_media,
                limits=CallLimits(
                    attempts_per_minute=config.bridge.limits.attempts_per_minute,
                    concurrent_calls=config.bridge.limits.concurrent_calls,
                    total_concurrent_calls=config.bridge.limits.total_concurrent_calls,
                ),
                caller_id=caller_id_settings(config, self.matrix.ghosts.mxid_for),
            ),
            ua_ref=lambda: self.ua,
            matrix=MatrixAdapter(self.matrix, config),
            call_log=self.metrics.wrap_call_log(CallLogAdapter(self.matrix.call_log)),
            call_state=call_state,
            observer=self.metrics,
            media_factory=self.media,
        )
        self.matrix.handler = self.calls
        self.ua = UserAgent(sip_settings(config), on_invite=self.calls.on_invite)
        # Per-user SIP accounts: the AccountService for the bot / provisioning API (set accounts.notifier for
        # registration notices); the call manager routes each user's calls and INVITEs to their Contact with it.
        self.accounts = account_manager(config, self.matrix, lambda: self.ua)
        self.calls.accounts = self.accounts
        # the bot's account commands and the provisioning API (without an encryption key they say accounts are
        # off instead of asking for a password first); registration notices go to the users' management rooms
        self.matrix.accounts = self.accounts if config.bridge.accounts.key_configured else None
        self.accounts.notifier = self.matrix.account_notifier
        self.matrix.account_commands.refusal = self._line_refusal
        self.calls.dial_rules = UserDialRules(dial_permissions_for(config), self.matrix.permissions.level)
        self.ua.locator = TargetLocator(DnsResolver(config.sip.dns.nameservers, timeout=config.sip.dns.timeout_s),
                                        fallback=self.ua.transport.resolve)
        self.ua.on_message_observed = self.metrics.sip_message
        self.matrix.portals.outbox.on_attempt = lambda ok, retry: self.metrics.homeserver_request(ok=ok, retry=retry)
        self.registration: Registration | None = None
        self._watch_metrics()
        self._started = False
        mc = config.metrics
        self.homeserver_probe = HomeserverProbe(
            config.homeserver.address, interval=mc.homeserver_check_interval_s,
            timeout=mc.homeserver_check_timeout_s, verify_ssl=config.homeserver.verify_ssl)
        self.monitoring: ObservabilityServer | None = None
        if mc.listener:
            self.monitoring = ObservabilityServer(
                Listen(mc.listen_address, mc.listen_port), registry=self.metrics.registry if mc.enabled else None,
                health=mc.health, checks=self._ready_checks())
        self.recovery = CrashRecovery(ua=self.ua, store=call_state, matrix=self.calls.matrix,
                                      call_log=self.calls.call_log, ports=self.calls.ports)

    def _line_refusal(self, mxid: str) -> str | None:
        """For the bot's ``dial``: why the user's calls would be refused (no account, shared line closed)."""
        trunk = self.accounts.outbound_trunk(mxid)
        return trunk if isinstance(trunk, str) else None

    def _watch_metrics(self) -> None:
        """What the metrics read at scrape time."""
        src = self.metrics.sources
        calls = self.calls
        src.live_media = lambda: [*(s.media.stats() for s in calls.outbound.values()),
                                  *(s.media.stats() for s in calls.inbound.values())]
        src.registration_state = lambda: self.registration.state if self.registration is not None else None
        src.transactions_in_flight = lambda: self.matrix.server.transactions_in_flight
        src.room_queue_depth = lambda: self.matrix.queues.queued
        src.room_queues_active = lambda: self.matrix.queues.active_rooms

    def _ready_checks(self) -> dict[str, Callable[[], Awaitable[str | None]]]:
        async def started() -> str | None:
            return None if self._started else "the bridge is starting or stopping"

        async def database() -> str | None:
            await self.matrix.db.fetchval("SELECT 1")
            return None

        async def homeserver() -> str | None:
            return self.homeserver_probe.problem()

        async def sip() -> str | None:
            return None if self.ua.listening else "SIP listeners are not bound"

        async def registration() -> str | None:
            state = self.registration.state if self.registration is not None else "not started"
            return None if state == "registered" else f"trunk registration is {state}"

        checks: dict[str, Callable[[], Awaitable[str | None]]] = {
            "started": started, "database": database, "homeserver": homeserver, "sip": sip}
        if self.config.sip.trunk.register:
            checks["registration"] = registration
        return checks

    async def start(self) -> None:
        if self.monitoring is not None:
            await self.monitoring.start()  # first: /health answers while the rest starts
            if self.config.metrics.health:
                await self.homeserver_probe.start()
        try:
            await self._start()
        except BaseException:
            # release what was opened: an open database thread (aiosqlite) would keep the process from exiting
            registration, monitoring = self.registration, self.monitoring
            for step in (self.recovery.stop, self.accounts.stop, registration.stop if registration else None,
                         self.matrix.stop, self.ua.stop, self.media.stop, self.homeserver_probe.stop,
                         monitoring.stop if monitoring else None):
                if step is not None:
                    with contextlib.suppress(Exception):
                        await step()
            raise

    async def _start(self) -> None:
        await self.matrix.open()
        await self.recovery.load()  # dialogs a crash left are back in the UA before it listens
        # media workers run before a call can arrive; rtpengine: the ng socket, and calls an earlier run left on
        # the nodes are deleted
        await self.media.start()
        await self.ua.start()
        # calls a crash left open: the SIP side is ended now, even with the homeserver down; the Matrix
        # events go out from tasks through the MatrixPort
        await self.recovery.reap()
        await self.accounts.start()  # stored accounts register in the background (after the UA listens)
        stale = await self.matrix.call_log.close_unfinished(int(time.time() * 1000), CRASH_REASON)
        if stale:
            log.warning("%d call(s) without a call state record were left open; marked %s", stale, CRASH_REASON)
        await self.matrix.connect()
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
        self._started = True
        log.info("bridge running: SIP on %s:%d, appservice on %s:%s (%s event loop, %s)", host, port,
                 self.config.appservice.hostname, self.matrix.port,
                 type(asyncio.get_running_loop()).__module__.split(".")[0], fastrelay.describe())

    async def stop(self) -> None:
        self._started = False  # /ready: 503 from now on
        await self.recovery.stop()
        await self.calls.stop()
        await self.accounts.stop()  # refreshes stop; bindings are kept for the restart (see AccountManager.stop)
        await self.media.stop()
        if self.registration is not None:
            await self.registration.stop()
        await self.matrix.stop()
        await self.ua.stop()
        await self.homeserver_probe.stop()
        if self.monitoring is not None:
            await self.monitoring.stop()


STOP_TIMEOUT_S = 15.0  # calls ended politely, queued hangups given a few seconds; then exit regardless


async def run(config: Config) -> int:
    """Run until SIGINT/SIGTERM; returns the exit status.

    The signal handlers come first, so a signal stops the bridge whatever it is doing: waiting for an
    unreachable homeserver at start, running, or ending calls. A second signal exits at once."""
    configure_logging(config.logging)
    restrict_host_addresses(config.media.ice_host_addresses)
    await run_preflight(config)  # one warning per setting that would make calls fail
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.warning("%s again: exiting at once", sig.name)
            logging.shutdown()
            os._exit(1)
        log.info("%s received: stopping", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    bridge = Bridge(config)
    log_stats_on_signal(loop, bridge)  # SIGUSR1: one "stats: ..." log line (bridge/stats.py)
    status = 0
    starting = asyncio.create_task(bridge.start(), name="bridge-start")
    stopping = asyncio.create_task(stop.wait(), name="bridge-stop-signal")
    try:
        await asyncio.wait([starting, stopping], return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        elif (exc := starting.exception()) is not None:
            log.error("bridge could not start: %s", exc)
            status = 1
        else:
            await stop.wait()
    finally:
        stopping.cancel()
        log.info("shutting down")
        try:
            async with asyncio.timeout(STOP_TIMEOUT_S):
                await bridge.stop()
        except TimeoutError:
            # Whatever still holds on (a DB thread, a peer connection) must not keep the process alive.
            log.error("shutdown did not finish within %.0fs; exiting anyway", STOP_TIMEOUT_S)
            logging.shutdown()
            os._exit(status or 1)
    return status
