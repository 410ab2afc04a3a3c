"""StreamFramer: cutting a TCP/TLS byte stream into SIP messages by Content-Length."""

from __future__ import annotations

from bridge.sip.message import Request, Response, SipParseError, StreamFramer, parse_message


def _msg(call_id: str, body: bytes = b"", *, length: bool = True) -> bytes:
    head = (
        f"MESSAGE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK{call_id}\r\n"
        f"From: <sip:a@a.example>;tag=1\r\nTo: <sip:bob@b.example>\r\nCall-ID: {call_id}\r\nCSeq: 1 MESSAGE\r\n"
    )
    if length:
        head += f"Content-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def _call_ids(items: list[Request | Response | SipParseError]) -> list[str]:
    return [m.call_id if not isinstance(m, SipParseError) else "ERROR" for m in items]


def test_one_message_in_one_segment() -> None:
    framer = StreamFramer()
    out = framer.feed(_msg("a", b"hello"))
    assert out == [parse_message(_msg("a", b"hello"))]
    assert framer.pending() == 0


def test_message_split_byte_by_byte_including_the_body_is_reassembled() -> None:
    framer = StreamFramer()
    data = _msg("a", b"body\r\n\r\nwith blank line")
    out: list[Request | Response | SipParseError] = []
    for i in range(len(data)):
        out += framer.feed(data[i : i + 1])
    assert len(out) == 1
    assert isinstance(out[0], Request)
    assert out[0].body == b"body\r\n\r\nwith blank line"


def test_several_messages_in_one_segment_are_all_returned_in_order() -> None:
    framer = StreamFramer()
    out = framer.feed(_msg("a", b"1") + _msg("b") + _msg("c", b"333"))
    assert _call_ids(out) == ["a", "b", "c"]


def test_message_boundary_in_the_middle_of_a_segment_keeps_the_remainder() -> None:
    framer = StreamFramer()
    first, second = _msg("a", b"xy"), _msg("b", b"z")
    cut = len(first) + 10
    assert _call_ids(framer.feed((first + second)[:cut])) == ["a"]
    assert framer.pending() == 10
    assert _call_ids(framer.feed((first + second)[cut:])) == ["b"]


def test_crlf_keepalives_between_messages_are_ignored() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n\r\n") == []
    out = framer.feed(b"\r\n\r\n" + _msg("a") + b"\r\n\r\n" + _msg("b") + b"\r\n")
    assert _call_ids(out) == ["a", "b"]
    assert not framer.broken()


def test_message_without_content_length_is_reported_and_framing_continues() -> None:
    framer = StreamFramer()
    out = framer.feed(_msg("a", length=False) + _msg("b"))
    assert _call_ids(out) == ["ERROR", "b"]
    error = out[0]
    assert isinstance(error, SipParseError)
    assert isinstance(error.partial, Request)  # the transport can still answer 400
    assert not framer.broken()


def test_unparsable_message_is_reported_and_the_next_one_still_parsed() -> None:
    framer = StreamFramer()
    bad = b"GARBAGE\r\nContent-Length: 3\r\n\r\nabc"
    assert _call_ids(framer.feed(bad + _msg("b"))) == ["ERROR", "b"]


def test_oversize_header_section_breaks_the_framer() -> None:
    framer = StreamFramer(max_size=1000)
    out = framer.feed(b"INVITE sip:a@b SIP/2.0\r\nX-Long: " + b"a" * 2000)
    assert len(out) == 1 and isinstance(out[0], SipParseError)
    assert framer.broken()
    assert framer.feed(_msg("a")) == []


def test_oversize_content_length_breaks_the_framer_before_reading_the_body() -> None:
    framer = StreamFramer(max_size=1000)
    out = framer.feed(_msg("a").replace(b"Content-Length: 0", b"Content-Length: 5000"))
    assert len(out) == 1 and isinstance(out[0], SipParseError)
    assert framer.broken()


def test_unreadable_content_length_breaks_the_framer() -> None:
    framer = StreamFramer()
    out = framer.feed(_msg("a").replace(b"Content-Length: 0", b"Content-Length: zero"))
    assert len(out) == 1 and isinstance(out[0], SipParseError)
    assert framer.broken()


def test_compact_content_length_is_used_for_framing() -> None:
    framer = StreamFramer()
    data = _msg("a", b"abc").replace(b"Content-Length: 3", b"l: 3")
    out = framer.feed(data + _msg("b"))
    assert _call_ids(out) == ["a", "b"]
    assert isinstance(out[0], Request) and out[0].body == b"abc"


def test_incomplete_message_waits_for_more_data() -> None:
    framer = StreamFramer()
    data = _msg("a", b"0123456789")
    assert framer.feed(data[:-4]) == []
    assert framer.pending() == len(data) - 4
    assert _call_ids(framer.feed(data[-4:])) == ["a"]
