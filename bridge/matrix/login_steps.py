"""The bot's ``login`` conversation as a pure step machine: no I/O, no clock of its own (``now`` is passed in).

One conversation per (room, user). Steps: the account (SIP URI or user@domain), the password, an optional outbound
proxy, an optional transport. ``cancel`` aborts at any step; a conversation left alone for ``TIMEOUT_S`` is gone
(the next message is an ordinary command again). The bot front end (matrix/account_commands.py) feeds messages in,
redacts the message of the password step, and runs the login when the machine says it is complete.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from bridge.calls.account_api import LoginRequest

TIMEOUT_S = 300.0
STEPS = ("uri", "password", "proxy", "transport")
TRANSPORTS = ("udp", "tcp", "tls")
SKIP_WORDS = frozenset({"-", "none", "no", "skip", "default"})
CANCEL_WORDS = frozenset({"cancel", "!cancel", "abort", "stop"})

# user@host[:port] with an optional sip:/sips: scheme; the host is a name, IPv4 or [IPv6]
_URI_RE = re.compile(
    r"^(?:(sips?):)?([^@\s:;]+)@((?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$"
)
_PROXY_RE = re.compile(
    r"^(?:(sips?):)?((?:[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)|\[[0-9A-Fa-f:.]+\])(?::(\d{1,5}))?$"
)

PROMPTS = {
    "uri": "Log in to your SIP account. Send your SIP address (e.g. sip:alice@pbx.example.com or "
           "alice@pbx.example.com), or `cancel`.",
    "password": "Now send the password of {uri}. I will delete that message right away. (`cancel` aborts.)",
    "proxy": "Outbound proxy to send everything through (e.g. sip:proxy.example.com:5060), or `skip` to use "
             "the account's domain.",
    "transport": "Transport: `udp`, `tcp` or `tls`, or `skip` for the default ({default}).",
}


def normalize_uri(text: str) -> str | None:
    """``sip:user@host[:port]`` (or ``sips:``) from what a user typed; None if it is not an account address."""
    m = _URI_RE.match(text.strip())
    if m is None:
        return None
    scheme, user, host, port = m.groups()
    if port is not None and not 0 < int(port) < 65536:
        return None
    return f"{scheme or 'sip'}:{user}@{host}" + (f":{port}" if port else "")


def normalize_proxy(text: str) -> str | None:
    """``sip:host[:port]`` from what a user typed; None if it is not a host."""
    m = _PROXY_RE.match(text.strip())
    if m is None:
        return None
    scheme, host, port = m.groups()
    if port is not None and not 0 < int(port) < 65536:
        return None
    return f"{scheme or 'sip'}:{host}" + (f":{port}" if port else "")


@dataclass(frozen=True)
class Conversation:
    """Where one user's login stands. ``password`` is held only until the login has been handed off."""

    mxid: str
    step: str
    expires_at: float
    uri: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a repr, so never in a log line
    proxy: str | None = None
    transport: str | None = None

    def request(self) -> LoginRequest:
        assert self.uri is not None and self.password is not None
        return LoginRequest(mxid=self.mxid, uri=self.uri, password=self.password,
                            outbound_proxy=self.proxy, transport=self.transport)

    def prompt(self) -> str:
        default = "tls" if (self.uri or "").startswith("sips:") else "udp"
        return PROMPTS[self.step].format(uri=self.uri, default=default)


@dataclass(frozen=True)
class Outcome:
    """What the front end does after one message.

    ``reply``: text to send. ``conversation``: the new state (None = the conversation is over). ``secret``: the
    message held a secret and must be redacted. ``request``: the login is complete: run it."""

    reply: str
    conversation: Conversation | None
    secret: bool = False
    request: LoginRequest | None = None


def start(mxid: str, now: float, uri_text: str = "") -> Outcome:
    """``login`` (optionally ``login <address>``): the first question, or the second if the address came along."""
    conv = Conversation(mxid=mxid, step="uri", expires_at=now + TIMEOUT_S)
    if uri_text.strip():
        return advance(conv, uri_text, now)
    return Outcome(conv.prompt(), conv)


def expired(conv: Conversation, now: float) -> bool:
    return now >= conv.expires_at


def advance(conv: Conversation, text: str, now: float) -> Outcome:
    """Feed one message of the user into the conversation."""
    word = text.strip()
    secret = conv.step == "password"  # whatever arrives at the password step is treated as a secret
    if word.lower() in CANCEL_WORDS:
        return Outcome("Login cancelled. Nothing was stored.", None, secret=False)
    conv = replace(conv, expires_at=now + TIMEOUT_S)
    if conv.step == "uri":
        uri = normalize_uri(word)
        if uri is None:
            return Outcome(f"{word[:100]!r} is not a SIP address. Send it as sip:alice@pbx.example.com or "
                           "alice@pbx.example.com, or `cancel`.", conv)
        nxt = replace(conv, step="password", uri=uri)
        return Outcome(nxt.prompt(), nxt)
    if conv.step == "password":
        if not text:
            return Outcome("The password cannot be empty. Send it again, or `cancel`.", conv, secret=secret)
        # The password is taken as typed (only the trailing newline a client may add is dropped).
        nxt = replace(conv, step="proxy", password=text.rstrip("\r\n"))
        return Outcome(nxt.prompt(), nxt, secret=secret)
    if conv.step == "proxy":
        if word.lower() in SKIP_WORDS:
            proxy = None
        else:
            proxy = normalize_proxy(word)
            if proxy is None:
                return Outcome(f"{word[:100]!r} is not a proxy address (e.g. sip:proxy.example.com:5060). "
                               "Send it again, `skip`, or `cancel`.", conv)
        nxt = replace(conv, step="transport", proxy=proxy)
        return Outcome(nxt.prompt(), nxt)
    # transport
    lowered = word.lower()
    if lowered in SKIP_WORDS:
        transport = None
    elif lowered in TRANSPORTS:
        transport = lowered
    else:
        return Outcome("Send `udp`, `tcp`, `tls` or `skip` (or `cancel`).", conv)
    done = replace(conv, transport=transport)
    return Outcome(f"Logging in as {done.uri}…", None, request=done.request())


@dataclass
class Conversations:
    """The open conversations, keyed by (room, user). Expired ones are dropped when looked at."""

    open: dict[tuple[str, str], Conversation] = field(default_factory=dict)

    def get(self, room_id: str, mxid: str, now: float) -> Conversation | None:
        key = (room_id, mxid)
        conv = self.open.get(key)
        if conv is not None and expired(conv, now):
            del self.open[key]
            return None
        return conv

    def put(self, room_id: str, mxid: str, conv: Conversation | None) -> None:
        if conv is None:
            self.open.pop((room_id, mxid), None)
        else:
            self.open[(room_id, mxid)] = conv

    def prune(self, now: float) -> None:
        for key in [k for k, c in self.open.items() if expired(c, now)]:
            del self.open[key]
