"""The compiled twins of the relay's per-packet steady state (``_fastrelay.c``), when they are built.

A py-spy profile of a media worker relaying passthrough calls showed the Python bytecode of five small functions
(RtpLeg.datagram_received's fast path, Relay._from_sip_fast, DirectSender.send, the ICE socket's receive hook and
Relay._from_webrtc_rtp with RtpLeg.send_audio and the receiver-report feed) as the largest share of the worker's
CPU after the kernel's. Each has a twin in C that does the same work on the same objects: their attributes stay
the only state, so every other piece of Python (hold, DTMF, stats, RTCP, tests) reads and writes them as before.
A twin takes only the steady state (in-order audio, a plain RTP header, the same SRTP session, the same ICE pair);
for anything else it calls the Python method before it has changed anything.

The module is optional (setup.py builds it when a C compiler is there); without it, or with
``BRIDGE_FASTRELAY=0`` in the environment, the Python methods run. tests/media/test_fastrelay.py plays the same
packets through both and compares what comes out.
"""

from __future__ import annotations

import os
from types import MethodType, ModuleType
from typing import Any


def _load() -> ModuleType | None:
    if os.environ.get("BRIDGE_FASTRELAY", "1").lower() in ("0", "off", "false", "no"):
        return None
    try:
        from . import _fastrelay  # type: ignore[attr-defined]
    except ImportError:
        return None
    from aiortc.rtcdtlstransport import State
    from pylibsrtp._binding import ffi, lib

    def address(name: str) -> int:
        return int(ffi.cast("uintptr_t", ffi.addressof(lib, name)))

    # the same libsrtp (pylibsrtp's, statically linked in its cffi module) and so the same session contexts
    _fastrelay.setup(address("srtp_protect"), address("srtp_unprotect"), State.CONNECTED)
    return _fastrelay


native: Any = _load()
"""The compiled module, or None."""


def describe() -> str:
    """For the start-up log line."""
    return "compiled relay" if native is not None else "Python relay (bridge/media/_fastrelay.c not built or off)"


def twin(obj: Any, name: str) -> Any:
    """The compiled function ``name`` bound to ``obj`` (called with ``obj`` first), or None without the module."""
    return MethodType(getattr(native, name), obj) if native is not None else None


def bind(obj: Any, name: str, twin_name: str) -> None:
    """Shadow ``obj.<name>`` (an instance attribute, never the class) with the compiled twin, when there is one.
    The twin calls ``type(obj).<name>`` itself when a packet is not its steady state."""
    bound = twin(obj, twin_name)
    if bound is not None:
        setattr(obj, name, bound)
