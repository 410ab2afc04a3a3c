"""``MatrixSide``: everything Matrix, composed in one place. ``app.py`` builds one and starts/stops it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web
from mautrix.appservice import AppServiceAPI
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store import MemoryStateStore
from mautrix.errors import MatrixRequestError
from mautrix.types import UserID
from mautrix.util.async_db import Database

from bridge.calls.account_api import AccountService
from bridge.config import Config
from bridge.db.database import Tables
from bridge.matrix.account_commands import AccountCommands
from bridge.matrix.account_notices import RoomNotifier
from bridge.matrix.appservice import AppserviceServer
from bridge.matrix.bot import Bot
from bridge.matrix.dispatcher import EventDispatcher
from bridge.matrix.ghosts import Ghosts
from bridge.matrix.handler import CallHandler, NullCallHandler
from bridge.matrix.management_rooms import ManagementRooms
from bridge.matrix.outbox import is_retriable
from bridge.matrix.permissions import Permissions
from bridge.matrix.portals import Portals
from bridge.matrix.provisioning import ProvisioningAPI
from bridge.matrix.provisioning_auth import ProvisioningAuth, homeserver_whoami
from bridge.matrix.room_queue import RoomQueues
from bridge.matrix.thirdparty import ThirdParty

log = logging.getLogger(__name__)

CONNECT_BACKOFF_START_S = 1.0
CONNECT_BACKOFF_MAX_S = 30.0
CONNECT_ATTEMPT_TIMEOUT_S = 20.0  # a homeserver that accepts connections but never answers
OUTBOX_GRACE_S = 5.0  # at stop, how long queued events (hangups of the calls just ended) may take to go out


def _describe(e: BaseException) -> str:
    """One line for an error (aiohttp's connection errors carry the address; TimeoutError carries nothing)."""
    text = str(e) or type(e).__name__
    return text.splitlines()[0] if text.strip() else type(e).__name__


class _MemoryASStateStore(MemoryStateStore, ASStateStore):
    """mautrix's in-memory state cache (membership/power levels it saw through its own requests). Only a cache:
    portal and membership decisions always ask the homeserver or the DB."""

    def __init__(self) -> None:
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)


