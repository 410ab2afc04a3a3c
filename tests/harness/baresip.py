"""baresip (Debian baresip-core) as a real SIP + SDES-SRTP peer in tests, in its own tmp config dir.

    peer = Baresip(tmp, sip_port=..., mediaenc="srtp-mand", tls=leaf)   # leaf: tests/harness/tls_certs.Leaf
    await peer.start()        # auto-answers every call; plays a 1 kHz sine (ausine), records what it hears
    ... call it at peer.uri ...
    peer.tone_ratio(440.0)    # how much of the decoded audio it received (sndfile dump) is the Matrix tone
    await peer.stop()

`mediaenc`: "srtp-mand" (RTP/SAVP, SRTP only), "srtp" (best effort: RTP/AVP with a=crypto) or None (plain).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import shutil
import wave
from pathlib import Path

from tests.harness.tls_certs import Leaf
from tests.harness.tone import tone_ratio

BARESIP = shutil.which("baresip") or "/usr/bin/baresip"
MODULES = "/usr/lib/baresip/modules"


class Baresip:
    def __init__(self, workdir: Path, *, sip_port: int, rtp_port: int, mediaenc: str | None = "srtp-mand",
                 tls: Leaf | None = None, cafile: str | None = None, tone_hz: int = 1000,
                 user: str = "15551234567") -> None:
        self.dir = workdir
        self.sip_port = sip_port
        self.rtp_port = rtp_port
        self.mediaenc = mediaenc
        self.tls = tls
        self.cafile = cafile
        self.tone_hz = tone_hz
        self.user = user  # baresip answers only calls to its account's user
        self.proc: asyncio.subprocess.Process | None = None
        self.log = workdir / "baresip.log"
        self.dumps = workdir / "dumps"

    @property
    def tls_port(self) -> int:
        """baresip listens for TLS on its SIP port + 1."""
        return self.sip_port + 1

    @property
    def available(self) -> bool:
        return Path(BARESIP).exists() and Path(MODULES, "srtp.so").exists()

    def _write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dumps.mkdir(exist_ok=True)
        lines = [
            f"sip_listen 127.0.0.1:{self.sip_port}",
            "sip_trans_def udp",
            f"rtp_ports {self.rtp_port}-{self.rtp_port + 1}",
            "rtcp_mux no",
            f"audio_source ausine,{self.tone_hz}",
            "audio_player aubridge,nowhere",
            "ausrc_srate 48000",
            "ausrc_channels 2",
            "auplay_srate 48000",
            f"snd_path {self.dumps}",
            "net_interface 127.0.0.1",
            f"module_path {MODULES}",
            "module g711.so", "module ausine.so", "module aubridge.so", "module srtp.so", "module sndfile.so",
            "module_app account.so",
            "module_app menu.so",
        ]
        if self.tls is not None:
            lines.append(f"sip_certificate {self.tls.combined}")
        if self.cafile is not None:
            lines.append(f"sip_cafile {self.cafile}")
        (self.dir / "config").write_text("\n".join(lines) + "\n")
        params = ";regint=0;answermode=auto;audio_codecs=PCMU"
        if self.mediaenc:
            params += f";mediaenc={self.mediaenc}"
        (self.dir / "accounts").write_text(f"<sip:{self.user}@127.0.0.1:{self.sip_port}>{params}\n")

    async def start(self) -> None:
        self._write_config()
        out = self.log.open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            BARESIP, "-f", str(self.dir), "-v", "-s", stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out)
        out.close()
        for _ in range(100):  # listening once it logs its SIP address
            await asyncio.sleep(0.05)
            if b"Local network address" in self.log.read_bytes() or b"Populated" in self.log.read_bytes():
                break

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self.proc = None

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")
        return ""

    def decoded_samples(self) -> tuple[array.array[int], int]:
        """The audio baresip decoded from the bridge (sndfile's dump-*-dec.wav), and its sample rate."""
        files = sorted(self.dumps.glob("*dec.wav"))
        samples: array.array[int] = array.array("h")
        rate = 8000
        for path in files:
            with contextlib.suppress(wave.Error, EOFError), wave.open(str(path)) as w:
                rate = w.getframerate()
                samples.frombytes(w.readframes(w.getnframes()))
        return samples, rate

    def best_tone_ratio(self, hz: float, window_s: float = 0.5) -> float:
        """The highest share of ``hz`` in any window of what baresip decoded (its dump is complete once the
        call has ended: libsndfile writes the WAV header on close)."""
        samples, rate = self.decoded_samples()
        size = int(rate * window_s)
        return max((tone_ratio(samples[i:i + size], rate, hz) for i in range(0, len(samples) - size + 1, size)),
                   default=0.0)

    async def dial(self, uri: str) -> None:
        """Place a call from baresip (its `-e` command line only runs at start: restart with the command)."""
        await self.stop()
        self._write_config()
        out = self.log.open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            BARESIP, "-f", str(self.dir), "-v", "-s", "-e", f"d {uri}", stdin=asyncio.subprocess.DEVNULL,
            stdout=out, stderr=out)
        out.close()
