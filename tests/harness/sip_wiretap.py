"""Records everything a UserAgent sends and every name it looks up (for "nothing unsolicited" tests and the
fuzz bench): wraps the TransportLayer's UDP send, every stream connection's send, connects and resolve."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bridge.sip.transport import Address, StreamConnection
from bridge.sip.ua import UserAgent


class Wiretap:
    def __init__(self) -> None:
        self.sent: list[tuple[str, Address, bytes]] = []  # (transport, destination, data)
        self.resolved: list[str] = []
        self.connects: list[tuple[str, Address]] = []

    def destinations(self) -> Counter[str]:
        return Counter(addr[0] for _, addr, _ in self.sent)

    def first_lines(self) -> list[str]:
        return [data.split(b"\r\n", 1)[0].decode(errors="replace") for _, _, data in self.sent]


@contextmanager
def wiretap(ua: UserAgent) -> Iterator[Wiretap]:
    tap = Wiretap()
    layer = ua.transport
    orig_udp, orig_resolve, orig_connect = layer.send_udp, layer.resolve, layer._get_connection
    orig_stream_send = StreamConnection.send

    def send_udp(data: bytes, addr: Address) -> None:
        tap.sent.append(("udp", addr, data))
        orig_udp(data, addr)

    async def resolve(host: str) -> str:
        tap.resolved.append(host)
        return await orig_resolve(host)

    async def get_connection(transport: str, addr: Address) -> StreamConnection:
        tap.connects.append((transport, addr))
        return await orig_connect(transport, addr)

    def stream_send(self: StreamConnection, data: bytes) -> None:
        if self._layer is layer:
            tap.sent.append((self.transport_name, self.remote, data))
        orig_stream_send(self, data)

    patches: dict[str, Any] = {"send_udp": send_udp, "resolve": resolve, "_get_connection": get_connection}
    for name, fn in patches.items():
        setattr(layer, name, fn)
    StreamConnection.send = stream_send  # type: ignore[method-assign]
    try:
        yield tap
    finally:
        for name in patches:
            delattr(layer, name)
        StreamConnection.send = orig_stream_send  # type: ignore[method-assign]