class MatrixSide:
    """Construct inside a running event loop (it opens an aiohttp client session).

    Attributes for the call driver: ``portals``, ``ghosts``, ``call_log``, ``permissions``, ``tables``,
    ``web_app`` (the appservice aiohttp app; ``start(serve=True)`` also listens on appservice.hostname:port).
    Set ``handler`` (a :class:`CallHandler`) before events arrive; it may be replaced any time.
    """

    def __init__(self, config: Config, db: Database, handler: CallHandler | None = None) -> None:
        self.config = config
        self.db = db
        self.tables = Tables.for_db(db)
        self.call_log = self.tables.call_log
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=config.homeserver.verify_ssl)
        )
        self.az = AppServiceAPI(
            base_url=config.homeserver.address,
            bot_mxid=UserID(config.bot_mxid),
            token=config.appservice.as_token,
            log=logging.getLogger("bridge.matrix.api"),  # type: ignore[arg-type]
            state_store=_MemoryASStateStore(),
            client_session=self._session,
        )
        self.permissions = Permissions(config.bridge.permissions, config.homeserver.domain)
        self.ghosts = Ghosts(self.az, config, self.tables.ghost)
        self.portals = Portals(self.az, config, self.tables.portal, self.ghosts, self.permissions)
        self.management_rooms = ManagementRooms(self.az, config.bot_mxid, self.tables.management_room, self.portals)
        self.account_commands = AccountCommands(self.permissions, self.portals, self.management_rooms)
        self.account_notifier = RoomNotifier(self.management_rooms, self.portals)  # the account service's notifier
        self.bot = Bot(self.az, config, self.permissions, self.portals, self.account_commands)
        self.dispatcher = EventDispatcher(config, self.ghosts, self.portals, self.bot, self.permissions,
                                          handler or NullCallHandler())
        self.queues = RoomQueues()
        self.server = AppserviceServer(config.appservice.hs_token, self.tables.txn, self.queues,
                                       self.dispatcher.dispatch, self.ghosts.handle_user_query)
        self.web_app: web.Application = self.server.app
        ThirdParty(config, self.ghosts).add_routes(self.web_app)  # Element's dial pad (/thirdparty/...)
        self.provisioning: ProvisioningAPI | None = None
        if config.provisioning.enabled:
            self.provisioning = self._provisioning()
        self._runner: web.AppRunner | None = None
        self._opened = False
        self.port: int | None = None  # the bound port once serving (useful when configured as 0)

    def _provisioning(self) -> ProvisioningAPI:
        prov = self.config.provisioning
        if prov.secret is None:
            log.info("provisioning.shared_secret is a placeholder: the provisioning API accepts only users' own "
                     "access tokens (run -g to generate a secret)")
        auth = ProvisioningAuth(prov.secret, homeserver_whoami(self._session, self.config.homeserver.address))
        api = ProvisioningAPI(auth=auth, permissions=self.permissions, rooms=self.management_rooms,
                              bot_mxid=self.config.bot_mxid, homeserver_domain=self.config.homeserver.domain)
        api.add_to(self.web_app, prov.prefix)
        self.server.open_prefixes.append(prov.prefix)
        return api

    @property
    def accounts(self) -> AccountService | None:
        """The per-user account service the bot commands and the provisioning API use (None: accounts off)."""
        return self.account_commands.accounts

    @accounts.setter
    def accounts(self, service: AccountService | None) -> None:
        self.account_commands.accounts = service
        if self.provisioning is not None:
            self.provisioning.accounts = service

    @property
    def handler(self) -> CallHandler:
        return self.dispatcher.handler

    @handler.setter
    def handler(self, handler: CallHandler) -> None:
        self.dispatcher.handler = handler

    async def start(self, *, serve: bool = True) -> None:
        """Open the DB (running migrations), listen for the homeserver, register the bot and set its name."""
        await self.open()
        await self.connect(serve=serve)

    async def open(self) -> None:
        """Open the DB and run migrations; no network. Idempotent. Crash recovery runs after this, before
        the homeserver is reached (it may be down)."""
        if self._opened:
            return
        await self.db.start()
        self._opened = True
        await self.tables.txn.prune_old()

    async def connect(self, *, serve: bool = True) -> None:
        """Listen for the homeserver, register the bot, ask the homeserver to ping us.

        An unreachable homeserver is waited for, forever, with capped back-off and one log line per attempt:
        the admin may start the bridge before Synapse. Cancel the task to give up (SIGTERM does)."""
        if serve and self._runner is None:
            self._runner = web.AppRunner(self.web_app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.config.appservice.hostname, self.config.appservice.port)
            await site.start()
            server = getattr(site, "_server", None)
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1] if sockets else self.config.appservice.port
            log.info("appservice listening on %s:%s", self.config.appservice.hostname, self.port)
        await self._until_reachable(self._prepare_bot)
        if serve:
            await self._ping_homeserver()

    async def _until_reachable(self, step: Callable[[], Awaitable[None]]) -> None:
        delay = CONNECT_BACKOFF_START_S
        attempt = 0
        while True:
            attempt += 1
            try:
                async with asyncio.timeout(CONNECT_ATTEMPT_TIMEOUT_S):
                    await step()
                return
            except Exception as e:
                if not is_retriable(e):
                    raise
                log.warning("homeserver %s not reachable (attempt %d: %s); retrying in %.0fs",
                            self.config.homeserver.address, attempt, _describe(e), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, CONNECT_BACKOFF_MAX_S)

    async def _ping_homeserver(self) -> None:
        """Ask the homeserver to ping us (MSC2659). Besides proving the round trip, a successful ping makes
        Synapse deliver transactions it queued while the bridge was down at once instead of after its backoff."""
        try:
            async with asyncio.timeout(CONNECT_ATTEMPT_TIMEOUT_S):
                await self.az.bot_intent().appservice_ping(self.config.appservice.id)
            log.info("homeserver reached the appservice (ping ok)")
        except MatrixRequestError as e:
            log.warning("homeserver could not ping the appservice at %s: %s (check appservice.address and the "
                        "registration's url)", self.config.appservice.address, e)
        except Exception as e:
            if not is_retriable(e):
                raise
            log.warning("homeserver ping failed: %s", _describe(e))

    async def _prepare_bot(self) -> None:
        intent = self.az.bot_intent()
        await intent.ensure_registered()
        await intent.set_displayname(self.config.appservice.bot_displayname)

    async def stop(self) -> None:
        """Stop listening, cancel room workers, close the HTTP session and the DB. Idempotent."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.queues.close()
        await self.account_commands.stop()
        await self.portals.outbox.close(OUTBOX_GRACE_S)
        if not self._session.closed:
            await self._session.close()
        try:
            await self.db.stop()
        except RuntimeError:  # never started
            pass
