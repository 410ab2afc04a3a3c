"""Third-party lookups (appservice API ``/thirdparty/...``): what makes Element's dial pad work.

Element asks the homeserver for ``/thirdparty/protocols``; when ``m.protocol.pstn`` or ``im.vector.protocol.pstn``
is listed, it shows a dial pad and resolves a dialled number with ``/thirdparty/user/<protocol>?m.id.phone=...``,
then opens a DM with the returned user. The homeserver forwards both to us (the registration lists the protocols).

Permissions: the homeserver does not tell us which user is looking a number up (Synapse forwards only the fields),
so the user's own dial permissions cannot be applied here; any user of the homeserver can learn a number's ghost
ID (which is derivable from the username template anyway). What is applied: the dial plan with
bridge.dial_permissions, as far as they hold for everybody: a number no user of the bridge may dial gives [].
Dialling stays checked per user: the ghost declines an invite from a user whose dial permissions refuse the
number (portals.py), and their calls to it are refused.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from bridge.call.dial_permissions import dial_permissions_for
from bridge.call.dialplan import normalize_number
from bridge.config import PSTN_PROTOCOLS, Config
from bridge.matrix.ghosts import UNKNOWN_NUMBER, Ghosts

log = logging.getLogger(__name__)

PHONE_FIELD = "m.id.phone"
# v1 paths, and the unstable ones the spec lists as their legacy fallbacks.
PREFIXES = ("/_matrix/app/v1/thirdparty", "/_matrix/app/unstable/thirdparty")


def _not_found(message: str) -> web.Response:
    return web.json_response({"errcode": "M_NOT_FOUND", "error": message}, status=404)


class ThirdParty:
    def __init__(self, config: Config, ghosts: Ghosts) -> None:
        self.config = config
        self.ghosts = ghosts
        self.dial_rules = dial_permissions_for(config)

    def add_routes(self, app: web.Application) -> None:
        for prefix in PREFIXES:
            app.router.add_get(prefix + "/protocol/{protocol}", self._protocol)
            app.router.add_get(prefix + "/user/{protocol}", self._user)
            app.router.add_get(prefix + "/user", self._reverse_user)
            app.router.add_get(prefix + "/location/{protocol}", self._no_locations)
            app.router.add_get(prefix + "/location", self._no_locations)

    def protocol(self) -> dict[str, Any]:
        """Protocol metadata (appservice spec: Protocol); the same for both PSTN protocol names."""
        return {
            "user_fields": [PHONE_FIELD],
            "location_fields": [],
            "icon": "",
            "field_types": {
                PHONE_FIELD: {"regexp": r"^\+?[0-9 ()./-]{3,32}$", "placeholder": "+1 555 123 4567"},
            },
            "instances": [{
                "desc": self.config.appservice.bot_displayname,
                "fields": {},
                "network_id": self.config.appservice.id,
            }],
        }

    async def _protocol(self, request: web.Request) -> web.Response:
        if request.match_info["protocol"] not in PSTN_PROTOCOLS:
            return _not_found("Unknown protocol")
        return web.json_response(self.protocol())

    def lookup(self, protocol: str, raw: str) -> list[dict[str, Any]]:
        """The ghost for a dialled number, or [] when it is not a number or no user of the bridge may dial it."""
        number = normalize_number(raw, self.config.dialplan)
        if number is None:
            return []
        reason = self.dial_rules.check_anyone(number)
        if reason:
            log.info("thirdparty lookup of +%s: %s", number, reason)
            return []
        return [{"userid": self.ghosts.mxid_for(number), "protocol": protocol, "fields": {PHONE_FIELD: f"+{number}"}}]

    async def _user(self, request: web.Request) -> web.Response:
        protocol = request.match_info["protocol"]
        if protocol not in PSTN_PROTOCOLS:
            return _not_found("Unknown protocol")
        raw = request.query.get(PHONE_FIELD, "")
        if len(raw) > 64:
            return web.json_response([])
        return web.json_response(self.lookup(protocol, raw))

    async def _reverse_user(self, request: web.Request) -> web.Response:
        """``/thirdparty/user?userid=@sip_...``: the phone number behind a ghost."""
        number = self.ghosts.number_from_mxid(request.query.get("userid", ""))
        if number is None or number == UNKNOWN_NUMBER:
            return web.json_response([])
        return web.json_response([
            {"userid": self.ghosts.mxid_for(number), "protocol": protocol, "fields": {PHONE_FIELD: f"+{number}"}}
            for protocol in PSTN_PROTOCOLS
        ])

    async def _no_locations(self, request: web.Request) -> web.Response:
        return web.json_response([])
