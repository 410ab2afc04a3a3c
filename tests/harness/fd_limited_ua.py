"""A UserAgent in its own process under a low RLIMIT_NOFILE, for descriptor-exhaustion tests.

    python -m tests.harness.fd_limited_ua NOFILE
prints "udp_port tcp_port" once started, then answers stdin lines: "cpu" -> seconds of CPU used so far;
"stats" -> JSON of counters; EOF -> exits. INVITEs are answered 200 (the SDP answer) like the bridge would.
Logs go to stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import sys

from bridge.sip.server import ServerInvite
from bridge.sip.settings import ListenAddress, SipSettings
from bridge.sip.ua import UserAgent

SDP_ANSWER = (b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
              b"m=audio 40002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n")


async def answer(si: ServerInvite) -> None:
    await si.respond(200, body=SDP_ANSWER)
    await si.wait_ack(5)


async def main(nofile: int) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))
    settings = SipSettings(listen=[ListenAddress("udp", "127.0.0.1", 0), ListenAddress("tcp", "127.0.0.1", 0)],
                           t1=0.05, t2=0.4, tcp_idle_timeout=0, max_connections=100_000,
                           max_connections_per_source=100_000)  # only the descriptor table limits us
    ua = UserAgent(settings, on_invite=answer)
    await ua.start()
    print(ua.bound_address("udp")[1], ua.bound_address("tcp")[1], flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        if line.strip() == "cpu":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            print(f"{usage.ru_utime + usage.ru_stime:.3f}", flush=True)
        elif line.strip() == "stats":
            servers = [lst.server for lst in ua.transport._listeners if lst.server is not None]
            print(json.dumps({"connections": ua.transport.connection_count,
                              "exhausted": sum(s.exhausted for s in servers)}), flush=True)
    await ua.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main(int(sys.argv[1])))
