"""TCP/TLS connection limits: idle timeout, per-source and total caps, descriptor exhaustion."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from bridge.sip.server import ServerInvite
from tests.harness.sip_ua import (
    SDP_ANSWER,
    SDP_OFFER,
    fast_settings,
    raw_request,
    running_ua,
    self_signed_cert,
    uri_of,
    wait_for,
)

ROOT = Path(__file__).resolve().parents[2]


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True if the other side closes (EOF or RST) within `timeout`."""
    try:
        return await asyncio.wait_for(reader.read(65536), timeout) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


async def refused(target: tuple[str, int], source_ip: str) -> bool:
    """True if a connection from `source_ip` is reset or closed at once (at connect or just after)."""
    try:
        reader, writer = await asyncio.open_connection(*target, local_addr=(source_ip, 0))
    except ConnectionResetError:
        return True
    try:
        return await closed_by_peer(reader, 2.0)
    finally:
        writer.close()


async def options_over(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int],
                       branch: str) -> bytes:
    writer.write(raw_request("OPTIONS", target, via_port=writer.get_extra_info("sockname")[1], branch=branch,
                             call_id=branch).replace("SIP/2.0/UDP", "SIP/2.0/TCP").encode())
    await writer.drain()
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)


async def test_idle_tcp_connection_is_closed_after_the_timeout_and_a_busy_one_is_not() -> None:
    async with running_ua(fast_settings("udp", "tcp", tcp_idle_timeout=0.4)) as ua:
        target = ua.bound_address("tcp")
        start = time.monotonic()
        idle_r, idle_w = await asyncio.open_connection(*target)
        busy_r, busy_w = await asyncio.open_connection(*target)
        await wait_for(lambda: ua.transport.connection_count == 2)
        for i in range(8):  # keeps talking every 0.15 s, past the idle connection's end
            assert (await options_over(busy_r, busy_w, target, f"z9hG4bKbusy{i}")).startswith(b"SIP/2.0 200")
            await asyncio.sleep(0.15)
        assert await closed_by_peer(idle_r, 2.0)
        assert time.monotonic() - start >= 0.4
        assert not busy_r.at_eof()
        await wait_for(lambda: ua.transport.connection_count == 1)
        busy_w.close()
        idle_w.close()


async def test_connections_over_the_per_source_and_total_limits_are_refused() -> None:
    settings = fast_settings("udp", "tcp", max_connections=4, max_connections_per_source=3, tcp_idle_timeout=0)
    async with running_ua(settings) as ua:
        target = ua.bound_address("tcp")
        attacker = [await asyncio.open_connection(*target, local_addr=("127.0.0.2", 0)) for _ in range(3)]
        await wait_for(lambda: ua.transport.connection_count == 3)
        assert await refused(target, "127.0.0.2")  # the 4th from one source
        other_r, other_w = await asyncio.open_connection(*target, local_addr=("127.0.0.3", 0))
        assert (await options_over(other_r, other_w, target, "z9hG4bKother")).startswith(b"SIP/2.0 200")
        assert await refused(target, "127.0.0.4")  # the 5th in total
        # the admitted ones still work, and a closed one frees its slot
        r0, w0 = attacker[0]
        assert (await options_over(r0, w0, target, "z9hG4bKfirst")).startswith(b"SIP/2.0 200")
        w0.close()
        await wait_for(lambda: ua.transport.connection_count == 3)
        again_r, again_w = await asyncio.open_connection(*target, local_addr=("127.0.0.2", 0))
        assert (await options_over(again_r, again_w, target, "z9hG4bKagain")).startswith(b"SIP/2.0 200")
        for _, w in [*attacker[1:], (other_r, other_w), (again_r, again_w)]:
            w.close()


async def test_trusted_source_skips_the_per_source_limit_but_not_the_total() -> None:
    settings = fast_settings("udp", "tcp", max_connections=5, max_connections_per_source=2, tcp_idle_timeout=0,
                             trusted_hosts=("127.0.0.5",))
    async with running_ua(settings) as ua:
        target = ua.bound_address("tcp")
        trunk = [await asyncio.open_connection(*target, local_addr=("127.0.0.5", 0)) for _ in range(5)]
        await wait_for(lambda: ua.transport.connection_count == 5)
        assert await refused(target, "127.0.0.5")
        for _, w in trunk:
            w.close()


