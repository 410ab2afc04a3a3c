"""The bot's account commands: ``login`` (a conversation in steps), ``logout``, ``whoami``/``status``,
``register``, ``unregister``, ``cancel``; and which line a ``dial`` will use.

Everything that waits on SIP (a login waits for the first REGISTER outcome, up to about 35 s) runs in a task
owned here, not in the event handler: the appservice acknowledges a transaction only once its events are
handled, and a slow handler would hold up every other room's events (calls included).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from mautrix.errors import MatrixRequestError
from mautrix.types import EventID, RoomID

from bridge.calls.account_api import AccountService, AccountStatus, LoginError, LoginRequest
from bridge.matrix import login_steps
from bridge.matrix.management_rooms import ManagementRooms
from bridge.matrix.permissions import Permissions
from bridge.matrix.portals import NOT_ALLOWED, Portals

log = logging.getLogger(__name__)

COMMANDS = frozenset({"login", "logout", "whoami", "status", "register", "unregister", "cancel"})
HELP = (
    "• login: log in to your own SIP account (asked in steps; your password message is deleted)\n"
    "• logout: unregister and forget your SIP account\n"
    "• whoami / status: your SIP account, its registration state and expiry, the last error\n"
    "• register / unregister: turn the registration of your account on or off (the account is kept)\n"
    "• cancel: abort a login in progress"
)
DISABLED = "Personal SIP accounts are not enabled on this bridge."
NO_ACCOUNT = "You have no SIP account on the bridge. Send `login` to add one."


def describe(status: AccountStatus, now: float) -> str:
    """The ``whoami`` reply: account, route, registration state and expiry, last error."""
    via = f" via {status.outbound_proxy}" if status.outbound_proxy else ""
    lines = [f"SIP account: {status.aor} (registrar {status.registrar}{via}, {status.transport})"]
    if not status.registration_enabled:
        lines.append("Registration: off (send `register` to turn it on); your calls still use this account")
    else:
        state = f"Registration: {status.state}"
        if status.state == "registered" and status.expires_at is not None:
            left = max(0, int(status.expires_at - now))
            at = datetime.fromtimestamp(status.expires_at, UTC).strftime("%H:%M:%S UTC")
            state += f", expires in {left // 60} min {left % 60} s ({at}); renewed automatically"
        lines.append(state)
    if status.last_error:
        lines.append(f"Last error: {status.last_error}")
    if status.number:
        lines.append(f"Caller ID: +{status.number}")
    return "\n".join(lines)


class AccountCommands:
    """``accounts`` is the account service (None: per-user accounts are off, and the commands say so)."""

    def __init__(self, permissions: Permissions, portals: Portals, rooms: ManagementRooms,
                 accounts: AccountService | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.permissions = permissions
        self.portals = portals
        self.rooms = rooms
        self.accounts = accounts
        self.clock = clock
        self.conversations = login_steps.Conversations()
        self.refusal: Callable[[str], str | None] = lambda mxid: None
        """Why a call of the user would be refused before dialling (no account and the shared line closed to
        them), None if it would go out; app.py sets it from the account service's routing."""
        self._busy: set[str] = set()  # users with a login/logout/register running
        self._tasks: set[asyncio.Task[None]] = set()

    def reply(self, room_id: str, text: str) -> None:
        self.portals.send_bot_notice(room_id, text)

    def in_conversation(self, room_id: str, mxid: str) -> bool:
        return self.conversations.get(room_id, mxid, self.clock()) is not None

    async def handle(self, room_id: str, sender: str, event_id: str, text: str) -> bool:
        """One message to the bot; False if it is neither part of a login conversation nor an account command."""
        now = self.clock()
        conv = self.conversations.get(room_id, sender, now)
        if conv is not None:
            await self._advance(room_id, sender, event_id, conv, text, now)
            return True
        words = text.strip().split(None, 1)
        command = words[0].lower().lstrip("!") if words else ""
        if command not in COMMANDS:
            return False
        arg = words[1].strip() if len(words) > 1 else ""
        if command == "cancel":
            self.reply(room_id, "Nothing to cancel.")
        elif not self.permissions.can_login(sender):
            self.reply(room_id, NOT_ALLOWED + ".")
        elif self.accounts is None:
            self.reply(room_id, DISABLED)
        elif command == "login":
            await self._start_login(room_id, sender, arg, now)
        elif command in ("whoami", "status"):
            status = self.accounts.status(sender)
            self.reply(room_id, describe(status, time.time()) if status else NO_ACCOUNT)
        else:
            self._run(room_id, sender, command)
        return True

    # ------------------------------------------------------------------ login conversation

    async def _start_login(self, room_id: str, sender: str, arg: str, now: float) -> None:
        if sender in self._busy:
            self.reply(room_id, "Your previous request is still running; wait for its answer.")
            return
        if await self.rooms.can_redact(sender, room_id):
            await self.rooms.remember(sender, room_id)
            self._open(room_id, sender, login_steps.start(sender, now, arg))
            return
        # The bot cannot delete the password message here: continue in a room the bot owns.
        try:
            private, _ = await self.rooms.private_room(sender)
        except MatrixRequestError as e:
            log.warning("could not open a management room for %s: %s", sender, e)
            self.reply(room_id, "I cannot delete messages in this room, and could not open a private room for "
                                "your login (homeserver error). Try again later.")
            return
        self._open(private, sender, login_steps.start(sender, now, arg))
        self.reply(room_id, "I cannot delete your password message in this room, so the login continues in a "
                            f"private room I opened with you: https://matrix.to/#/{private} (accept the invite).")

    def _open(self, room_id: str, sender: str, outcome: login_steps.Outcome) -> None:
        self.conversations.put(room_id, sender, outcome.conversation)
        self.reply(room_id, outcome.reply)

    async def _advance(self, room_id: str, sender: str, event_id: str, conv: login_steps.Conversation,
                       text: str, now: float) -> None:
        outcome = login_steps.advance(conv, text, now)
        self.conversations.put(room_id, sender, outcome.conversation)
        if outcome.secret:
            await self._redact(room_id, event_id)
        self.reply(room_id, outcome.reply)
        if outcome.request is not None:
            self._spawn(room_id, sender, self._login(room_id, outcome.request))

    async def _redact(self, room_id: str, event_id: str) -> None:
        try:
            await self.portals.az.bot_intent().redact(RoomID(room_id), EventID(event_id), reason="SIP password")
            log.info("redacted the password message %s in %s", event_id, room_id)
        except MatrixRequestError as e:
            log.warning("could not redact the password message %s in %s: %s", event_id, room_id, e)
            self.reply(room_id, "I could not delete your password message: please delete it yourself.")

    async def _login(self, room_id: str, request: LoginRequest) -> None:
        assert self.accounts is not None
        try:
            status = await self.accounts.login(request)
        except LoginError as e:
            self.reply(room_id, f"Login failed: {e} Nothing was stored; send `login` to try again.")
            return
        await self.rooms.remember(request.mxid, room_id)
        self.reply(room_id, f"Logged in as {status.aor}.\n" + describe(status, time.time()))

    # ------------------------------------------------------------------ logout / register / unregister

    def _run(self, room_id: str, sender: str, command: str) -> None:
        if sender in self._busy:
            self.reply(room_id, "Your previous request is still running; wait for its answer.")
            return
        self._spawn(room_id, sender, self._account_call(room_id, sender, command))

    async def _account_call(self, room_id: str, sender: str, command: str) -> None:
        assert self.accounts is not None
        if command == "logout":
            status = self.accounts.status(sender)
            if await self.accounts.logout(sender):
                aor = status.aor if status else "your account"
                self.reply(room_id, f"Logged out: {aor} is unregistered and forgotten.")
            else:
                self.reply(room_id, NO_ACCOUNT)
            return
        call = self.accounts.register if command == "register" else self.accounts.unregister
        try:
            status = await call(sender)
        except KeyError:
            self.reply(room_id, NO_ACCOUNT)
            return
        done = "Registration is on." if command == "register" else \
            "Registration is off; your account is kept and your calls still use it."
        self.reply(room_id, done + "\n" + describe(status, time.time()))

    def _spawn(self, room_id: str, sender: str, coro: Awaitable[None]) -> None:
        self._busy.add(sender)

        async def runner() -> None:
            try:
                await coro
            except Exception:
                # never the request itself: it holds the password
                log.exception("account request of %s failed", sender)
                self.reply(room_id, "Sorry, that failed (internal error); try again later.")
            finally:
                self._busy.discard(sender)

        task = asyncio.create_task(runner(), name=f"account-{sender}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def idle(self) -> None:
        """Wait for the running account requests (tests)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.conversations.open.clear()  # drop any password held mid-conversation

    # ------------------------------------------------------------------ dial

    def line_for(self, mxid: str) -> str:
        """Which line a call of ``mxid`` goes out on (told with ``dial``)."""
        status = self.accounts.status(mxid) if self.accounts is not None else None
        if status is None:
            return "Your calls go out on the bridge's shared line."
        return f"Your calls go out on your SIP account {status.aor}."
