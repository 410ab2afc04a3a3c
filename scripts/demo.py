#!/usr/bin/env python3
"""One-command demo of matrix-sip-bridge on loopback (README quick start; `bash scripts/demo.sh` runs setup first).

What it does, as an admin would: writes a bridge config from bridge/example-config.yaml, runs
`python -m bridge -c config.yaml -g -r registration.yaml`, starts a real Synapse (SQLite, temp dir) with that
registration, checks the config, starts the bridge as its own process, registers a Matrix user, then:

  1. Matrix -> SIP: the user calls +1 555 123 4567 from an Element-like aiortc client; sipp plays the SIP trunk
     and a plain-RTP phone plays a 1000 Hz tone; audio is checked both ways, the Matrix user hangs up.
  2. SIP -> Matrix: sipp calls 1 800 555 0100, the Matrix user is rung, answers, audio is checked both ways,
     the phone hangs up.

Everything binds 127.0.0.1 on free ports. Exit status 0 and a final "DEMO OK" line on success; non-zero and a
"DEMO FAILED" line naming the step otherwise. Every process started here is stopped at the end (or on ^C),
unless --keep leaves Synapse and the bridge running for manual exploration until ^C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the demo drives the stack with the test harness (tests/harness)

from demo_config import update_config, write_config  # noqa: E402
from demo_sip import describe, ladder  # noqa: E402

from tests.harness.bridge_stack import free_rtp_range  # noqa: E402
from tests.harness.matrix_client import IncomingCall, MatrixTestClient, OutgoingCall, loopback_ice  # noqa: E402
from tests.harness.rtp_peer import RtpPeer  # noqa: E402
from tests.harness.sipp import SippProcess  # noqa: E402
from tests.harness.sipp import free_port as free_sip_port  # noqa: E402
from tests.harness.synapse import SynapseServer, free_port, register_user, start_synapse, stop_synapse  # noqa: E402

log = logging.getLogger("demo")

SCENARIOS = REPO / "tests" / "e2e" / "scenarios"
SERVER_NAME = "demo.test"
USER = "demo"
USER_ID = f"@{USER}:{SERVER_NAME}"
OUT_NUMBER, OUT_FORMATTED = "15551234567", "+1 555 123 4567"
OUT_GHOST = f"@sip_{OUT_NUMBER}:{SERVER_NAME}"
IN_DIALLED, IN_DIALLED_FORMATTED = "18005550100", "+1 800 555 0100"
IN_CALLER, IN_CALLER_FORMATTED, IN_CALLER_NAME = "15557654321", "+1 555 765 4321", "Bob Phone"
OUT_TONE_HZ, IN_TONE_HZ, MATRIX_TONE_HZ = 1000.0, 800.0, 440.0
MIN_FRAMES = 50  # 1 s of 20 ms frames
HOLD_S = 5.0  # how long each call stays up with audio flowing

def _die_with_parent() -> None:
    """Child-side (preexec): the kernel sends the bridge SIGTERM if the demo dies without stopping it."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class DemoError(Exception):
    """A step did not do what it should; the message says what was expected."""


