"""SipUri: parsing RFC 3261 section 19.1 URIs and printing them back."""

from __future__ import annotations

import pytest

from bridge.sip.message import SipParseError
from bridge.sip.uri import SipUri, SipUriError


def test_full_sip_uri_is_split_into_fields() -> None:
    uri = SipUri.parse("sip:alice:secretword@atlanta.com:5070;transport=TCP;lr?subject=project%20x&priority=urgent")
    assert uri.scheme == "sip"
    assert uri.user == "alice"
    assert uri.password == "secretword"
    assert uri.host == "atlanta.com"
    assert uri.port == 5070
    assert uri.params == {"transport": "TCP", "lr": None}
    assert uri.headers == {"subject": "project%20x", "priority": "urgent"}


@pytest.mark.parametrize(
    "text",
    [
        "sip:alice@atlanta.com",
        "sip:atlanta.com",
        "sips:alice@atlanta.com:5061",
        "sip:alice:pw@atlanta.com;maddr=239.255.255.1;ttl=15",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sip:alice;day=tuesday@atlanta.com",
        "sip:[2001:db8::10]:5070;transport=tcp",
        "sip:bob@192.0.2.4;lr",
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:%61lice@atlanta.com;transport=TCP",
        "tel:+1-201-555-0123",
        "tel:7042;phone-context=example.com",
    ],
)
def test_uri_text_round_trips(text: str) -> None:
    assert str(SipUri.parse(text)) == text


def test_ipv6_host_is_stored_without_brackets_and_printed_with_them() -> None:
    uri = SipUri.parse("sip:bob@[::1]:5080")
    assert uri.host == "::1"
    assert uri.port == 5080
    assert uri.host_port() == ("::1", 5080)
    assert str(SipUri(user="bob", host="2001:db8::1")) == "sip:bob@[2001:db8::1]"


def test_user_part_may_contain_semicolons_and_question_marks_before_the_at_sign() -> None:
    uri = SipUri.parse("sip:alice;day=tuesday@atlanta.com;lr")
    assert uri.user == "alice;day=tuesday"
    assert uri.host == "atlanta.com"
    assert uri.params == {"lr": None}


def test_question_mark_in_the_user_part_is_not_taken_for_uri_headers() -> None:
    uri = SipUri.parse("sip:who?am@host?h=v")
    assert uri.user == "who?am"
    assert uri.headers == {"h": "v"}


def test_scheme_and_param_names_are_lower_cased_values_kept() -> None:
    uri = SipUri.parse("SIP:Bob@Biloxi.COM;Transport=TCP")
    assert uri.scheme == "sip"
    assert uri.host == "Biloxi.COM"
    assert uri.params == {"transport": "TCP"}
    assert uri.transport == "tcp"


def test_transport_defaults_udp_for_sip_and_tls_for_sips() -> None:
    assert SipUri.parse("sip:a@b").transport == "udp"
    assert SipUri.parse("sips:a@b").transport == "tls"
    assert SipUri.parse("sip:a@b;transport=tls").transport == "tls"


def test_host_port_defaults_to_5060_or_5061_for_tls() -> None:
    assert SipUri.parse("sip:a@example.org").host_port() == ("example.org", 5060)
    assert SipUri.parse("sips:a@example.org").host_port() == ("example.org", 5061)
    assert SipUri.parse("sip:a@example.org;transport=tls").host_port() == ("example.org", 5061)
    assert SipUri.parse("sip:a@example.org:7000;transport=tls").host_port() == ("example.org", 7000)


def test_tel_uri_keeps_number_in_user_and_has_no_host() -> None:
    uri = SipUri.parse("tel:+44-20-7946-0000;ext=12")
    assert uri.scheme == "tel"
    assert uri.user == "+44-20-7946-0000"
    assert uri.params == {"ext": "12"}
    with pytest.raises(SipUriError):
        uri.host_port()


def test_aor_drops_port_params_and_headers() -> None:
    assert SipUri.parse("sip:alice@[::1]:5070;transport=tcp?x=y").aor == "sip:alice@[::1]"
    assert SipUri.parse("sips:example.org").aor == "sips:example.org"


def test_copy_is_independent_of_the_original() -> None:
    uri = SipUri.parse("sip:a@b;lr")
    clone = uri.copy()
    clone.params["transport"] = "tcp"
    assert uri.params == {"lr": None}
    assert clone == SipUri.parse("sip:a@b;lr;transport=tcp")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice@atlanta.com",
        "http://example.com/",
        "sip:",
        "sip:alice@",
        "sip:@host",
        "sip:a@host:",
        "sip:a@host:99999",
        "sip:a@host:12ab",
        "sip:a@[::1",
        "sip:a@[zz::1]",
        "sip:a@[::1]x",
        "sip:a b@host",
        "sip:a@ho<st",
        'sip:a@host;x="y"',
        "sip:a@h\u00e9st",
        "sip:a@host;=v",
        "sip:a@host?novalue",
        "tel:",
        "tel:xyz;x",
        "sip:a@-bad-",
        "sip:a@host\r\nVia: injected",
    ],
)
def test_malformed_uri_raises_sip_uri_error(text: str) -> None:
    with pytest.raises(SipUriError):
        SipUri.parse(text)


def test_sip_uri_error_is_a_sip_parse_error() -> None:
    with pytest.raises(SipParseError):
        SipUri.parse("mailto:x@y")


def test_overlong_uri_is_refused() -> None:
    with pytest.raises(SipUriError):
        SipUri.parse("sip:" + "a" * 5000 + "@host")
