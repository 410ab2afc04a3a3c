"""rtpengine's ng control protocol: ``<cookie> <bencoded dict>`` datagrams over UDP, the reply echoing the cookie.

Bencoding comes from the maintained ``bencode.py`` package (PyPI, import name ``bencodepy``); this module only
fixes the conventions (text keys and values are UTF-8 strings) and adds the transport: one UDP socket for
every node, requests matched to replies by cookie, retransmitted with the same cookie (rtpengine caches the
reply per cookie, so a retransmitted offer is not applied twice) until a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from typing import Any

import bencodepy  # bencode.py on PyPI (untyped)

log = logging.getLogger(__name__)

_CODEC = bencodepy.Bencode(encoding="utf-8", encoding_fallback="value")


class NgError(Exception):
    """rtpengine answered ``result: error`` (the reason is in the message)."""


class NgTimeout(NgError):
    """No reply from the node within the deadline: the node counts as failed."""


def encode(message: dict[str, Any]) -> bytes:
    return bytes(_CODEC.encode(message))


def decode(data: bytes) -> dict[str, Any]:
    try:
        value = _CODEC.decode(data)
    except Exception as exc:  # bencodepy raises its own and builtin errors for malformed input
        raise NgError(f"malformed ng reply: {exc}") from exc
    if not isinstance(value, dict):
        raise NgError("ng reply is not a dictionary")
    return dict(value)


class NgClient(asyncio.DatagramProtocol):
    """Client side of the ng protocol. ``await open()`` once, then ``request()`` from any task."""

    def __init__(self, *, timeout_s: float = 1.0, retransmits: int = 2) -> None:
        self.timeout_s = timeout_s
        self.retransmits = retransmits
        self._transport: asyncio.DatagramTransport | None = None
        self._waiting: dict[str, asyncio.Future[bytes]] = {}
        self._prefix = secrets.token_hex(4)
        self._seq = itertools.count(1)

    async def open(self, local_host: str = "0.0.0.0") -> None:
        if self._transport is None:
            loop = asyncio.get_running_loop()
            await loop.create_datagram_endpoint(lambda: self, local_addr=(local_host, 0))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        cookie, sep, body = data.partition(b" ")
        if not sep:
            return
        waiter = self._waiting.get(cookie.decode("ascii", "replace"))
        if waiter is not None and not waiter.done():
            waiter.set_result(body)  # unknown cookies (late replies to retransmits) are dropped

    async def request(self, addr: tuple[str, int], message: dict[str, Any], timeout_s: float | None = None
                      ) -> dict[str, Any]:
        """Send one command; the reply dict (``result`` ok/pong). Raises NgTimeout, or NgError on an error reply."""
        if self._transport is None:
            raise NgError("ng client not open")
        cookie = f"{self._prefix}_{next(self._seq)}"
        payload = cookie.encode() + b" " + encode(message)
        total = self.timeout_s if timeout_s is None else timeout_s
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._waiting[cookie] = waiter
        try:
            for _attempt in range(self.retransmits + 1):
                self._transport.sendto(payload, addr)
                try:
                    body = await asyncio.wait_for(asyncio.shield(waiter), total / (self.retransmits + 1))
                    break
                except TimeoutError:
                    continue
            else:
                raise NgTimeout(f"no ng reply from {addr[0]}:{addr[1]} to {message.get('command')} "
                                f"within {total:g}s")
        finally:
            self._waiting.pop(cookie, None)
            if not waiter.done():
                waiter.cancel()
        reply = decode(body)
        result = reply.get("result")
        if result == "error":
            raise NgError(f"rtpengine refused {message.get('command')}: {reply.get('error-reason')}")
        if result == "load limit":
            raise NgError(f"rtpengine refused {message.get('command')}: load limit")
        if result == "warning":
            log.warning("rtpengine warning on %s: %s", message.get("command"), reply.get("warning"))
        return reply

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.cancel()
        self._waiting.clear()
