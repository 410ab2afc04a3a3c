"""SIP parser/serializer throughput on one core (a script, not a test).

    .venv/bin/python bench/sip_parse_bench.py [--seconds 2]

Prints messages per second of CPU time (process_time, so other load on the machine does not skew
it) for parse_message + serialize of a realistic INVITE with SDP and its 200 OK, plus the header
accessors the transaction layer uses, and SDP parsing. Target: >= 20,000 parse+serialize per second.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from bridge.sip.message import parse_message
from bridge.sip.sdp import SessionDescription

SDP = (
    b"v=0\r\n"
    b"o=- 3912345678 3912345678 IN IP4 203.0.113.5\r\n"
    b"s=-\r\n"
    b"c=IN IP4 203.0.113.5\r\n"
    b"t=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8 9 101\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-16\r\n"
    b"a=ptime:20\r\n"
    b"a=sendrecv\r\n"
)

INVITE = (
    b"INVITE sip:+4930123456@sip.carrier.example;user=phone SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-524287-1---d8754z-;rport\r\n"
    b"Max-Forwards: 70\r\n"
    b"Contact: <sip:bridge@203.0.113.5:5060;transport=udp>\r\n"
    b"To: <sip:+4930123456@sip.carrier.example;user=phone>\r\n"
    b'From: "Alice Example" <sip:alice@bridge.example>;tag=8d2f7a1c\r\n'
    b"Call-ID: 2d5c9e6f-0b1a-4c3d-9e8f-7a6b5c4d3e2f@203.0.113.5\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, REFER, NOTIFY\r\n"
    b"Supported: replaces, timer, 100rel\r\n"
    b"Session-Expires: 1800;refresher=uac\r\n"
    b"Min-SE: 90\r\n"
    b"User-Agent: matrix-sip-bridge/0.1\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)

OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP 203.0.113.5:5060;branch=z9hG4bK-524287-1---d8754z-;rport=5060;received=203.0.113.5\r\n"
    b"Record-Route: <sip:198.51.100.1;lr;ftag=8d2f7a1c>\r\n"
    b"Contact: <sip:+4930123456@198.51.100.20:5060>\r\n"
    b"To: <sip:+4930123456@sip.carrier.example;user=phone>;tag=as5f1b2c3d\r\n"
    b'From: "Alice Example" <sip:alice@bridge.example>;tag=8d2f7a1c\r\n'
    b"Call-ID: 2d5c9e6f-0b1a-4c3d-9e8f-7a6b5c4d3e2f@203.0.113.5\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Server: Carrier SBC\r\n"
    b"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY\r\n"
    b"Supported: replaces, timer\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)


def _rate(fn: Callable[[], object], seconds: float) -> float:
    n = 0
    start = time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(200):
            fn()
        n += 200
        now = time.process_time()
        if now >= deadline:
            return n / (now - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    args = ap.parse_args()

    def parse_serialize_invite() -> None:
        parse_message(INVITE).serialize()

    def parse_serialize_ok() -> None:
        parse_message(OK_200).serialize()

    def parse_invite_and_read_fields() -> None:
        m = parse_message(INVITE)
        _ = (m.call_id, m.cseq, m.branch, m.from_.tag, m.to.tag, m.contact)

    def parse_sdp() -> None:
        SessionDescription.parse(SDP)

    results = [
        ("INVITE+SDP parse+serialize", _rate(parse_serialize_invite, args.seconds)),
        ("200 OK+SDP parse+serialize", _rate(parse_serialize_ok, args.seconds)),
        ("INVITE parse + header accessors", _rate(parse_invite_and_read_fields, args.seconds)),
        ("INVITE parse only", _rate(lambda: parse_message(INVITE), args.seconds)),
        ("SDP parse", _rate(parse_sdp, args.seconds)),
    ]
    for name, rate in results:
        print(f"{name:34s} {rate:10,.0f} msgs/s  ({1e6 / rate:6.1f} us each)")
    mixed = 2 / (1 / results[0][1] + 1 / results[1][1])
    verdict = "OK" if mixed >= 20_000 else "BELOW TARGET"
    print(f"{'mixed INVITE/200 parse+serialize':34s} {mixed:10,.0f} msgs/s  (target 20,000: {verdict})")


if __name__ == "__main__":
    main()
