"""Caller ID pieces without sockets: config keys, PAI parsing and trust, Privacy, outbound headers, MSC3086 content;
thirdparty lookups and the MatrixRTC decline/notice bookkeeping."""

from __future__ import annotations

import asyncio
import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.call.identity import ASSERTED_IDENTITY_TYPES as ASSERTED_TYPES
from bridge.call.identity import Identity, outbound_identity_headers, privacy_withholds_id
from bridge.calls.caller_id import asserted_identity
from bridge.config import CallerId, ConfigError, DialplanConfig, build_registration, parse_config
from bridge.matrix.rtc import DECLINE_TYPE, RtcCalls
from bridge.sip.headers import Headers

EXAMPLE = Path(__file__).resolve().parents[2] / "bridge" / "example-config.yaml"
PLAN = DialplanConfig()


def config_with(**bridge: Any) -> dict[str, Any]:
    data = copy.deepcopy(yaml.safe_load(EXAMPLE.read_text()))
    data["bridge"].update(bridge)
    return data


def test_caller_ids_accept_a_number_or_a_mapping_and_identity_header_a_choice() -> None:
    data = config_with(caller_ids={"@alice:example.org": "+15550001111",
                                   "@bob:example.org": {"number": 15550002222, "withhold": True},
                                   "@carol:example.org": {"withhold": True}})
    data["sip"]["trunk"]["identity_header"] = "PPI"
    cfg = parse_config(data)
    assert cfg.bridge.caller_ids == {"@alice:example.org": CallerId("15550001111"),
                                     "@bob:example.org": CallerId("15550002222", True),
                                     "@carol:example.org": CallerId(None, True)}
    assert cfg.sip.trunk.identity_header == "ppi"


@pytest.mark.parametrize(("value", "key"), [
    ({"alice": "+15550001111"}, "bridge.caller_ids.alice"),
    ({"@alice:example.org": "+0123"}, "bridge.caller_ids.@alice:example.org.number"),
    ({"@alice:example.org": {"number": "+15550001111", "colour": "red"}}, "bridge.caller_ids.@alice:example.org"),
    (["@alice:example.org"], "bridge.caller_ids"),
])
def test_bad_caller_ids_name_the_key(value: Any, key: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(config_with(caller_ids=value))
    assert err.value.key.startswith(key)


def test_registration_lists_both_pstn_protocols() -> None:
    reg = build_registration(parse_config(config_with()), "a", "h")
    assert reg["protocols"] == ["m.protocol.pstn", "im.vector.protocol.pstn"]


def test_pai_gives_the_first_value_naming_a_number() -> None:
    h = Headers([("P-Asserted-Identity", '"Front Desk" <sip:+15553334444@pbx>, <tel:+15553334444>')])
    assert asserted_identity(h, PLAN) == Identity("15553334444", "Front Desk")
    h = Headers([("P-Asserted-Identity", "<sip:reception@pbx>"), ("P-Asserted-Identity", "<tel:+442079460000>")])
    assert asserted_identity(h, PLAN) == Identity("442079460000", None)


@pytest.mark.parametrize("headers", [
    [],
    [("P-Asserted-Identity", "<sip:anonymous@anonymous.invalid>")],
    [("P-Asserted-Identity", "<sip:+15553334444@pbx>"), ("Privacy", "id")],
    [("P-Asserted-Identity", "<sip:+15553334444@pbx>"), ("Privacy", "header;critical")],
    [("P-Asserted-Identity", "garbage <<<")],
])
def test_no_identity_when_absent_anonymous_withheld_or_unreadable(headers: list[tuple[str, str]]) -> None:
    assert asserted_identity(Headers(headers), PLAN) is None


def test_privacy_none_does_not_withhold() -> None:
    assert not privacy_withholds_id("none") and not privacy_withholds_id(None) and privacy_withholds_id("ID")


def test_outbound_headers_follow_the_mode_and_only_the_configured_number() -> None:
    alice = CallerId("15550001111")
    assert outbound_identity_headers("pai", alice, "trunk.example") == [
        ("P-Asserted-Identity", "<sip:+15550001111@trunk.example;user=phone>")]
    assert outbound_identity_headers("ppi", CallerId("15550001111", True), "t") == [
        ("P-Preferred-Identity", "<sip:+15550001111@t;user=phone>"), ("Privacy", "id")]
    assert outbound_identity_headers("none", alice, "t") == []
    assert outbound_identity_headers("pai", None, "t") == []  # a user without a configured number: nothing


class _Sender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def send_call_event(self, room_id: str, number: str | None, event_type: str, content: dict[str, Any]) -> str:
        self.sent.append((event_type, content))
        return "$x"

    def send_notice(self, room_id: str, number: str | None, text: str) -> str:
        self.sent.append(("notice", {"body": text}))
        return "$n"


def test_rtc_ring_is_declined_each_time_but_explained_once_per_call() -> None:
    sender = _Sender()
    rtc = RtcCalls(sender)

    def member(key: str, content: dict[str, Any]) -> dict[str, Any]:
        return {"room_id": "!r", "type": "org.matrix.msc3401.call.member", "state_key": key, "content": content}

    async def run() -> None:
        await rtc.on_event(member("_@a:x_D1", {"application": "m.call"}), "1555")
        await rtc.on_event({"room_id": "!r", "type": "m.rtc.notification", "event_id": "$ring",
                            "content": {"notification_type": "ring"}}, "1555")
        await rtc.on_event(member("_@a:x_D2", {"application": "m.call"}), "1555")
        await rtc.on_event(member("@a:x", {"memberships": []}), "1555")  # legacy empty form: not a member
        await rtc.on_event(member("_@a:x_D1", {}), "1555")
        await rtc.on_event(member("_@a:x_D2", {}), "1555")
        await rtc.on_event(member("_@a:x_D1", {"application": "m.call"}), "1555")

    asyncio.run(run())
    kinds = [kind for kind, _ in sender.sent]
    assert kinds == ["notice", DECLINE_TYPE, "notice"]
    assert sender.sent[1][1]["m.relates_to"] == {"rel_type": "m.reference", "event_id": "$ring"}


def test_trunk_answer_identity_is_believed_only_from_a_trusted_source() -> None:
    from types import SimpleNamespace
    from typing import cast

    from bridge.call.policy import TrustedSources
    from bridge.calls.caller_id import CallerIdAnnouncer, CallerIdContext, CallerIdSettings
    from bridge.logs import call_logger
    from bridge.sip.message import Response

    headers = Headers([("P-Asserted-Identity", "<sip:+15553334444@pbx>")])

    def announced(source: tuple[str, int] | None, trunk_trusted: bool) -> list[str]:
        sent: list[str] = []

        async def send(event_type: str, content: dict[str, Any]) -> None:
            sent.append(event_type)

        ctx = CallerIdContext(CallerIdSettings(trunk_trusted=trunk_trusted), PLAN,
                              TrustedSources(["10.0.0.0/8"]).allows)
        announcer = CallerIdAnnouncer(ctx, call_id="c", party_id="p", format_number=str, send=send,
                                      log=call_logger(__name__, "c"))
        asyncio.run(announcer.from_response(cast(Response, SimpleNamespace(headers=headers, source=source))))
        return sent

    assert announced(("10.1.2.3", 5060), trunk_trusted=False) == list(ASSERTED_TYPES)
    assert announced(("192.0.2.9", 5060), trunk_trusted=True) == []  # the address it came from decides
    assert announced(None, trunk_trusted=True) == list(ASSERTED_TYPES)  # unknown: the trunk proxy's trust
    assert announced(None, trunk_trusted=False) == []
