"""Element's dial pad end to end: the protocols and the number -> ghost lookup, asked the way Element asks them
(Synapse's client-server /thirdparty API, which Synapse forwards to the bridge because the registration lists
the protocols)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from tests.e2e.conftest import E2E, GHOST, NUMBER
from tests.harness.matrix_client import MatrixTestClient

pytestmark = pytest.mark.e2e

PROTOCOLS = ("m.protocol.pstn", "im.vector.protocol.pstn")


async def test_synapse_lists_both_pstn_protocols_with_the_phone_field(e2e: E2E) -> None:
    await e2e.bridge()
    alice = await e2e.client("alice")
    protocols = await alice.request("GET", "/thirdparty/protocols")
    for name in PROTOCOLS:
        proto = protocols[name]
        assert proto["user_fields"] == ["m.id.phone"] and proto["location_fields"] == []
        assert "m.id.phone" in proto["field_types"] and isinstance(proto["icon"], str)
        assert [i["network_id"] for i in proto["instances"]] == ["sip"]


async def lookup(client: MatrixTestClient, protocol: str, phone: str) -> Any:
    """GET /_matrix/client/v3/thirdparty/user/<protocol>?m.id.phone=..., as Element's dial pad does."""
    return await client.request("GET", f"/thirdparty/user/{quote(protocol)}", None, **{"m.id.phone": phone})


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_dialled_number_resolves_to_its_ghost_and_a_blocked_one_to_nothing(e2e: E2E, protocol: str) -> None:
    await e2e.bridge(lambda d: d.setdefault("dialplan", {}).update(blocked=[r"^1900\d*$", r"^44"]))
    alice = await e2e.client("alice")
    # the national form Element users type, normalised by the dial plan (default country code 1)
    found = await lookup(alice, protocol, "(555) 123-4567")
    assert found == [{"userid": GHOST, "protocol": protocol, "fields": {"m.id.phone": f"+{NUMBER}"}}]
    assert await lookup(alice, protocol, "+1 900 555 0100") == []  # blocked
    assert await lookup(alice, protocol, "+44 20 7946 0000") == []  # blocked
    assert await lookup(alice, protocol, "not a number") == []
