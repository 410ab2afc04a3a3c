"""Headers multi-map, Via, NameAddr and CSeq value parsing."""

from __future__ import annotations

import pytest

from bridge.sip.message import Headers, NameAddr, SipParseError, Via, parse_cseq
from bridge.sip.uri import SipUri


def test_header_lookup_is_case_insensitive_and_compact_names_map_to_full_names() -> None:
    h = Headers([("v", "SIP/2.0/UDP a"), ("CALL-ID", "abc"), ("f", "<sip:a@b>"), ("l", "0")])
    assert h.get("Via") == "SIP/2.0/UDP a"
    assert h.get("call-id") == "abc"
    assert h.get("i") == "abc"
    assert h.get("From") == "<sip:a@b>"
    assert "content-length" in h
    assert h.items() == [("Via", "SIP/2.0/UDP a"), ("Call-ID", "abc"), ("From", "<sip:a@b>"), ("Content-Length", "0")]


def test_unknown_header_names_keep_their_spelling() -> None:
    h = Headers([("X-Custom-Thing", "1")])
    assert h.items() == [("X-Custom-Thing", "1")]
    assert h.get("x-custom-thing") == "1"


def test_get_returns_first_raw_value_or_default() -> None:
    h = Headers([("Route", "<sip:p1>, <sip:p2>"), ("Route", "<sip:p3>")])
    assert h.get("Route") == "<sip:p1>, <sip:p2>"
    assert h.get("Record-Route") is None
    assert h.get("Record-Route", "x") == "x"


def test_get_all_splits_list_headers_but_not_commas_in_quotes_or_angle_brackets() -> None:
    h = Headers(
        [
            ("Contact", '"Doe, John" <sip:john@example.com;x=a,b>;q=0.7, <sip:j2@example.com>'),
            ("Contact", "sip:j3@example.com"),
            ("Allow", "INVITE, ACK ,CANCEL,BYE"),
        ]
    )
    assert h.get_all("Contact") == [
        '"Doe, John" <sip:john@example.com;x=a,b>;q=0.7',
        "<sip:j2@example.com>",
        "sip:j3@example.com",
    ]
    assert h.get_all("Allow") == ["INVITE", "ACK", "CANCEL", "BYE"]


def test_get_all_handles_escaped_quotes_inside_display_names() -> None:
    h = Headers([("Contact", r'"a \"b, c\" d" <sip:x@y>, <sip:z@w>')])
    assert h.get_all("Contact") == [r'"a \"b, c\" d" <sip:x@y>', "<sip:z@w>"]


def test_authentication_and_date_values_are_not_split_on_commas() -> None:
    challenge = 'Digest realm="x", nonce="y", qop="auth,auth-int"'
    h = Headers([("WWW-Authenticate", challenge), ("Date", "Sat, 13 Nov 2010 23:29:00 GMT")])
    assert h.get_all("WWW-Authenticate") == [challenge]
    assert h.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]


def test_prepend_puts_a_new_top_via_before_existing_vias() -> None:
    h = Headers([("Max-Forwards", "70"), ("Via", "SIP/2.0/UDP b"), ("Via", "SIP/2.0/UDP c")])
    h.prepend("Via", "SIP/2.0/UDP a")
    assert h.get_all("Via") == ["SIP/2.0/UDP a", "SIP/2.0/UDP b", "SIP/2.0/UDP c"]
    assert h.items()[0] == ("Max-Forwards", "70")
    h.prepend("Route", "<sip:p>")
    assert h.items()[0] == ("Route", "<sip:p>")


def test_set_replaces_all_values_at_the_position_of_the_first() -> None:
    h = Headers([("A-B", "1"), ("Contact", "<sip:a@b>"), ("X-Other", "2"), ("Contact", "<sip:c@d>")])
    h.set("contact", "<sip:new@host>")
    assert h.items() == [("A-B", "1"), ("Contact", "<sip:new@host>"), ("X-Other", "2")]
    h.set("Expires", "60")
    assert h.items()[-1] == ("Expires", "60")


def test_remove_deletes_every_value_of_a_name() -> None:
    h = Headers([("Route", "<sip:1>"), ("To", "<sip:t@x>"), ("route", "<sip:2>")])
    h.remove("ROUTE")
    assert h.items() == [("To", "<sip:t@x>")]
    h.remove("Not-There")
    assert len(h) == 1


def test_copy_is_independent_and_equal() -> None:
    h = Headers([("To", "<sip:t@x>")])
    clone = h.copy()
    assert clone == h
    clone.add("From", "<sip:f@x>")
    assert clone != h
    assert len(h) == 1


def test_equality_ignores_name_spelling_but_not_order() -> None:
    assert Headers([("i", "x"), ("CSeq", "1 BYE")]) == Headers([("Call-ID", "x"), ("cseq", "1 BYE")])
    assert Headers([("CSeq", "1 BYE"), ("i", "x")]) != Headers([("Call-ID", "x"), ("CSeq", "1 BYE")])


