"""Ghost (puppet) users: one Matrix user per phone number, e.g. ``@sip_15551234567:example.org``."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict

from mautrix.appservice import AppServiceAPI, IntentAPI
from mautrix.types import UserID

from bridge.call.dialplan import format_number
from bridge.config import Config
from bridge.db.ghost import Ghost, GhostTable

log = logging.getLogger(__name__)

UNKNOWN_NUMBER = "unknown"  # the "number" of the single ghost used for withheld caller IDs
_NUMBER_RE = re.compile(r"^[1-9][0-9]{2,14}$")  # E.164 digits, no leading zero


INTENT_CACHE_SIZE = 1024  # ghosts whose IntentAPI is kept (least recently used dropped)


class Ghosts:
    def __init__(self, az: AppServiceAPI, config: Config, table: GhostTable) -> None:
        self.az = az
        self.table = table
        self._template = config.bridge.username_template
        self._displayname_template = config.bridge.displayname_template
        self._unknown_name = config.bridge.unknown_caller_name
        self._domain = config.homeserver.domain
        before, _, after = self._template.partition("{number}")
        self._mxid_re = re.compile(f"^@{re.escape(before)}(.+){re.escape(after)}:{re.escape(self._domain)}$")
        self._locks: dict[str, asyncio.Lock] = {}
        # One IntentAPI per ghost, reused: mautrix builds a new one (with reference cycles only the cyclic GC
        # frees) on every az.intent() call, which showed as memory churn per call in bench/soak_bench.py.
        self._intents: OrderedDict[str, IntentAPI] = OrderedDict()

    def mxid_for(self, number: str | None) -> str:
        """The ghost's user ID for E.164 digits, or the unknown-caller ghost for None / "unknown"."""
        return f"@{self._template.format(number=number or UNKNOWN_NUMBER)}:{self._domain}"

    def number_from_mxid(self, mxid: str) -> str | None:
        """E.164 digits for a ghost ID, ``UNKNOWN_NUMBER`` for the unknown-caller ghost, None otherwise."""
        m = self._mxid_re.match(mxid)
        if not m:
            return None
        number = m.group(1)
        return number if number == UNKNOWN_NUMBER or _NUMBER_RE.match(number) else None

    def is_ghost(self, mxid: str) -> bool:
        return self.number_from_mxid(mxid) is not None

    def displayname_for(self, number: str | None, name: str | None = None) -> str:
        if not number or number == UNKNOWN_NUMBER:
            return self._unknown_name
        formatted = format_number(number)
        rendered = self._displayname_template.format(formatted=formatted, number=number, name=name or "").strip()
        return rendered or formatted  # e.g. template "{name}" without a SIP display name

    def intent(self, mxid: str) -> IntentAPI:
        """The cached IntentAPI of a ghost (not registered or named here: see intent_for)."""
        intent = self._intents.get(mxid)
        if intent is None:
            intent = self.az.intent(UserID(mxid))
            self._intents[mxid] = intent
            if len(self._intents) > INTENT_CACHE_SIZE:
                self._intents.popitem(last=False)
        else:
            self._intents.move_to_end(mxid)
        return intent

    async def intent_for(self, number: str | None, name: str | None = None) -> IntentAPI:
        """The ghost's IntentAPI, registered and with its display name set. ``name`` (the SIP display name)
        renames the ghost when the template uses {name}; without it an earlier name is kept."""
        number = number or UNKNOWN_NUMBER
        mxid = self.mxid_for(number)
        intent = self.intent(mxid)
        lock = self._locks.setdefault(mxid, asyncio.Lock())
        async with lock:
            stored = await self.table.get(mxid)
            if stored and stored.displayname and name is None and "{name}" in self._displayname_template:
                wanted = stored.displayname  # keep the caller's name from an earlier call
            else:
                wanted = self.displayname_for(number, name)
            if stored is None or stored.displayname != wanted:
                await intent.ensure_registered()
                await intent.set_displayname(wanted, check_current=False)
                await self.table.put(Ghost(mxid=mxid, number=number, displayname=wanted))
                log.info("ghost %s ready as %r", mxid, wanted)
        return intent

    async def handle_user_query(self, mxid: str) -> bool:
        """The homeserver asks whether ``mxid`` exists: create the ghost if the ID names a valid number."""
        number = self.number_from_mxid(mxid)
        if number is None:
            return False
        await self.intent_for(number)
        return True
