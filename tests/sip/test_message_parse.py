"""parse_message / serialize: whole SIP messages as read from a datagram."""

from __future__ import annotations

import pytest

from bridge.sip.message import (
    MAX_HEADERS,
    Headers,
    NameAddr,
    Request,
    Response,
    SipParseError,
    Via,
    parse_message,
    reason_phrase,
)
from bridge.sip.uri import SipUri

SDP = (
    b"v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\ns=-\r\nc=IN IP4 192.0.2.101\r\n"
    b"t=0 0\r\nm=audio 49172 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
)

INVITE = (
    b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP client.atlanta.example.com:5060;branch=z9hG4bK74bf9\r\n"
    b"Max-Forwards: 70\r\n"
    b'From: "Alice, A." <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n'
    b"To: Bob <sip:bob@biloxi.example.com>\r\n"
    b"Call-ID: 3848276298220188511@atlanta.example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Contact: <sip:alice@client.atlanta.example.com;transport=udp>\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Content-Length: " + str(len(SDP)).encode() + b"\r\n\r\n" + SDP
)

OK_200 = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: SIP/2.0/UDP proxy.example.com;branch=z9hG4bK2d4790.1, SIP/2.0/UDP client.example.com"
    b";branch=z9hG4bK74bf9;received=192.0.2.101;rport=5062\r\n"
    b"From: <sip:alice@example.com>;tag=9fxced76sl\r\n"
    b"To: <sip:bob@example.com>;tag=8321234356\r\n"
    b"Call-ID: 3848276298220188511@example.com\r\n"
    b"CSeq: 1 INVITE\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def _request(**extra: str) -> bytes:
    lines = [
        "BYE sip:bob@192.0.2.4 SIP/2.0",
        "Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKnashds8",
        "From: <sip:alice@a.example>;tag=1",
        "To: <sip:bob@b.example>;tag=2",
        "Call-ID: c1",
        "CSeq: 2 BYE",
    ]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in extra.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_invite_with_sdp_is_parsed_into_request_fields() -> None:
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    assert msg.method == "INVITE"
    assert msg.uri == "sip:bob@biloxi.example.com"
    assert msg.version == "SIP/2.0"
    assert msg.call_id == "3848276298220188511@atlanta.example.com"
    assert msg.cseq == (1, "INVITE")
    assert msg.branch == "z9hG4bK74bf9"
    assert msg.top_via == Via("UDP", "client.atlanta.example.com", 5060, {"branch": "z9hG4bK74bf9"})
    assert msg.from_.display == "Alice, A."
    assert msg.from_.tag == "9fxced76sl"
    assert msg.to.tag is None
    contact = msg.contact
    assert isinstance(contact, NameAddr) and contact.uri.params == {"transport": "udp"}
    assert msg.content_type == "application/sdp"
    assert msg.body == SDP


def test_response_with_two_comma_joined_vias() -> None:
    msg = parse_message(OK_200)
    assert isinstance(msg, Response)
    assert (msg.status, msg.reason) == (200, "OK")
    assert [v.host for v in msg.vias] == ["proxy.example.com", "client.example.com"]
    assert msg.vias[1].rport == 5062
    assert msg.top_via.branch == "z9hG4bK2d4790.1"
    assert msg.to.tag == "8321234356"
    assert msg.body == b""


def test_compact_header_names_are_understood() -> None:
    raw = (
        b"OPTIONS sip:x@y SIP/2.0\r\nv: SIP/2.0/TCP h;branch=z9hG4bK1\r\nf: <sip:a@b>;tag=1\r\n"
        b"t: sip:c@d\r\ni: cid\r\nCSeq: 5 OPTIONS\r\nm: <sip:a@h>\r\nk: timer\r\nc: text/plain\r\nl: 2\r\n\r\nhi"
    )
    msg = parse_message(raw)
    assert msg.call_id == "cid"
    assert msg.headers.get("Supported") == "timer"
    assert msg.content_type == "text/plain"
    assert msg.body == b"hi"
    assert [name for name, _ in msg.headers.items()][:4] == ["Via", "From", "To", "Call-ID"]