def test_adding_a_value_with_a_newline_is_refused_to_prevent_header_injection() -> None:
    h = Headers()
    with pytest.raises(ValueError):
        h.add("Subject", "hi\r\nVia: SIP/2.0/UDP evil")
    with pytest.raises(ValueError):
        h.set("Subject", "hi\nx")
    with pytest.raises(SipParseError):
        h.add("Bad Name", "x")


def test_via_parse_reads_transport_host_port_and_params_with_bare_rport() -> None:
    via = Via.parse("SIP/2.0/udp pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;rport;received=192.0.2.1")
    assert via.transport == "UDP"
    assert via.host == "pc33.atlanta.com"
    assert via.port == 5066
    assert via.params == {"branch": "z9hG4bK776asdhds", "rport": None, "received": "192.0.2.1"}
    assert via.branch == "z9hG4bK776asdhds"
    assert via.rport is None
    assert via.received == "192.0.2.1"
    assert str(via) == "SIP/2.0/UDP pc33.atlanta.com:5066;branch=z9hG4bK776asdhds;rport;received=192.0.2.1"


def test_via_accepts_whitespace_around_slashes_colons_and_semicolons() -> None:
    via = Via.parse("SIP / 2.0 / TCP   host.example : 5070 ; branch = z9hG4bKabc ; rport=5071")
    assert (via.transport, via.host, via.port) == ("TCP", "host.example", 5070)
    assert via.params == {"branch": "z9hG4bKabc", "rport": "5071"}
    assert via.rport == 5071


def test_via_with_ipv6_sent_by() -> None:
    via = Via.parse("SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bKx")
    assert via.host == "2001:db8::9"
    assert via.port == 5061
    assert str(via) == "SIP/2.0/TLS [2001:db8::9]:5061;branch=z9hG4bKx"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "SIP/2.0/UDP",
        "SIP/2.0 host",
        "HTTP/1.1/TCP host",
        "SIP/3.0/UDP host",
        "SIP/2.0/UDP host:abc",
        "SIP/2.0/UDP [::1",
    ],
)
def test_malformed_via_raises_sip_parse_error(value: str) -> None:
    with pytest.raises(SipParseError):
        Via.parse(value)


def test_name_addr_with_quoted_display_name_and_tag() -> None:
    na = NameAddr.parse('"Alice \\"A\\", Smith" <sip:alice@atlanta.com;transport=tcp>;tag=1928301774;x')
    assert na.display == 'Alice "A", Smith'
    assert na.uri == SipUri.parse("sip:alice@atlanta.com;transport=tcp")
    assert na.params == {"tag": "1928301774", "x": None}
    assert na.tag == "1928301774"
    assert NameAddr.parse(str(na)) == na


def test_name_addr_with_token_display_name() -> None:
    na = NameAddr.parse("Bob  Smith <sip:bob@biloxi.com>")
    assert na.display == "Bob Smith"
    assert na.params == {}
    assert na.tag is None


def test_addr_spec_form_parameters_belong_to_the_header_not_the_uri() -> None:
    na = NameAddr.parse("sip:+12125551212@server.phone2net.com;tag=887s")
    assert na.uri == SipUri.parse("sip:+12125551212@server.phone2net.com")
    assert na.tag == "887s"
    assert na.display is None


def test_name_addr_always_prints_the_angle_bracket_form() -> None:
    na = NameAddr.parse("sip:bob@biloxi.com;tag=a6c85cf")
    assert str(na) == "<sip:bob@biloxi.com>;tag=a6c85cf"
    na.display = "Bob"
    assert str(na) == '"Bob" <sip:bob@biloxi.com>;tag=a6c85cf'


def test_display_name_with_newline_or_quote_cannot_inject_into_the_header() -> None:
    na = NameAddr(SipUri.parse("sip:a@b"), display='Eve"\r\nVia: x')
    text = str(na)
    assert "\r" not in text and "\n" not in text
    assert NameAddr.parse(text).display == 'Eve"  Via: x'


def test_wildcard_contact_is_not_an_address() -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse("*")


@pytest.mark.parametrize(
    "value",
    ['"unterminated <sip:a@b>', "<sip:a@b", "<sip:a@b> junk", '"x" sip:a@b', "Bad<Name <sip:a@b>", "<http://x>", ""],
)
def test_malformed_name_addr_raises_sip_parse_error(value: str) -> None:
    with pytest.raises(SipParseError):
        NameAddr.parse(value)


def test_cseq_parse() -> None:
    assert parse_cseq("4711 INVITE") == (4711, "INVITE")
    assert parse_cseq("  1\tBYE ") == (1, "BYE")


@pytest.mark.parametrize(
    "value", ["", "INVITE", "1", "x INVITE", "1 INVITE extra", "4294967296 BYE", "-1 BYE", "1 BY<E"]
)
def test_malformed_cseq_raises_sip_parse_error(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_cseq(value)


def test_unquoted_utf8_display_name_is_accepted() -> None:
    na = NameAddr.parse("Jürgen Müller <sip:j@example.de>;tag=9")
    assert na.display == "Jürgen Müller"
    assert na.tag == "9"
    assert NameAddr.parse(str(na)) == na
