"""The bridge bot: answers commands (``help``, ``dial <number>``, and the account commands of
matrix/account_commands.py) in rooms it was invited to by permitted users."""

from __future__ import annotations

import logging
from typing import Any

from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixRequestError
from mautrix.types import RoomID

from bridge.call.dial_permissions import dial_permissions_for
from bridge.call.dialplan import format_number, normalize_number
from bridge.config import Config
from bridge.matrix.account_commands import HELP as ACCOUNT_HELP
from bridge.matrix.account_commands import AccountCommands
from bridge.matrix.permissions import Permissions
from bridge.matrix.portals import NOT_ALLOWED, Portals

log = logging.getLogger(__name__)

HELP = (
    "Commands:\n"
    "• help: show this message\n"
    "• dial <number>: open a direct chat with a phone number (e.g. dial +1 555 123 4567); "
    "start a voice call there to ring the phone\n" + ACCOUNT_HELP
)
HINT = "Unknown command. Send `help` for the list of commands."


class Bot:
    def __init__(self, az: AppServiceAPI, config: Config, permissions: Permissions, portals: Portals,
                 accounts: AccountCommands) -> None:
        self.az = az
        self.accounts = accounts
        self.config = config
        self.permissions = permissions
        self.portals = portals
        self.mxid = config.bot_mxid
        self._joined: set[str] = set()  # rooms we know we are in (a cache; the server is the truth)

    @property
    def intent(self) -> Any:
        return self.az.bot_intent()

    async def handle_invite(self, room_id: str, inviter: str) -> None:
        if not self.permissions.can_use(inviter):
            log.info("bot declines invite to %s from %s: not permitted", room_id, inviter)
            try:
                await self.intent.leave_room(RoomID(room_id), reason=NOT_ALLOWED)
            except MatrixRequestError as e:
                log.warning("bot could not decline invite to %s: %s", room_id, e)
            return
        await self.intent.join_room(RoomID(room_id))
        self._joined.add(room_id)
        log.info("bot joined %s (invited by %s)", room_id, inviter)
        await self.reply(room_id, "Hi! I connect Matrix calls to phone numbers.\n" + HELP)

    def on_own_membership(self, room_id: str, membership: str) -> None:
        if membership == "join":
            self._joined.add(room_id)
        else:
            self._joined.discard(room_id)

    async def in_room(self, room_id: str) -> bool:
        if room_id in self._joined:
            return True
        membership = await self.portals.membership(room_id, self.mxid)
        if membership == "join":
            self._joined.add(room_id)
            return True
        return False

    async def handle_message(self, room_id: str, sender: str, content: dict[str, Any], event_id: str = "") -> None:
        """A message in a non-portal room: answer it if the bot is in that room."""
        if content.get("msgtype") != "m.text" or not isinstance(content.get("body"), str):
            return
        if not await self.in_room(room_id):
            return
        if await self.accounts.handle(room_id, sender, event_id, content["body"]):
            return
        words = content["body"].strip().split(None, 1)
        if not words:
            return
        command, arg = words[0].lower().lstrip("!"), (words[1] if len(words) > 1 else "")
        if command == "help":
            await self.reply(room_id, HELP)
        elif command == "dial":
            await self.reply(room_id, await self._dial(sender, arg.strip()))
        else:
            await self.reply(room_id, HINT)

    async def _dial(self, sender: str, raw: str) -> str:
        if not self.permissions.can_use(sender):
            return NOT_ALLOWED + "."
        if not raw:
            return "Usage: dial <number>, e.g. dial +1 555 123 4567"
        number = normalize_number(raw, self.config.dialplan)
        if number is None:
            return f"{raw!r} is not a phone number I understand. Example: dial +1 555 123 4567"
        # bridge.dial_permissions (most specific entry for the user), else the dial plan
        reason = dial_permissions_for(self.config).check(sender, self.permissions.level(sender), number)
        if reason:
            return f"Cannot dial: {reason}."
        if refusal := self.accounts.refusal(sender):
            return f"Cannot dial: {refusal}"
        pretty = format_number(number)
        try:
            portal, created = await self.portals.ensure_portal(sender, number)
        except MatrixRequestError as e:
            log.warning("dial %s for %s failed: %s", number, sender, e)
            return f"Sorry, I could not open a chat with {pretty} (homeserver error)."
        link = f"https://matrix.to/#/{portal.room_id}"
        line = self.accounts.line_for(sender)
        if created:
            return f"Opened a direct chat with {pretty} and invited you: {link} (start a voice call there). {line}"
        return f"You already have a direct chat with {pretty}: {link} {line}"

    async def reply(self, room_id: str, text: str) -> None:
        self.portals.send_bot_notice(room_id, text)  # the outbox delivers it, retrying while the homeserver is down