class Demo:
    def __init__(self, workdir: Path, keep: bool) -> None:
        self.dir = workdir
        self.keep = keep
        self.t0 = time.monotonic()
        self.stage = "starting"
        self.config_path = workdir / "config.yaml"
        self.registration_path = workdir / "registration.yaml"
        self.bridge_log = workdir / "bridge.log"
        self.password = secrets.token_urlsafe(12)
        self.as_port = free_port()
        self.sip_port = free_sip_port(socket.SOCK_DGRAM)
        self.trunk_port = free_sip_port(socket.SOCK_DGRAM)
        self.rtp_range = free_rtp_range()
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                              os.environ.get("PYTHONPATH")]))}
        self.synapse: SynapseServer | None = None
        self._synapse_start: asyncio.Future[SynapseServer] | None = None
        self.bridge: asyncio.subprocess.Process | None = None
        self.client: MatrixTestClient | None = None
        self.sipps: list[SippProcess] = []
        self.peers: list[RtpPeer] = []
        self.results: list[str] = []

    # -- output
    def say(self, msg: str, indent: int = 0) -> None:
        print(f"[{time.monotonic() - self.t0:5.1f}s] {'    ' * indent}{msg}", flush=True)

    def begin(self, stage: str) -> None:
        self.stage = stage
        print(flush=True)
        self.say(f"== {stage}")

    def bridge_log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.bridge_log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no bridge log>"

    # -- the steps
    async def run(self) -> None:
        self.say(f"demo directory: {self.dir} (config, registration, logs)")
        await self.configure()
        await self.start_homeserver()
        await self.start_bridge()
        await self.log_in()
        await self.matrix_calls_phone()
        await self.phone_calls_matrix()

    async def cli(self, *args: str) -> str:
        """Run `python -m bridge <args>` in the demo dir like an admin would; fail the demo if it fails."""
        self.say(f"$ python -m bridge {' '.join(args)}", 1)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bridge", *args, cwd=self.dir, env=self.env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        text = out.decode(errors="replace").strip()
        for line in text.splitlines():
            self.say(f"  {line}", 1)
        if proc.returncode != 0:
            raise DemoError(f"`python -m bridge {' '.join(args)}` exited with {proc.returncode}")
        return text

    async def configure(self) -> None:
        self.begin("Configure the bridge")
        write_config(REPO / "bridge" / "example-config.yaml", self.config_path, {
            "homeserver.address": "http://127.0.0.1:8008",  # the real port is known once Synapse runs
            "homeserver.domain": SERVER_NAME,
            "appservice.address": f"http://127.0.0.1:{self.as_port}",
            "appservice.port": self.as_port,
            "appservice.database": f"sqlite:{self.dir / 'bridge.db'}",
            "bridge.permissions": {SERVER_NAME: "user"},
            "bridge.ring_timeout_s": 30,
            "sip.listen": [{"transport": "udp", "host": "127.0.0.1", "port": self.sip_port}],
            "sip.trunk.proxy": f"sip:127.0.0.1:{self.trunk_port}",
            "sip.inbound.routes": [{"number": IN_DIALLED, "users": [USER_ID]}],
            "media.port_start": self.rtp_range[0],
            "media.port_end": self.rtp_range[1],
            "media.ice_host_addresses": ["127.0.0.1"],  # WebRTC host candidates on loopback only
            "logging.level": "DEBUG",
        })
        self.say(f"wrote {self.config_path.name} from bridge/example-config.yaml: homeserver {SERVER_NAME}, "
                 f"SIP on udp 127.0.0.1:{self.sip_port}, trunk sip:127.0.0.1:{self.trunk_port}, "
                 f"RTP ports {self.rtp_range[0]}-{self.rtp_range[1]}, calls to {IN_DIALLED_FORMATTED} ring "
                 f"{USER_ID}", 1)
        await self.cli("-c", self.config_path.name, "-g", "-r", self.registration_path.name)

    async def start_homeserver(self) -> None:
        self.begin("Start the homeserver")
        self.say("starting Synapse (SQLite, loopback only) with the bridge's registration.yaml ...", 1)
        # Shielded: Synapse starts in a worker thread that a cancel (^C, --timeout) cannot stop; close() then
        # waits for the start to finish and stops the server instead of leaving it running.
        self._synapse_start = asyncio.ensure_future(start_synapse(
            self.dir / "synapse", server_name=SERVER_NAME, appservice_registrations=[self.registration_path]))
        self.synapse = await asyncio.shield(self._synapse_start)
        self.say(f"Synapse is up at {self.synapse.url} (log: {self.synapse.log_path})", 1)
        update_config(self.config_path, {"homeserver.address": self.synapse.url})
        await self.cli("-c", self.config_path.name, "--check-config")
        await register_user(self.synapse, USER, self.password)
        self.say(f"registered Matrix user {USER_ID}", 1)

    async def start_bridge(self) -> None:
        self.begin("Start the bridge")
        self.say(f"$ python -m bridge -c {self.config_path.name}   (log: {self.bridge_log})", 1)
        with self.bridge_log.open("wb") as out:
            self.bridge = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bridge", "-c", self.config_path.name, cwd=self.dir, env=self.env,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + 60
        while True:
            text = self.bridge_log.read_text(errors="replace")
            ready = next((ln for ln in text.splitlines() if "bridge running" in ln), None)
            if ready is not None:
                self.say(ready.split(": ", 1)[-1], 1)
                return
            if self.bridge.returncode is not None:
                raise DemoError(f"the bridge exited with {self.bridge.returncode} while starting")
            if time.monotonic() > deadline:
                raise DemoError("the bridge did not log 'bridge running' within 60 s")
            await asyncio.sleep(0.2)

    async def log_in(self) -> None:
        assert self.synapse is not None
        self.begin("Matrix user logs in")
        self.client = await MatrixTestClient.login(self.synapse.url, USER_ID, self.password)
        await self.client.start_sync(auto_join=True)  # auto_join: accept the portal invite of a ringing phone
        self.say(f"{USER_ID} logged in with an Element-like VoIP client (aiortc, plays a {MATRIX_TONE_HZ:.0f} Hz "
                 "tone as its microphone)", 1)

    async def new_peer(self, hz: float) -> RtpPeer:
        peer = RtpPeer(tone_hz=hz)
        await peer.open()
        self.peers.append(peer)
        peer.start_sending(seconds=60)  # starts once the bridge's first RTP packet shows where to send
        return peer

    async def check_audio(self, call: OutgoingCall | IncomingCall, phone: RtpPeer, phone_hz: float,
                          answered_at: float) -> str:
        try:
            await call.wait_for_tone(phone_hz, timeout=30, min_frames=MIN_FRAMES)
        except TimeoutError as e:
            raise DemoError(f"no {phone_hz:.0f} Hz tone from the phone heard on Matrix: {e}") from None
        deadline = time.monotonic() + 20
        while phone.received < MIN_FRAMES:
            if time.monotonic() > deadline:
                raise DemoError(f"only {phone.received} RTP packets from Matrix reached the phone")
            await asyncio.sleep(0.1)
        await asyncio.sleep(max(0.0, answered_at + HOLD_S - time.monotonic()))
        pts = ", ".join(f"{_PT_NAMES.get(pt, f'PT {pt}')}: {n}"
                        for pt, n in sorted(phone.received_payload_types.items()))
        summary = (f"{call.frames_received} audio frames decoded on Matrix, "
                   f"{call.tone_ratio(phone_hz):.0%} of the last second is the phone's {phone_hz:.0f} Hz tone; "
                   f"{phone.received} RTP packets from Matrix at the phone ({pts})")
        self.say(f"audio both ways: {summary}", 1)
        return summary

    def show_sip(self, sipp: SippProcess, name: str) -> None:
        for line in describe(ladder(sipp.messages), name):
            self.say(f"SIP  {line}", 1)

    async def finish_sipp(self, sipp: SippProcess, role: str) -> None:
        code = await sipp.wait(30)
        if code != 0:
            raise DemoError(f"the {role} (sipp) did not see the expected SIP exchange (exit {code}); "
                            f"trace: {sipp.message_file}, errors: {sipp.error_file}")

    async def matrix_calls_phone(self) -> None:
        assert self.client is not None
        self.begin(f"Call 1: Matrix user {USER_ID} calls {OUT_FORMATTED}")
        phone = await self.new_peer(OUT_TONE_HZ)
        sipp = SippProcess(SCENARIOS / "trunk_answer.xml", local_port=self.trunk_port, timeout=60,
                           extra_args=["-key", "rtp_port", str(phone.port)], workdir=self.dir / "sipp")
        self.sipps.append(sipp)
        await sipp.start()
        self.say(f"SIP trunk (sipp) listening on udp 127.0.0.1:{self.trunk_port}; the phone behind it plays a "
                 f"{OUT_TONE_HZ:.0f} Hz tone over RTP (PCMU) from port {phone.port}", 1)
        room = await self.client.create_dm(OUT_GHOST)
        self.say(f"{USER_ID} opens a direct chat with {OUT_GHOST} (the number's ghost user)", 1)
        await self.client.wait_for_membership(room, OUT_GHOST, "join", timeout=30)
        self.say(f"the bridge's ghost joined {room}: it is now the portal room for {OUT_FORMATTED}", 1)
        call = await self.client.place_call(room, OUT_GHOST, tone_hz=MATRIX_TONE_HZ)
        self.say(f"Matrix: m.call.invite sent (call_id {call.call_id}), WebRTC offer with Opus/PCMU/PCMA", 1)
        answer = await call.wait_answer(timeout=30)
        answered_at = time.monotonic()
        self.say(f"Matrix: m.call.answer from {answer['sender']}; m.call.select_answer sent", 1)
        self.show_sip(sipp, "trunk")
        audio = await self.check_audio(call, phone, OUT_TONE_HZ, answered_at)
        await call.hangup()
        self.say(f"Matrix: {USER_ID} hangs up (m.call.hangup)", 1)
        await self.finish_sipp(sipp, "trunk")
        for line in describe(ladder(sipp.messages)[-2:], "trunk"):
            self.say(f"SIP  {line}", 1)
        await call.close()
        self.results.append(f"Matrix -> SIP: {audio}")

    async def phone_calls_matrix(self) -> None:
        assert self.client is not None
        self.begin(f"Call 2: phone {IN_CALLER_FORMATTED} ({IN_CALLER_NAME}) calls {IN_DIALLED_FORMATTED}")
        phone = await self.new_peer(IN_TONE_HZ)
        sipp = SippProcess(SCENARIOS / "caller_talk.xml", remote=("127.0.0.1", self.sip_port), service=IN_DIALLED,
                           timeout=60, workdir=self.dir / "sipp",
                           extra_args=["-key", "caller", IN_CALLER, "-key", "caller_name", IN_CALLER_NAME,
                                       "-key", "rtp_port", str(phone.port), "-d", str(int((HOLD_S + 3) * 1000))])
        self.sipps.append(sipp)
        await sipp.start()
        self.say(f"phone (sipp) sends INVITE sip:{IN_DIALLED}@127.0.0.1:{self.sip_port}; it plays a "
                 f"{IN_TONE_HZ:.0f} Hz tone and hangs up {HOLD_S + 3:.0f} s after the answer", 1)
        call = await self.client.wait_incoming_call(timeout=40)
        self.say(f"Matrix: {USER_ID} is rung by {call.invite['sender']} in {call.room_id} "
                 f"(m.call.invite, call_id {call.call_id})", 1)
        await call.answer(tone_hz=MATRIX_TONE_HZ)
        answered_at = time.monotonic()
        self.say(f"Matrix: {USER_ID} answers (m.call.answer)", 1)
        await call.wait_select_answer(timeout=15)
        self.say("Matrix: the bridge selects this answer (m.call.select_answer)", 1)
        self.show_sip(sipp, "phone")
        audio = await self.check_audio(call, phone, IN_TONE_HZ, answered_at)
        hangup = await call.wait_hangup(timeout=30)
        self.say(f"phone hangs up: Matrix gets m.call.hangup (reason {hangup['content'].get('reason')})", 1)
        await self.finish_sipp(sipp, "phone")
        for line in describe(ladder(sipp.messages)[-2:], "phone"):
            self.say(f"SIP  {line}", 1)
        await call.close()
        self.results.append(f"SIP -> Matrix: {audio}")

    # -- --keep and cleanup
    async def wait_for_stop(self) -> None:
        assert self.synapse is not None
        if self.client is not None:  # log out of the scripted client: the account is yours now
            await self.client.close()
            self.client = None
        print(flush=True)
        self.say("== Stack left running (--keep)")
        scenarios = SCENARIOS.relative_to(Path.cwd()) if SCENARIOS.is_relative_to(Path.cwd()) else SCENARIOS
        for line in (f"homeserver: {self.synapse.url} (server name {SERVER_NAME}); log in with a Matrix client",
                     f"Matrix user: {USER_ID}  password: {self.password}",
                     f"call a phone: DM @sip_<digits>:{SERVER_NAME} and call; a SIP trunk must answer on udp "
                     f"127.0.0.1:{self.trunk_port}, e.g.: sipp -sf {scenarios}/trunk_answer.xml -i 127.0.0.1 "
                     f"-p {self.trunk_port} -m 1 -key rtp_port 40000",
                     f"ring {USER_ID}: sipp 127.0.0.1:{self.sip_port} -sf {scenarios}/caller_talk.xml -s {IN_DIALLED} "
                     f"-i 127.0.0.1 -m 1 -key caller {IN_CALLER} -key caller_name Bob -key rtp_port 40000 -d 10000",
                     f"config: {self.config_path}   bridge log: {self.bridge_log}",
                     "stop everything: press Ctrl-C (or send SIGTERM to this demo process)"):
            self.say(line, 1)
        await asyncio.Event().wait()

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        for sipp in self.sipps:
            await sipp.aclose()
        for peer in self.peers:
            await peer.close()
        if self.bridge is not None and self.bridge.returncode is None:
            self.bridge.terminate()
            try:
                await asyncio.wait_for(self.bridge.wait(), 15)
            except TimeoutError:
                self.bridge.kill()
                await self.bridge.wait()
        if self.synapse is None and self._synapse_start is not None:
            with contextlib.suppress(Exception):
                self.synapse = await self._synapse_start
        if self.synapse is not None:
            await stop_synapse(self.synapse)


