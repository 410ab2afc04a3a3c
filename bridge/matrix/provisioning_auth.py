"""Who a provisioning API request acts for: the shared secret plus ``?user_id=``, or the user's own Matrix access
token, checked with the homeserver's ``/_matrix/client/v3/account/whoami`` and cached briefly (as mautrix-go's
bridgev2 provisioning does). Tokens and the secret are never logged; the cache is keyed by a token's SHA-256."""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import aiohttp

log = logging.getLogger(__name__)

CACHE_TTL_S = 300.0
CACHE_MAX = 1024
WHOAMI_TIMEOUT_S = 10.0
_USER_ID_RE = re.compile(r"^@[^:\s]+:\S+$")

TokenCheck = Callable[[str], Awaitable[str | None]]
"""Token -> the user ID it belongs to, None if the homeserver does not know it; raises on other failures."""


class AuthFailed(Exception):
    def __init__(self, status: int, errcode: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode


def homeserver_whoami(session: aiohttp.ClientSession, homeserver: str) -> TokenCheck:
    """A TokenCheck asking the homeserver."""

    async def check(token: str) -> str | None:
        url = f"{homeserver}/_matrix/client/v3/account/whoami"
        timeout = aiohttp.ClientTimeout(total=WHOAMI_TIMEOUT_S)
        async with session.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout) as resp:
            if resp.status in (401, 403):
                return None
            if resp.status != 200:
                raise RuntimeError(f"homeserver answered whoami with HTTP {resp.status}")
            body = await resp.json(content_type=None)
        user_id = body.get("user_id") if isinstance(body, dict) else None
        if not isinstance(user_id, str):
            raise RuntimeError("homeserver's whoami answer has no user_id")
        return user_id

    return check


class ProvisioningAuth:
    def __init__(self, shared_secret: str | None, check_token: TokenCheck, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self._secret = shared_secret.encode() if shared_secret else None
        self._check_token = check_token
        self._clock = clock
        self._cache: OrderedDict[str, tuple[str, float]] = OrderedDict()

    async def user_for(self, authorization: str | None, user_id: str | None) -> str:
        """The Matrix user the request acts for. Raises AuthFailed (status, errcode, message)."""
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if not authorization:
            raise AuthFailed(401, "M_MISSING_TOKEN", "Missing Authorization: Bearer <token>")
        if scheme.lower() != "bearer" or not token:
            raise AuthFailed(401, "M_MISSING_TOKEN", "The Authorization header must be Bearer <token>")
        if user_id is not None and not _USER_ID_RE.match(user_id):
            raise AuthFailed(400, "M_INVALID_PARAM", "user_id is not a Matrix user ID (@user:server)")
        if self._secret is not None and hmac.compare_digest(token.encode(), self._secret):
            if user_id is None:
                raise AuthFailed(400, "M_MISSING_PARAM", "With the shared secret, give ?user_id=@user:server")
            return user_id
        owner = await self._token_owner(token)
        if user_id is not None and user_id != owner:
            raise AuthFailed(403, "M_FORBIDDEN", "The access token does not belong to user_id")
        return owner

    async def _token_owner(self, token: str) -> str:
        key = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            owner = await self._check_token(token)
        except Exception as e:
            log.warning("provisioning: could not check an access token with the homeserver: %s", e)
            raise AuthFailed(502, "M_UNKNOWN", "Could not check the access token with the homeserver") from None
        if owner is None:
            log.info("provisioning: refused a request with an unknown token (neither the shared secret nor a "
                     "homeserver access token)")
            raise AuthFailed(401, "M_UNKNOWN_TOKEN", "Unknown token: neither the shared secret nor an access token")
        self._cache[key] = (owner, now + CACHE_TTL_S)
        self._cache.move_to_end(key)
        while len(self._cache) > CACHE_MAX:
            self._cache.popitem(last=False)
        return owner
