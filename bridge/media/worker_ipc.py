"""Framing between the bridge and its media worker processes: 4-byte big-endian length + pickle.

Both ends are this program (the worker is a child the bridge spawned over a private ``socketpair``), so
pickle is safe here and carries what JSON cannot without glue: bytes SDP, ``MediaStats``, the early-audio
recorder and the exceptions an awaited media call raises (``MediaError``, ``SdpError``). Nothing that comes
from the network is unpickled: SDP and candidates travel as str / bytes / dicts inside the frame.

Messages are tuples whose first item names them:
  bridge -> worker  ("init", WorkerInit) once, then ("cmd", call, req, method, args) where ``req`` is 0 for a
                    command nobody waits for (the sync facade methods) and a request id otherwise.
  worker -> bridge  ("ready", pid), ("reply", req, ok, value[, call, MediaView]),
                    ("failure", call, reason, stats), ("log", LogRecord fields),
                    ("dtmf", call, digit, direction), ("stats", {call: MediaView}).
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any

from .call_media import MediaStats
from .settings import MediaSettings

_HEADER = struct.Struct(">I")
MAX_FRAME = 16 * 1024 * 1024  # an early-media recording is the largest thing sent (30 s of G.711: 240 kB)


@dataclass
class WorkerInit:
    index: int
    settings: MediaSettings
    ice_host_addresses: list[str] = field(default_factory=list)
    log_level: str = "INFO"
    log_format: str = "text"
    log_loggers: dict[str, str] = field(default_factory=dict)
    stats_interval_s: float = 1.0


@dataclass
class MediaView:
    """A call's media as last reported by its worker: counters, WebRTC state, the RTP leg's source lock."""

    stats: MediaStats
    webrtc_state: str
    latched: bool
    remote: tuple[str, int] | None


def frame(message: tuple[Any, ...]) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


async def read_message(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None at end of stream (the other process is gone)."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ValueError(f"media worker frame of {size} bytes")
        body = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    message = pickle.loads(body)
    if not isinstance(message, tuple) or not message:
        raise ValueError("malformed media worker message")
    return message