async def test_descriptor_exhaustion_refuses_quietly_without_spinning_and_udp_calls_still_work(
        tmp_path: Path) -> None:
    stderr_path = tmp_path / "ua.stderr"
    with stderr_path.open("wb") as stderr:
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.harness.fd_limited_ua", "64", cwd=ROOT, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=stderr)
    assert child.stdin is not None and child.stdout is not None

    async def ask(command: str) -> str:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(command.encode() + b"\n")
        await child.stdin.drain()
        return (await asyncio.wait_for(child.stdout.readline(), 10)).decode().strip()

    writers: list[asyncio.StreamWriter] = []
    try:
        line = await asyncio.wait_for(child.stdout.readline(), 20)
        udp_port, tcp_port = (int(x) for x in line.split())
        for _ in range(150):  # far more than 64 descriptors
            try:
                _, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", tcp_port), 2)
            except (OSError, TimeoutError):
                continue
            writers.append(w)
        await asyncio.sleep(0.5)
        cpu0, t0 = float(await ask("cpu")), time.monotonic()
        await asyncio.sleep(3.0)
        cpu1, t1 = float(await ask("cpu")), time.monotonic()
        stats = json.loads(await ask("stats"))
        assert stats["exhausted"] >= 1  # we really ran it out of descriptors
        assert cpu1 - cpu0 < 0.3 * (t1 - t0)  # no busy accept loop
        # a UDP call is served while the descriptor table is still full
        async with running_ua(fast_settings()) as caller:
            call = caller.invite(f"sip:bob@127.0.0.1:{udp_port}", from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
            assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
            assert call.dialog is not None
            assert (await asyncio.wait_for(call.dialog.bye(), 10)) is not None
            assert uri_of(caller)
    finally:
        for w in writers:
            w.close()
        child.stdin.close()
        try:
            await asyncio.wait_for(child.wait(), 10)
        except TimeoutError:
            child.kill()
            await child.wait()
    log = stderr_path.read_text()
    exhausted_lines = [ln for ln in log.splitlines() if "out of file descriptors" in ln]
    assert 1 <= len(exhausted_lines) <= 2, log[-2000:]
    assert "Traceback" not in log and "socket.accept() out of system resource" not in log, log[-2000:]
    assert len(log.splitlines()) < 30, log[-2000:]


async def test_tls_connection_that_never_handshakes_is_closed_and_frees_its_slot(tmp_path: Path) -> None:
    certfile, keyfile = self_signed_cert(tmp_path)
    settings = fast_settings("udp", "tls", tls_certfile=certfile, tls_keyfile=keyfile, tcp_idle_timeout=0.4,
                             max_connections_per_source=1)
    async with running_ua(settings) as ua:
        target = ua.bound_address("tls")
        reader, writer = await asyncio.open_connection(*target, local_addr=("127.0.0.2", 0))
        assert await refused(target, "127.0.0.2")  # the silent one holds the source's only slot...
        assert await closed_by_peer(reader, 3.0)  # ...until the handshake deadline
        writer.close()
        await wait_for(lambda: ua.transport._admission.total == 0)
        _, again = await asyncio.open_connection(*target, local_addr=("127.0.0.2", 0))
        await wait_for(lambda: ua.transport._admission.count("127.0.0.2") == 1)  # admitted again
        again.close()


async def test_connection_carrying_a_dialog_outlives_the_idle_timeout() -> None:
    async def answer(si: ServerInvite) -> None:
        await si.respond(200, body=SDP_ANSWER)
        await si.wait_ack(5)

    async with running_ua(fast_settings("udp", "tcp", tcp_idle_timeout=0.3), on_invite=answer) as callee, \
            running_ua(fast_settings("udp", "tcp")) as caller:
        call = caller.invite(uri_of(callee, "tcp"), from_uri="sip:alice@bridge.test", sdp=SDP_OFFER)
        assert (await asyncio.wait_for(call.wait_final(), 10)).status == 200
        await wait_for(lambda: bool(callee.dialogs))
        conn = callee.dialogs[0].connection
        assert conn is not None
        await asyncio.sleep(1.2)  # four idle timeouts without a byte
        assert not conn.closed
        assert call.dialog is not None
        assert (await asyncio.wait_for(call.dialog.bye(), 5)) is not None
        await wait_for(lambda: not callee.dialogs)
        await wait_for(lambda: conn.closed, 3)  # no dialog holds it any more: idle, closed


async def test_idle_outgoing_tcp_connection_to_the_trunk_is_closed_after_the_timeout() -> None:
    """The client side too: a connection the UA opened (to a trunk) is closed once idle, not kept forever."""
    # the trunk never closes connections itself: only the UA's own idle timer can end this one
    async with running_ua(fast_settings("udp", "tcp", tcp_idle_timeout=0)) as trunk, \
            running_ua(fast_settings("udp", "tcp", tcp_idle_timeout=0.4)) as ua:
        host, port = trunk.bound_address("tcp")
        request, transport, addr = ua.build_request(
            "OPTIONS", f"sip:trunk@{host}:{port};transport=tcp", from_header="<sip:bridge@127.0.0.1>;tag=t1",
            to_header=f"<sip:trunk@{host}:{port}>", call_id="idle-out-1", cseq=1)
        response, _ = await ua.send_request(request, transport, addr)
        assert response.status == 200
        assert ua.transport.connection_count == 1  # the outgoing connection, now idle
        start = time.monotonic()
        await wait_for(lambda: ua.transport.connection_count == 0, 5)
        assert time.monotonic() - start < 2.0
        await wait_for(lambda: trunk.transport.connection_count == 0, 5)
