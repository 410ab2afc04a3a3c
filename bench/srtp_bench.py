"""Per-packet cost of SRTP on the SIP leg (pylibsrtp protect / unprotect of a 20 ms PCMU packet).

    python -m bench.srtp_bench
"""

from __future__ import annotations

import secrets
import time

from bridge.media.rtp_packet import build_rtp
from bridge.media.srtp_session import SrtpSession
from bridge.sip.sdp_crypto import SUITES

PACKETS = 50_000


def main() -> None:
    packets = [build_rtp(0, False, i & 0xFFFF, i * 160, 1, b"\x55" * 160) for i in range(PACKETS)]
    for suite, size in SUITES.items():
        a, b = secrets.token_bytes(size), secrets.token_bytes(size)
        tx, rx = SrtpSession(suite, a, b), SrtpSession(suite, b, a)
        start = time.perf_counter()
        sealed = [tx.protect(p) for p in packets]
        middle = time.perf_counter()
        opened = [rx.unprotect(s) for s in sealed]
        end = time.perf_counter()
        assert opened == packets
        print(f"{suite:24s} protect {(middle - start) / PACKETS * 1e6:5.2f} us/packet, "
              f"unprotect {(end - middle) / PACKETS * 1e6:5.2f} us/packet, +{len(sealed[0]) - len(packets[0])} bytes")


if __name__ == "__main__":
    main()
