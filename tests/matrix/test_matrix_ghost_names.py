"""Ghost user IDs and display names (pure parts of bridge.matrix.ghosts)."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.config import parse_config
from bridge.matrix.ghosts import UNKNOWN_NUMBER, Ghosts


def ghosts(**bridge: Any) -> Ghosts:
    config = parse_config({"homeserver": {"domain": "example.org"}, "bridge": bridge})
    return Ghosts(az=None, config=config, table=None)  # type: ignore[arg-type]  # pure methods only


def test_mxid_round_trips_through_number_from_mxid() -> None:
    g = ghosts()
    assert g.mxid_for("15551234567") == "@sip_15551234567:example.org"
    assert g.number_from_mxid("@sip_15551234567:example.org") == "15551234567"
    assert g.mxid_for(None) == "@sip_unknown:example.org"
    assert g.number_from_mxid("@sip_unknown:example.org") == UNKNOWN_NUMBER


@pytest.mark.parametrize("mxid", [
    "@sip_15551234567:other.org", "@sip_0123456:example.org", "@sip_12:example.org", "@sip_abc:example.org",
    "@sipbot:example.org", "@alice:example.org", "@sip_1234567890123456:example.org", "sip_15551234567",
])
def test_non_ghost_ids_are_not_ghosts(mxid: str) -> None:
    assert ghosts().number_from_mxid(mxid) is None
    assert not ghosts().is_ghost(mxid)


def test_custom_template_with_suffix() -> None:
    g = ghosts(username_template="phone.{number}.sip")
    assert g.mxid_for("15551234567") == "@phone.15551234567.sip:example.org"
    assert g.number_from_mxid("@phone.15551234567.sip:example.org") == "15551234567"


def test_display_names_follow_the_template() -> None:
    assert ghosts().displayname_for("15551234567") == "+1 555 123 4567"
    assert ghosts().displayname_for(None) == "Unknown caller"
    named = ghosts(displayname_template="{name} ({formatted})", unknown_caller_name="Withheld")
    assert named.displayname_for("15551234567", "Bob") == "Bob (+1 555 123 4567)"
    assert named.displayname_for(UNKNOWN_NUMBER, "Bob") == "Withheld"
    only_name = ghosts(displayname_template="{name}")
    assert only_name.displayname_for("15551234567") == "+1 555 123 4567"  # no SIP name: fall back