_PT_NAMES = {0: "PCMU", 8: "PCMA", 9: "G722", 101: "telephone-event"}


async def main_async(args: argparse.Namespace, workdir: Path) -> int:
    logging.basicConfig(filename=workdir / "demo-client.log", level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    demo = Demo(workdir, args.keep)
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    code = 1
    try:
        with loopback_ice():
            async with asyncio.timeout(args.timeout):
                await demo.run()
            elapsed = time.monotonic() - demo.t0
            print(flush=True)
            for result in demo.results:
                demo.say(result)
            demo.say(f"bridge log: {demo.bridge_log}")
            print(f"DEMO OK: Matrix -> SIP and SIP -> Matrix calls connected with audio both ways "
                  f"({elapsed:.1f} s)", flush=True)
            code = 0
            if args.keep:
                await demo.wait_for_stop()
    except asyncio.CancelledError:
        if code != 0:
            print(f"\nDEMO FAILED: interrupted during '{demo.stage}'", flush=True)
            code = 130
    except Exception as e:
        what = str(e) or type(e).__name__
        if isinstance(e, TimeoutError) and not str(e):
            what = f"gave up after {args.timeout:g} s (--timeout)"
        if demo.bridge_log.exists():
            print(f"\nlast lines of the bridge log ({demo.bridge_log}):\n{demo.bridge_log_tail()}", flush=True)
        print(f"\nDEMO FAILED during '{demo.stage}': {what}", flush=True)
        log.exception("demo failed")
        code = 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        demo.say("stopping sipp, RTP peers, the bridge and Synapse ...")
        await demo.close()
        demo.say("all demo processes stopped")
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run matrix-sip-bridge end to end on loopback: a Matrix -> SIP call "
                                            "and a SIP -> Matrix call with audio both ways.")
    p.add_argument("--dir", help="demo directory for config, registration and logs (default: a new temp dir)")
    p.add_argument("--keep", action="store_true",
                   help="leave Synapse and the bridge running after the calls, until Ctrl-C")
    p.add_argument("--timeout", type=float, default=240.0, help="give up after this many seconds (default 240)")
    args = p.parse_args(argv)
    workdir = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="matrix-sip-bridge-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(main_async(args, workdir))


if __name__ == "__main__":
    sys.exit(main())
