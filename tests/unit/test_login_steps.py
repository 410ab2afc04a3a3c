"""The bot's login conversation (bridge/matrix/login_steps.py): steps, validation, cancel, timeout, secrets."""

from __future__ import annotations

import pytest

from bridge.calls.account_api import LoginRequest
from bridge.matrix import login_steps
from bridge.matrix.login_steps import TIMEOUT_S, Conversations, advance, normalize_proxy, normalize_uri, start

ALICE = "@alice:example.org"


def run(*messages: str, now: float = 0.0) -> list[login_steps.Outcome]:
    out = [start(ALICE, now)]
    for text in messages:
        conv = out[-1].conversation
        assert conv is not None, f"conversation ended before {text!r}"
        out.append(advance(conv, text, now))
    return out


def test_full_conversation_yields_the_login_request_and_marks_only_the_password_secret() -> None:
    out = run("alice@pbx.example.com", "s3cret pass", "sip:proxy.example.com:5070", "TCP")
    assert [o.secret for o in out] == [False, False, True, False, False]
    assert out[-1].conversation is None
    assert out[-1].request == LoginRequest(mxid=ALICE, uri="sip:alice@pbx.example.com", password="s3cret pass",
                                           outbound_proxy="sip:proxy.example.com:5070", transport="tcp")
    assert "s3cret" not in " ".join(o.reply for o in out)


def test_skipping_proxy_and_transport_leaves_them_to_the_service() -> None:
    request = run("sips:bob@10.0.0.5:5061", "pw", "skip", "-")[-1].request
    assert request is not None
    assert (request.uri, request.outbound_proxy, request.transport) == ("sips:bob@10.0.0.5:5061", None, None)


def test_login_with_the_address_on_the_command_line_asks_for_the_password_first() -> None:
    out = start(ALICE, 0.0, "sip:alice@pbx.example.com")
    assert out.conversation is not None and out.conversation.step == "password"
    assert "password" in out.reply and "sip:alice@pbx.example.com" in out.reply


def test_a_bad_address_is_asked_again() -> None:
    out = run("not an address")[-1]
    assert out.conversation is not None and out.conversation.step == "uri"
    assert "is not a SIP address" in out.reply


def test_a_bad_proxy_or_transport_is_asked_again() -> None:
    assert run("a@b.c", "pw", "http://x y")[-1].conversation.step == "proxy"  # type: ignore[union-attr]
    assert run("a@b.c", "pw", "skip", "sctp")[-1].conversation.step == "transport"  # type: ignore[union-attr]


@pytest.mark.parametrize("at_step", [0, 1, 2, 3])
def test_cancel_ends_the_conversation_at_any_step(at_step: int) -> None:
    answers = ["a@b.c", "pw", "skip", "udp"][:at_step]
    out = run(*answers, "cancel")[-1]
    assert out.conversation is None and out.request is None and "cancelled" in out.reply
    assert not out.secret  # "cancel" at the password step is a word, not a password


def test_the_password_is_never_in_a_repr() -> None:
    conv = run("a@b.c", "hunter2-secret")[-1].conversation
    assert conv is not None and conv.password == "hunter2-secret"
    assert "hunter2" not in repr(conv)


def test_conversations_time_out() -> None:
    convs = Conversations()
    first = start(ALICE, 100.0)
    convs.put("!room", ALICE, first.conversation)
    assert convs.get("!room", ALICE, 100.0 + TIMEOUT_S - 1) is not None
    assert convs.get("!other", ALICE, 100.0) is None  # per (room, user)
    assert convs.get("!room", ALICE, 100.0 + TIMEOUT_S) is None
    assert convs.open == {}


def test_each_answer_extends_the_deadline() -> None:
    out = start(ALICE, 0.0)
    assert out.conversation is not None
    later = advance(out.conversation, "a@b.c", TIMEOUT_S - 1)
    assert later.conversation is not None and later.conversation.expires_at == TIMEOUT_S - 1 + TIMEOUT_S


@pytest.mark.parametrize(("text", "expected"), [
    ("alice@pbx.example.com", "sip:alice@pbx.example.com"),
    ("sip:alice@pbx.example.com:5080", "sip:alice@pbx.example.com:5080"),
    (" sips:1001@[2001:db8::1] ", "sips:1001@[2001:db8::1]"),
    ("alice", None), ("sip:@host", None), ("a@b:99999", None), ("a b@c", None), ("http://a@b", None),
])
def test_normalize_uri(text: str, expected: str | None) -> None:
    assert normalize_uri(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("proxy.example.com", "sip:proxy.example.com"), ("sip:10.1.2.3:5070", "sip:10.1.2.3:5070"),
    ("u@host", None), ("", None),
])
def test_normalize_proxy(text: str, expected: str | None) -> None:
    assert normalize_proxy(text) == expected
