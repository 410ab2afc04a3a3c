"""Per-packet fast path of the WebRTC leg (aiortc 1.16 / aioice 0.13 internals, guarded by :data:`FASTPATH_OK`).

aiortc moves every audio packet through an ``asyncio.Queue`` and three or four coroutines per direction, builds an
``RtpPacket`` object with header extensions stamped from a ``datetime``-based NTP clock, and decodes on one thread
per receiver. The bridge already holds encoded payloads (passthrough, or its own inline transcoding), so that
machinery was most of its per-call cost. Here, for one connection:

* **send** (:class:`DirectSender`): a payload goes out in aiortc's audio stream - its SSRC, the negotiated mid and
  abs-send-time header extensions - with our own sequence numbers, protected by the DTLS-SRTP session and written
  with one ``sendto`` on the nominated ICE pair. aiortc's sender task then never gets a frame (it waits on an empty
  track), but its RTCP sender reports stay right: the packet/octet counters and the NTP/RTP timestamp pair it
  reports are kept here. RFC 4733 events share the sequence space (:meth:`DirectSender.inject`).
* **receive** (:func:`install_receive`): the ICE socket's ``datagram_received`` is shadowed (instance attribute,
  never the class). An SRTP packet (not SRTCP) is unprotected there and handed to the RTP tap synchronously;
  STUN, DTLS and SRTCP take aiortc's usual path, and so does a packet the tap declines (in a task).
* aiortc's decoder thread for the receiver is stopped once started (:func:`stop_decoder_thread`): nothing reaches
  it any more, so a call holds no thread of its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aioice
import aiortc
import pylibsrtp
from aiortc.rtcdtlstransport import RTCDtlsTransport, State
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtcrtpsender import RTCRtpSender
from aiortc.rtp import HeaderExtensions, HeaderExtensionsMap

from . import fastrelay

RtpTap = Callable[[bytes], bool]

FASTPATH_OK = (
    aiortc.__version__.startswith("1.16.")
    and aioice.__version__.startswith("0.13.")
    and pylibsrtp.__version__.startswith("1.0.")
    and hasattr(aioice.ice.StunProtocol, "datagram_received")
    and hasattr(aioice.ice.Connection, "data_received")
    and callable(getattr(RTCRtpReceiver, "_RTCRtpReceiver__stop_decoder", None))
    and callable(getattr(RTCRtpSender, "_run_rtcp", None))  # replaced per instance by webrtc_rtcp
    and callable(getattr(RTCRtpReceiver, "_run_rtcp", None))
)

_HEADER = struct.Struct("!BBHII")
_NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01
_SEQ_MASK = 0xFFFF
_TS_MASK = 0xFFFFFFFF


class FastSrtp:
    """``Session.protect`` / ``unprotect`` of one pylibsrtp 1.0 session without its per-call ``ffi.new`` and checks
    (same C calls, same shared buffer; the length check that keeps a datagram inside the buffer stays)."""

    __slots__ = ("_buffer", "_cdata", "_len", "_max", "_protect", "_srtp", "_unprotect", "_unprotect_rtcp", "ctx",
                 "session")

    def __init__(self, session: Any) -> None:
        from pylibsrtp._binding import ffi, lib

        self.session = session
        self._srtp = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._max = len(session._cdata) - 16  # SRTP_MAX_TRAILER_LEN
        self._len = ffi.new("int *")
        self._protect = lib.srtp_protect
        self._unprotect = lib.srtp_unprotect
        self._unprotect_rtcp = lib.srtp_unprotect_rtcp
        self.ctx = int(ffi.cast("uintptr_t", self._srtp))  # the srtp_t for fastrelay's compiled twins

    def protect(self, data: bytes) -> bytes:
        return self._apply(self._protect, data, 0, "srtp_protect")

    def unprotect(self, data: bytes) -> bytes:
        return self._apply(self._unprotect, data, 16, "srtp_unprotect")  # fails: replay, authentication

    def unprotect_rtcp(self, data: bytes) -> bytes:
        return self._apply(self._unprotect_rtcp, data, 16, "srtp_unprotect_rtcp")

    def _apply(self, function: Any, data: bytes, room: int, name: str) -> bytes:
        """``function`` on ``data`` in the session's buffer; ``room``: bytes it may use beyond a protected packet's
        trailer (unprotecting only shrinks a packet)."""
        n = len(data)
        if n > self._max + room:
            raise ValueError("packet is too long")
        self._buffer[0:n] = data
        self._len[0] = n
        if function(self._srtp, self._cdata, self._len):
            raise pylibsrtp.Error(f"{name} failed")
        return bytes(self._buffer[0 : self._len[0]])


def fast_srtp(cache: list[Any], session: Any) -> FastSrtp | None:
    """The :class:`FastSrtp` of ``session`` (cached in ``cache[0]``; renewed when aiortc made a new session)."""
    if session is None:
        return None
    current: FastSrtp | None = cache[0]
    if current is None or current.session is not session:
        current = cache[0] = FastSrtp(session)
    return current


def ntp_now() -> int:
    """64-bit NTP time of now (what aiortc's ``clock.current_ntp_time`` gives, without the datetime objects)."""
    return int((time.time() + _NTP_EPOCH_OFFSET) * 4294967296.0)


class DirectSender:
    """Sends pre-encoded payloads on aiortc's outgoing audio stream of one connection, synchronously."""

    def __init__(
        self,
        sender: RTCRtpSender,
        *,
        track: Any,
        log: logging.Logger | logging.LoggerAdapter[Any],
    ) -> None:
        self.log = log
        self._sender = sender
        self._sender_any: Any = sender
        self._dtls: Any = sender.transport
        self._connection: Any = self._dtls.transport._connection
        self._track = track  # its ``paused``: the Matrix party holds (wants none of our audio)
        self._srtp: list[Any] = [None]
        self._pair: Any = None
        self._addr: tuple[str, int] = ("", 0)
        self._ssrc = sender._ssrc
        self._seq = random.getrandbits(15)  # lower half, like aiortc: no early wrap (breaks some SRTP stacks)
        self._ts_origin = random.getrandbits(32)
        self._ext: bytes | None = None  # header extension block (after the fixed header), once negotiated
        self._abs_offset = -1  # where the 3 abs-send-time bytes sit in that block
        self.last_seq: int | None = None
        self.last_timestamp: int | None = None
        self.last_ntp = 0  # NTP time of the last packet sent (with last_timestamp: the SR's clock pair)
        self.sent = 0
        self.octets = 0  # payload octets sent (RFC 3550 6.4.1 sender's octet count)
        self.dropped = 0
        fastrelay.bind(self, "send", "direct_send")  # its compiled twin, when built

    @property
    def ssrc(self) -> int:
        return self._ssrc

    # -- template ---------------------------------------------------------------------------------------------
    def _prepare(self) -> bool:
        """Header extension block as aiortc would write it (ids from the negotiation); False before send() ran."""
        sender = self._sender_any
        if not sender._RTCRtpSender__started:
            return False
        ext_map: HeaderExtensionsMap = self._dtls._rtp_header_extensions_map
        mid = sender._RTCRtpSender__mid
        first = HeaderExtensions(mid=mid, abs_send_time=0)
        second = HeaderExtensions(mid=mid, abs_send_time=0xABCDEF)
        profile, value = ext_map.set(first)
        _, value2 = ext_map.set(second)
        if not value:
            self._ext = b""
            return True
        self._ext = struct.pack("!HH", profile, len(value) >> 2) + value
        diff = [i for i, (a, b) in enumerate(zip(value, value2, strict=True)) if a != b]
        self._abs_offset = 4 + diff[0] if diff else -1
        if diff and (len(diff) > 3 or diff[-1] - diff[0] > 2):
            self._abs_offset = -1  # unexpected layout: leave the field at 0 rather than corrupt the block
        return True

    # -- sending ----------------------------------------------------------------------------------------------
    def send(self, payload_type: int, payload: bytes, timestamp: int, marker: bool = False) -> bool:
        """Send one payload; ``timestamp`` counts from the stream's start (the random origin is added here)."""
        ts = (self._ts_origin + timestamp) & _TS_MASK
        if self._send(payload_type, marker, ts, payload):
            self.last_timestamp = ts
            return True
        return False

    def inject(self, payload_type: int, marker: bool, timestamp: int, payload: bytes) -> bool:
        """An extra packet (RFC 4733 event) with an absolute ``timestamp``; False before the stream started."""
        if self.last_seq is None:
            return False
        return self._send(payload_type, marker, timestamp, payload)

    def _send(self, payload_type: int, marker: bool, ts: int, payload: bytes) -> bool:
        dtls = self._dtls
        if self._track.paused or dtls._state != State.CONNECTED or not self._sender._enabled:
            self.dropped += 1
            return False
        srtp = self._srtp[0]
        if srtp is None or srtp.session is not dtls._tx_srtp:
            srtp = fast_srtp(self._srtp, dtls._tx_srtp)
            if srtp is None:
                self.dropped += 1
                return False
        ext = self._ext
        if ext is None:
            if not self._prepare():
                self.dropped += 1
                return False
            ext = self._ext
            assert ext is not None
        pair = self._connection._nominated.get(1)
        if pair is not self._pair:
            if pair is None:
                self.dropped += 1
                return False
            self._pair, self._addr = pair, pair.remote_addr
        seq = self._seq
        ntp = ntp_now()
        if ext:
            offset = self._abs_offset
            if offset >= 0:
                abs_time = ((ntp >> 14) & 0xFFFFFF).to_bytes(3, "big")
                ext = ext[:offset] + abs_time + ext[offset + 3 :]
            header = _HEADER.pack(0x90, (0x80 if marker else 0) | payload_type, seq, ts, self._ssrc) + ext
        else:
            header = _HEADER.pack(0x80, (0x80 if marker else 0) | payload_type, seq, ts, self._ssrc)
        pair.protocol.transport.sendto(srtp.protect(header + payload), self._addr)
        self._seq = (seq + 1) & _SEQ_MASK
        self.last_seq = seq
        self.last_ntp = ntp
        self.sent += 1
        self.octets += len(payload)  # (the sender reports are webrtc_rtcp's, from these counters)
        return True

    async def close(self) -> None:
        """Nothing owned: here for the injector interface."""


class IceReceive:
    """What one ICE socket's ``datagram_received`` becomes: :meth:`slow` in Python, or its compiled twin
    (``_fastrelay.ice_receive``, which calls :meth:`slow` for anything but an SRTP packet it can take)."""

    def __init__(self, original: Callable[[bytes, Any], None], dtls: RTCDtlsTransport, owner: Any,
                 fallback: Callable[..., Awaitable[None]], srtp_cache: list[Any],
                 rtcp: Callable[[bytes], bool] | None, log: logging.Logger | logging.LoggerAdapter[Any]) -> None:
        self.original = original
        self.dtls: Any = dtls
        self.owner = owner  # its ``_tap`` is read per packet: the relay sets and clears it
        self.fallback = fallback
        self.srtp_cache = srtp_cache  # [FastSrtp | None], shared by a connection's sockets
        self.rtcp = rtcp
        self.log = log
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Future[None]] = set()

    def slow(self, data: bytes, addr: tuple[Any, ...]) -> None:
        # SRTP: first byte 128..191 (RFC 7983), second byte not an RTCP type 192..223 (RFC 5761)
        if len(data) > 12 and 127 < data[0] < 192:
            if 191 < data[1] < 224:
                if self.rtcp is not None and self.rtcp(data):
                    return
                self.original(data, addr)
                return
            srtp = self.srtp_cache[0]
            if srtp is None or srtp.session is not self.dtls._rx_srtp:
                srtp = fast_srtp(self.srtp_cache, self.dtls._rx_srtp)
            consumer = self.owner._tap
            if srtp is not None and consumer is not None:
                try:
                    plain = srtp.unprotect(data)
                except (pylibsrtp.Error, ValueError):  # replay, authentication, size: aiortc drops those too
                    return
                try:
                    if consumer(plain):
                        return
                except Exception as exc:
                    self.tap_failed(exc, plain)
                    return
                self.fallback_task(plain)
                return
        self.original(data, addr)

    def tap_failed(self, exc: BaseException, plain: bytes) -> None:
        self.log.error("RTP tap failed", exc_info=exc)
        self.fallback_task(plain)

    def fallback_task(self, plain: bytes) -> None:
        """A packet the tap declined: aiortc's own receive path, in a task."""
        task = asyncio.ensure_future(self.fallback(plain, int(time.time() * 1000)), loop=self._loop)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def install_receive(dtls: RTCDtlsTransport, owner: Any, fallback: Callable[..., Awaitable[None]],
                    *, log: logging.Logger | logging.LoggerAdapter[Any],
                    rtcp: Callable[[bytes], bool] | None = None) -> int:
    """Shadow ``datagram_received`` of this connection's ICE sockets (gathered already); returns how many.
    ``owner._tap`` is the RTP tap (read per packet: the relay sets and clears it); ``rtcp`` takes SRTCP packets
    (webrtc_rtcp.WebrtcRtcp.on_srtcp; False hands one to aiortc)."""
    connection: Any = dtls.transport._connection
    srtp_cache: list[Any] = [None]
    installed = 0
    for protocol in list(connection._protocols):
        if getattr(protocol, "_bridge_fastpath", False):
            continue
        receive = IceReceive(protocol.datagram_received, dtls, owner, fallback, srtp_cache, rtcp, log)
        protocol.datagram_received = fastrelay.twin(receive, "ice_receive") or receive.slow
        protocol._bridge_fastpath = True
        installed += 1
    return installed


def stop_decoder_thread(receiver: RTCRtpReceiver) -> None:
    """End aiortc's per-receiver decoder thread right after ``receive()`` started it (nothing is decoded there:
    the RTP tap consumes every audio packet). Its remote track then ends; nobody reads it."""
    original = receiver.receive

    async def receive(parameters: Any) -> None:
        await original(parameters)
        inner: Any = receiver
        inner._RTCRtpReceiver__stop_decoder()

    receiver.receive = receive  # type: ignore[method-assign]
