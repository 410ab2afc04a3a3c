"""Digest authentication against the RFC 2617 / RFC 7616 worked examples, and the server-side check."""

from __future__ import annotations

import hashlib

import pytest

from bridge.sip.digest import (
    Challenge,
    Credentials,
    DigestError,
    build_authorization,
    make_challenge,
    parse_authorization,
    parse_challenge,
    verify_authorization,
)
from bridge.sip.message import SipParseError

RFC7616_CHALLENGE = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def test_parse_challenge_reads_all_fields() -> None:
    ch = parse_challenge(
        'Digest realm="atlanta.com", domain="sip:ss1.carrier.com", qop="auth,auth-int", '
        'nonce="f84f1cec41e6cbe5aea9c8e88d359", opaque="", stale=TRUE, algorithm=MD5'
    )
    assert ch == Challenge(
        realm="atlanta.com",
        nonce="f84f1cec41e6cbe5aea9c8e88d359",
        opaque="",
        algorithm="MD5",
        qop=["auth", "auth-int"],
        stale=True,
    )


def test_parse_challenge_defaults_to_md5_without_qop() -> None:
    ch = parse_challenge('digest nonce="n", realm="r"')
    assert (ch.algorithm, ch.qop, ch.stale, ch.opaque) == ("MD5", [], False, None)


def test_quoted_values_may_contain_commas_and_escaped_quotes() -> None:
    ch = parse_challenge(r'Digest realm="a, \"b\"", nonce="x,y"')
    assert ch.realm == 'a, "b"'
    assert ch.nonce == "x,y"


@pytest.mark.parametrize(
    "value",
    ["", 'Basic realm="x"', 'Digest realm="x"', 'Digest nonce="x"', 'Digest realm="x, nonce="y', "Digest realm"],
)
def test_unusable_challenges_raise_digest_error(value: str) -> None:
    with pytest.raises(DigestError):
        parse_challenge(value)
    assert issubclass(DigestError, SipParseError)


def test_rfc2617_section_3_5_example_response() -> None:
    ch = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    value = build_authorization(
        ch, method="GET", uri="/dir/index.html", credentials=Credentials("Mufasa", "Circle Of Life"), cnonce="0a4f113b"
    )
    params = parse_authorization(value)
    assert params["response"] == "6629fae49393a05397450978507c4ef1"
    assert params["qop"] == "auth"
    assert params["nc"] == "00000001"
    assert params["cnonce"] == "0a4f113b"
    assert params["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"
    assert params["username"] == "Mufasa"
    assert params["uri"] == "/dir/index.html"


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_section_3_9_1_examples(algorithm: str, expected: str) -> None:
    ch = parse_challenge(RFC7616_CHALLENGE.format(alg=algorithm))
    value = build_authorization(
        ch,
        method="GET",
        uri="/dir/index.html",
        credentials=Credentials("Mufasa", "Circle of Life"),
        cnonce=RFC7616_CNONCE,
    )
    params = parse_authorization(value)
    assert params["response"] == expected
    assert params["algorithm"] == algorithm


def test_no_qop_challenge_gets_the_rfc2069_response_without_cnonce() -> None:
    ch = Challenge(realm="r", nonce="n")
    params = parse_authorization(
        build_authorization(ch, method="REGISTER", uri="sip:r", credentials=Credentials("u", "p"))
    )
    assert "qop" not in params and "cnonce" not in params and "nc" not in params
    ha1 = hashlib.md5(b"u:r:p").hexdigest()
    ha2 = hashlib.md5(b"REGISTER:sip:r").hexdigest()
    assert params["response"] == hashlib.md5(f"{ha1}:n:{ha2}".encode()).hexdigest()


def test_nonce_count_is_written_as_eight_hex_digits() -> None:
    ch = Challenge(realm="r", nonce="n", qop=["auth"])
    value = build_authorization(ch, method="INVITE", uri="sip:b@r", credentials=Credentials("u", "p"), nc=26)
    assert parse_authorization(value)["nc"] == "0000001a"


def test_credentials_for_another_realm_are_not_used() -> None:
    with pytest.raises(DigestError):
        build_authorization(
            Challenge(realm="evil.example", nonce="n"),
            method="INVITE",
            uri="sip:x",
            credentials=Credentials("u", "p", realm="good.example"),
        )


def test_unsupported_algorithm_is_refused() -> None:
    with pytest.raises(DigestError):
        build_authorization(
            Challenge(realm="r", nonce="n", algorithm="AKAv1-MD5"),
            method="X",
            uri="sip:x",
            credentials=Credentials("u", "p"),
        )


def test_password_never_appears_in_repr_or_header() -> None:
    creds = Credentials("alice", "hunter2-secret")
    assert "hunter2" not in repr(creds)
    value = build_authorization(
        Challenge(realm="r", nonce="n", qop=["auth"]), method="X", uri="sip:x", credentials=creds
    )
    assert "hunter2" not in value


def _verify(
    value: str, password: str = "secret", *, nonce_ok: bool = True, request_uri: str | None = None
) -> str | None:
    return verify_authorization(
        value,
        method="INVITE",
        password_for=lambda user, realm: password if (user, realm) == ("alice", "bridge.test") else None,
        nonce_ok=lambda nonce: nonce_ok,
        request_uri=request_uri,
    )


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256", "MD5-sess"])
@pytest.mark.parametrize("qop", [True, False])
def test_server_accepts_what_the_client_builds_for_its_challenge(algorithm: str, qop: bool) -> None:
    header, nonce = make_challenge("bridge.test", algorithm=algorithm, qop=qop)
    ch = parse_challenge(header)
    assert ch.nonce == nonce
    value = build_authorization(
        ch, method="INVITE", uri="sip:bob@bridge.test", credentials=Credentials("alice", "secret")
    )
    assert _verify(value, request_uri="sip:bob@bridge.test") == "alice"


def test_server_rejects_wrong_password_unknown_user_refused_nonce_and_other_uri() -> None:
    ch = parse_challenge(make_challenge("bridge.test")[0])
    good = build_authorization(
        ch, method="INVITE", uri="sip:bob@bridge.test", credentials=Credentials("alice", "secret")
    )
    assert _verify(good) == "alice"
    assert _verify(good, password="other") is None
    assert _verify(good, nonce_ok=False) is None
    assert _verify(good, request_uri="sip:carol@bridge.test") is None
    mallory = build_authorization(
        ch, method="INVITE", uri="sip:bob@bridge.test", credentials=Credentials("mallory", "secret")
    )
    assert _verify(mallory) is None


def test_server_rejects_a_response_for_another_method() -> None:
    ch = parse_challenge(make_challenge("bridge.test")[0])
    value = build_authorization(ch, method="BYE", uri="sip:b@bridge.test", credentials=Credentials("alice", "secret"))
    assert _verify(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "Basic YWxpY2U6c2VjcmV0",
        'Digest username="alice"',
        'Digest username="alice", realm="bridge.test", nonce="n", uri="sip:x", response="0", qop=auth-int, '
        'nc=00000001, cnonce="c"',
        'Digest username="alice", realm="bridge.test", nonce="n", uri="sip:x", response="0", qop=auth',
        'Digest username="alice", realm="bridge.test", nonce="n", uri="sip:x", response="0", algorithm=FOO',
        'Digest username="alice, realm=',
    ],
)
def test_malformed_authorization_is_rejected_not_raised(value: str) -> None:
    assert _verify(value) is None


def test_stale_flag_is_emitted_and_parsed() -> None:
    header, _ = make_challenge("r", stale=True)
    assert parse_challenge(header).stale is True
