"""tcpdump on the loopback interface for UDP ports, read back as (source port, destination port, payload).

Used to prove what really crosses the wire (e.g. that SIP-side RTP is SRTP, never plaintext). Needs tcpdump
and the right to capture (root or CAP_NET_RAW), as in CI; `available()` says whether capturing works here.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
from pathlib import Path

TCPDUMP = shutil.which("tcpdump") or "/usr/bin/tcpdump"


class LoopbackCapture:
    def __init__(self, path: Path, ports: list[int]) -> None:
        self.path = path
        self.filter = "udp and (" + " or ".join(f"port {p}" for p in ports) + ")"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            TCPDUMP, "-i", "lo", "-n", "-U", "-s", "0", "-w", str(self.path), self.filter,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        assert self.proc.stderr is not None
        line = await asyncio.wait_for(self.proc.stderr.readline(), 10)  # "listening on lo, ..."
        if b"listening" not in line:
            raise RuntimeError(f"tcpdump did not start: {line!r}")

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await asyncio.sleep(0.2)  # let the last packets reach the file
            self.proc.terminate()
            await self.proc.wait()
        self.proc = None

    def packets(self) -> list[tuple[int, int, bytes]]:
        data = self.path.read_bytes()
        magic, = struct.unpack_from("<I", data)
        endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
        linktype, = struct.unpack_from(endian + "I", data, 20)
        link_header = {1: 14, 113: 16, 0: 4}.get(linktype, 14)  # Ethernet (lo), Linux cooked, BSD loopback
        out = []
        offset = 24
        while offset + 16 <= len(data):
            _, _, caplen, _ = struct.unpack_from(endian + "IIII", data, offset)
            frame = data[offset + 16: offset + 16 + caplen]
            offset += 16 + caplen
            ip = frame[link_header:]
            if not ip or ip[0] >> 4 != 4:
                continue
            ihl = (ip[0] & 0x0F) * 4
            if ip[9] != 17:
                continue
            sport, dport = struct.unpack_from("!HH", ip, ihl)
            out.append((sport, dport, ip[ihl + 8:]))
        return out
