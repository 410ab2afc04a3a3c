"""The few libopus calls the bridge needs, through ctypes (system library: Debian ``libopus0``).

Why not PyAV here: every PyAV audio *encoder* pushes its input through an ``AudioResampler``, i.e. an FFmpeg filter
graph, and each graph starts a thread pool of one thread per CPU core; FFmpeg's libopus decoder only outputs 48 kHz.
libopus itself encodes from and decodes to 8 kHz natively, on the calling thread: no resampling, no thread.
No maintained Python binding exists on PyPI (opuslib was last released in 2018), and five functions are all we use.
:data:`AVAILABLE` is False when the library is missing; the relay then falls back to PyAV.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

APPLICATION_VOIP = 2048
SET_BITRATE = 4002
MAX_PACKET = 1500
MAX_FRAME_MS = 120  # the longest Opus packet


def _load() -> Any:
    for name in (ctypes.util.find_library("opus"), "libopus.so.0"):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int32]
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_int,
                                    ctypes.c_int]
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        return lib
    return None


_lib = _load()
AVAILABLE = _lib is not None


class OpusError(Exception):
    pass


class Encoder:
    """Mono s16 PCM at ``rate`` (8000..48000) -> Opus packets."""

    def __init__(self, rate: int, bitrate: int = 32000) -> None:
        if _lib is None:
            raise OpusError("libopus not found")
        error = ctypes.c_int(0)
        self._state = _lib.opus_encoder_create(rate, 1, APPLICATION_VOIP, ctypes.byref(error))
        if error.value != 0 or not self._state:
            raise OpusError(f"opus_encoder_create failed ({error.value})")
        _lib.opus_encoder_ctl(ctypes.c_void_p(self._state), ctypes.c_int(SET_BITRATE), ctypes.c_int32(bitrate))
        self._out = ctypes.create_string_buffer(MAX_PACKET)

    def encode(self, pcm: bytes, samples: int) -> bytes:
        """``samples`` must be 2.5, 5, 10, 20, 40 or 60 ms worth."""
        n = _lib.opus_encode(self._state, pcm, samples, self._out, MAX_PACKET)
        if n < 0:
            raise OpusError(f"opus_encode failed ({n})")
        return self._out.raw[:n]

    def close(self) -> None:
        if self._state:
            _lib.opus_encoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()


class Decoder:
    """Opus packets -> mono s16 PCM at ``rate`` (libopus resamples internally)."""

    def __init__(self, rate: int) -> None:
        if _lib is None:
            raise OpusError("libopus not found")
        error = ctypes.c_int(0)
        self._state = _lib.opus_decoder_create(rate, 1, ctypes.byref(error))
        if error.value != 0 or not self._state:
            raise OpusError(f"opus_decoder_create failed ({error.value})")
        self._max = rate * MAX_FRAME_MS // 1000
        self._out = ctypes.create_string_buffer(2 * self._max)

    def decode(self, packet: bytes) -> bytes:
        n = _lib.opus_decode(self._state, packet, len(packet), self._out, self._max, 0)
        if n < 0:
            raise OpusError(f"opus_decode failed ({n})")
        return self._out.raw[: 2 * n]

    def close(self) -> None:
        if self._state:
            _lib.opus_decoder_destroy(self._state)
            self._state = None

    def __del__(self) -> None:
        self.close()