def test_folded_header_lines_are_joined_with_one_space() -> None:
    raw = _request(Subject="I know you're there,\r\n   pick up the phone\r\n\tand talk to me!")
    assert parse_message(raw).headers.get("Subject") == "I know you're there, pick up the phone and talk to me!"


def test_bare_lf_line_ends_are_accepted() -> None:
    head, _, body = INVITE.partition(b"\r\n\r\n")
    msg = parse_message(head.replace(b"\r\n", b"\n") + b"\n\n" + body)
    assert isinstance(msg, Request)
    assert msg.call_id == "3848276298220188511@atlanta.example.com"
    assert msg.body == SDP


def test_leading_crlf_keepalives_are_skipped() -> None:
    assert parse_message(b"\r\n\r\n" + OK_200) == parse_message(OK_200)


def test_whitespace_before_the_header_colon_is_allowed() -> None:
    assert parse_message(_request(Subject="x").replace(b"Call-ID:", b"Call-ID \t:")).call_id == "c1"


def test_udp_body_is_truncated_to_content_length() -> None:
    msg = parse_message(_request(Content_Length="3") + b"abcdef")
    assert msg.body == b"abc"


def test_udp_body_without_content_length_is_the_rest_of_the_datagram() -> None:
    assert parse_message(_request() + b"payload").body == b"payload"


def test_body_shorter_than_content_length_is_an_error_that_can_still_get_a_400() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(_request(Content_Length="50") + b"short")
    partial = info.value.partial
    assert isinstance(partial, Request)
    assert partial.call_id == "c1"
    assert partial.body == b""


def test_cseq_method_mismatch_is_an_error_with_a_partial_request() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(_request().replace(b"CSeq: 2 BYE", b"CSeq: 2 INVITE"))
    assert info.value.partial is not None
    assert info.value.partial.method == "BYE"
    assert info.value.partial.headers.get("CSeq") == "2 INVITE"


@pytest.mark.parametrize(
    "replace",
    [
        (b"Content-Length", b"Content-Length: x1\r\nX-A"),
        (b"CSeq: 2 BYE", b"CSeq: two BYE"),
        (b"From: <sip:alice@a.example>;tag=1", b"From: <sip:alice@a.example"),
        (b"To: <sip:bob@b.example>;tag=2", b"To: <mailto:bob@b.example>"),
    ],
)
def test_bad_header_values_in_a_readable_request_give_a_partial(replace: tuple[bytes, bytes]) -> None:
    raw = _request(Content_Length="0").replace(*replace)
    with pytest.raises(SipParseError) as info:
        parse_message(raw)
    assert isinstance(info.value.partial, Request)


@pytest.mark.parametrize("missing", [b"Via", b"From", b"To", b"Call-ID", b"CSeq"])
def test_missing_mandatory_header_is_an_error_without_partial(missing: bytes) -> None:
    lines = [line for line in _request().split(b"\r\n") if not line.startswith(missing + b":")]
    with pytest.raises(SipParseError) as info:
        parse_message(b"\r\n".join(lines))
    assert info.value.partial is None


def test_unreadable_top_via_gives_no_partial() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(_request().replace(b"SIP/2.0/UDP 192.0.2.1", b"garbage"))
    assert info.value.partial is None


def test_response_errors_never_carry_a_partial() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(OK_200.replace(b"CSeq: 1 INVITE", b"CSeq: x"))
    assert info.value.partial is None


def test_conflicting_content_lengths_are_an_error() -> None:
    with pytest.raises(SipParseError):
        parse_message(_request(Content_Length="0", l="3") + b"abc")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\r\n\r\n",
        b"INVITE sip:a@b SIP/2.0",
        b"INVITE sip:a@b SIP/3.0\r\n\r\n",
        b"INVITE  SIP/2.0\r\n\r\n",
        b"INV<ITE sip:a@b SIP/2.0\r\n\r\n",
        b"INVITE nocolon SIP/2.0\r\n\r\n",
        b"SIP/2.0 2000 OK\r\n\r\n",
        b"SIP/2.0 099 Low\r\n\r\n",
        b"SIP/2.0 700 High\r\n\r\n",
        b"SIP/1.0 200 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\n",
        b"\xff\xfe\x00garbage\r\n\r\n",
    ],
)
def test_garbage_start_lines_raise_sip_parse_error(raw: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(raw)


def test_header_line_without_colon_is_an_error() -> None:
    with pytest.raises(SipParseError):
        parse_message(_request().replace(b"Call-ID: c1", b"Call-ID c1"))


def test_continuation_before_first_header_is_an_error() -> None:
    with pytest.raises(SipParseError):
        parse_message(
            _request().replace(b"BYE sip:bob@192.0.2.4 SIP/2.0\r\n", b"BYE sip:bob@192.0.2.4 SIP/2.0\r\n x\r\n")
        )


@pytest.mark.parametrize("bad", [b"\x00", b"\r", b"\xc3\x28"])
def test_nul_bare_cr_and_invalid_utf8_in_headers_are_errors(bad: bytes) -> None:
    with pytest.raises(SipParseError):
        parse_message(_request(Subject="a").replace(b"Subject: a", b"Subject: a" + bad + b"b"))


def test_utf8_display_names_and_reason_phrases_are_accepted() -> None:
    raw = OK_200.replace(b"200 OK", "200 Très bien".encode()).replace(
        b"From: <sip", 'From: "Jürgen Ω" <sip'.encode(), 1
    )
    msg = parse_message(raw)
    assert isinstance(msg, Response)
    assert msg.reason == "Très bien"
    assert msg.from_.display == "Jürgen Ω"


def test_message_larger_than_max_size_is_refused() -> None:
    with pytest.raises(SipParseError):
        parse_message(_request(Subject="x" * 2000), max_size=1500)
    assert parse_message(_request(Subject="x" * 2000), max_size=4000).call_id == "c1"


def test_too_many_headers_are_refused() -> None:
    raw = _request().replace(b"\r\n\r\n", b"\r\n" + b"X-A: 1\r\n" * MAX_HEADERS + b"\r\n")
    with pytest.raises(SipParseError):
        parse_message(raw)


def test_overlong_header_line_is_refused() -> None:
    with pytest.raises(SipParseError):
        parse_message(_request(Subject="y" * 9000))
    folded = "a" + "\r\n " + "b" * 5000 + "\r\n " + "c" * 5000
    with pytest.raises(SipParseError):
        parse_message(_request(Subject=folded))


def test_serialize_writes_crlf_lines_and_a_correct_content_length() -> None:
    req = Request(
        "MESSAGE",
        "sip:bob@b.example",
        Headers(
            [
                ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
                ("From", "<sip:a@a.example>;tag=1"),
                ("To", "<sip:bob@b.example>"),
                ("Call-ID", "x"),
                ("CSeq", "1 MESSAGE"),
                ("Content-Length", "999"),
                ("Content-Type", "text/plain"),
            ]
        ),
        body="héllo".encode(),
    )
    wire = req.serialize()
    assert wire.startswith(b"MESSAGE sip:bob@b.example SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n")
    assert b"\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nh\xc3\xa9llo" in wire
    assert wire.count(b"Content-Length") == 1


def test_serialize_appends_content_length_when_missing() -> None:
    resp = Response(
        180,
        "Ringing",
        Headers(
            [
                ("Via", "SIP/2.0/UDP h;branch=z9hG4bK1"),
                ("From", "<sip:a@b>;tag=1"),
                ("To", "<sip:c@d>;tag=2"),
                ("Call-ID", "x"),
                ("CSeq", "1 INVITE"),
            ]
        ),
    )
    assert resp.serialize().endswith(b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")


def test_parsed_messages_round_trip_through_serialize() -> None:
    for raw in (INVITE, OK_200):
        msg = parse_message(raw)
        assert parse_message(msg.serialize()) == msg
    assert parse_message(INVITE).serialize() == INVITE


def test_equality_ignores_content_length_but_not_body() -> None:
    a = parse_message(_request(Content_Length="0"))
    b = parse_message(_request())
    assert a == b
    b.body = b"x"
    assert a != b


def test_reason_phrases_for_common_codes() -> None:
    assert reason_phrase(100) == "Trying"
    assert reason_phrase(183) == "Session Progress"
    assert reason_phrase(481) == "Call/Transaction Does Not Exist"
    assert reason_phrase(488) == "Not Acceptable Here"
    assert reason_phrase(603) == "Decline"
    assert reason_phrase(499) == "Client Error"
    assert reason_phrase(699) == "Global Failure"


def test_duplicate_from_to_call_id_or_cseq_is_an_error_with_a_partial() -> None:
    for extra in ({"To": "<sip:other@b.example>"}, {"i": "c2"}, {"CSeq": "3 BYE"}, {"f": "<sip:x@y>;tag=3"}):
        with pytest.raises(SipParseError) as info:
            parse_message(_request(**extra))
        assert isinstance(info.value.partial, Request)


# A whitespace-heavy but valid request in the spirit of RFC 4475 section 3.1.1.1 ("wsinv").
WS_SDP = b"v=0\r\no=mhandley 29739 7272939 IN IP4 192.0.2.3\r\ns=-\r\nc=IN IP4 192.0.2.3\r\nt=0 0\r\n"
WS_INVITE = (
    b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
    b"TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
    b'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n'
    b"MaX-fOrWaRdS: 0068\r\n"
    b"Call-ID: wsinv.ndaksdj@192.0.2.1\r\n"
    b"Content-Length   : " + str(len(WS_SDP)).encode() + b"\r\n"
    b"cseq: 0009\r\n  INVITE\r\n"
    b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n"
    b"s :\r\n"
    b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
    b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
    b"Content-Type: application/sdp\r\n"
    b"Route:\r\n <sip:services.example.com;lr;unknownwith=value;unknown-no-value>\r\n"
    b"v:  SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8  ,\r\n"
    b" SIP  /    2.0   / UDP  192.168.255.111   ; branch=\r\n z9hG4bK30239\r\n"
    b'm:"Quoted string \\"\\"" <sip:jdrosen@example.com> ; newparam =\r\n      newvalue ;\r\n'
    b"  secondparam ; q = 0.33\r\n"
    b"\r\n" + WS_SDP
)


def test_whitespace_heavy_request_parses_like_rfc4475_wsinv() -> None:
    msg = parse_message(WS_INVITE)
    assert isinstance(msg, Request)
    assert msg.to.tag == "1918181833n"
    assert msg.from_.display == 'J Rosenberg \\"'
    assert msg.from_.tag == "98asjd8"
    assert msg.cseq == (9, "INVITE")
    assert msg.headers.get("Max-Forwards") == "0068"
    assert msg.headers.get("Subject") == ""
    assert msg.headers.get("NewFangledHeader") == "newfangled value continued newfangled value"
    assert [(v.transport, v.host, v.branch) for v in msg.vias] == [
        ("UDP", "192.0.2.2", "390skdjuw"),
        ("TCP", "spindle.example.com", "z9hG4bK9ikj8"),
        ("UDP", "192.168.255.111", "z9hG4bK30239"),
    ]
    contact = msg.contact
    assert contact is not None
    assert contact.display == 'Quoted string ""'
    assert contact.params == {"newparam": "newvalue", "secondparam": None, "q": "0.33"}
    assert msg.body == WS_SDP
    assert parse_message(msg.serialize()) == msg


def test_escaped_characters_in_the_request_uri_are_kept_verbatim() -> None:
    raw = _request().replace(b"BYE sip:bob@192.0.2.4", b"BYE sip:sips%3Auser%40example.com@example.net")
    msg = parse_message(raw)
    assert isinstance(msg, Request)
    assert msg.uri == "sip:sips%3Auser%40example.com@example.net"
    assert SipUri.parse(msg.uri).user == "sips%3Auser%40example.com"


def test_accessors_return_copies_and_see_header_edits() -> None:
    msg = parse_message(_request())
    msg.from_.params["tag"] = "changed"
    msg.top_via.params["branch"] = "changed"
    assert msg.from_.tag == "1"
    assert msg.branch == "z9hG4bKnashds8"
    msg.headers.set("From", "<sip:alice@a.example>;tag=2")
    msg.headers.set("Via", "SIP/2.0/TCP h2;branch=z9hG4bKnew")
    msg.headers.set("CSeq", "7 BYE")
    assert msg.from_.tag == "2"
    assert msg.branch == "z9hG4bKnew"
    assert msg.top_via.transport == "TCP"
    assert msg.cseq == (7, "BYE")
