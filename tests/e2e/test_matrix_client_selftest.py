"""Self-tests of the test harness: a real Synapse, and (below) two scripted aiortc Matrix clients calling."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness.matrix_client import MatrixTestClient
from tests.harness.synapse import (
    SynapseFactory,
    SynapseServer,
    free_port,
    register_user,
    stop_synapse,
    write_appservice_registration,
)

pytestmark = pytest.mark.e2e


async def test_synapse_registers_two_users_who_exchange_a_message(synapse_server: SynapseServer) -> None:
    alice, alice_token = await register_user(synapse_server, "selftest_alice")
    bob, bob_token = await register_user(synapse_server, "selftest_bob")
    base = f"{synapse_server.url}/_matrix/client/v3"
    async with aiohttp.ClientSession() as http:
        a_auth = {"Authorization": f"Bearer {alice_token}"}
        b_auth = {"Authorization": f"Bearer {bob_token}"}
        async with http.post(f"{base}/createRoom", json={"invite": [bob]}, headers=a_auth) as resp:
            assert resp.status == 200, await resp.text()
            room_id = (await resp.json())["room_id"]
        async with http.post(f"{base}/join/{room_id}", json={}, headers=b_auth) as resp:
            assert resp.status == 200, await resp.text()
        async with http.put(
            f"{base}/rooms/{room_id}/send/m.room.message/txn1",
            json={"msgtype": "m.text", "body": "hello bob"},
            headers=a_auth,
        ) as resp:
            assert resp.status == 200, await resp.text()
        async with http.get(
            f"{base}/rooms/{room_id}/messages", params={"dir": "b", "limit": "10"}, headers=b_auth
        ) as resp:
            assert resp.status == 200, await resp.text()
            events = (await resp.json())["chunk"]
    texts = [(e["sender"], e["content"].get("body")) for e in events if e["type"] == "m.room.message"]
    assert texts == [(alice, "hello bob")]


async def test_synapse_loads_appservice_registration_given_at_start(
    synapse_factory: SynapseFactory, tmp_path: Path
) -> None:
    as_token = uuid.uuid4().hex
    reg = write_appservice_registration(
        tmp_path / "registration.yaml",
        as_url=f"http://127.0.0.1:{free_port()}",  # nothing listens: whoami needs no push
        as_token=as_token,
        hs_token=uuid.uuid4().hex,
        sender_localpart="selftestbot",
        user_namespace_regex="@selftest_as_.*",
    )
    server = await asyncio.to_thread(synapse_factory, [reg], server_name="as.test")
    try:
        async with aiohttp.ClientSession() as http:
            url = f"{server.url}/_matrix/client/v3/account/whoami"
            async with http.get(url, headers={"Authorization": f"Bearer {as_token}"}) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["user_id"] == "@selftestbot:as.test"
    finally:
        await stop_synapse(server)
    assert server.process.poll() is not None


# --- two scripted Element-like clients calling each other through Synapse (no bridge) ---------------------


@pytest.fixture
async def alice_and_bob(synapse_server: SynapseServer) -> AsyncIterator[tuple[MatrixTestClient, MatrixTestClient]]:
    suffix = uuid.uuid4().hex[:8]
    clients: list[MatrixTestClient] = []
    try:
        for name in ("alice", "bob"):
            user_id, _ = await register_user(synapse_server, f"{name}_{suffix}", "pw")
            client = await MatrixTestClient.login(synapse_server.url, user_id, "pw")
            clients.append(client)
            await client.start_sync(auto_join=(name == "bob"))
        yield clients[0], clients[1]
    finally:
        for client in clients:
            await client.close()


async def _dm(alice: MatrixTestClient, bob: MatrixTestClient) -> str:
    room_id = await alice.create_dm(bob.user_id)
    await alice.wait_for_membership(room_id, bob.user_id, "join")
    return room_id


async def test_answered_call_carries_each_sides_tone_and_hangup_reaches_callee(
    alice_and_bob: tuple[MatrixTestClient, MatrixTestClient],
) -> None:
    alice, bob = alice_and_bob
    room_id = await _dm(alice, bob)
    out = await alice.place_call(room_id, invitee=bob.user_id, tone_hz=440.0)
    inc = await bob.wait_incoming_call(room_id)
    assert inc.call_id == out.call_id and inc.party_id == out.party_id != inc.own_party_id
    await inc.answer(tone_hz=660.0)
    answer = await out.wait_answer()
    assert answer["content"]["party_id"] == bob.party_id
    select = await inc.wait_select_answer()
    assert select["content"]["selected_party_id"] == bob.party_id

    await out.wait_for_tone(660.0, timeout=30)
    await inc.wait_for_tone(440.0, timeout=30)
    assert out.tone_ratio(440.0) < 0.2 and inc.tone_ratio(660.0) < 0.2  # each hears the other, not itself
    assert out.connection_state == inc.connection_state == "connected"
    await inc.wait_for_frames(50)
    assert out.audio_level() > 0.5 and inc.audio_level() > 0.5

    await out.hangup()
    hangup = await inc.wait_hangup()
    assert hangup["sender"] == alice.user_id
    assert hangup["content"]["reason"] == "user_hangup"


async def test_rejected_call_reports_reject_to_caller(
    alice_and_bob: tuple[MatrixTestClient, MatrixTestClient],
) -> None:
    alice, bob = alice_and_bob
    room_id = await _dm(alice, bob)
    out = await alice.place_call(room_id, invitee=bob.user_id)
    inc = await bob.wait_incoming_call(room_id)
    await inc.reject()
    ended = await out.wait_hangup_or_reject()
    assert ended["type"] == "m.call.reject"
    assert ended["content"]["party_id"] == bob.party_id
    assert out.frames_received == 0


async def test_invite_is_element_shaped_with_trickled_candidates(
    alice_and_bob: tuple[MatrixTestClient, MatrixTestClient],
) -> None:
    alice, bob = alice_and_bob
    room_id = await _dm(alice, bob)
    out = await alice.place_call(room_id, lifetime=30000)  # invitee: the DM's other member, as Element does
    invite = await bob.wait_for_event(room_id, "m.call.invite")
    content = invite["content"]
    assert content["version"] == "1" and content["lifetime"] == 30000
    assert content["invitee"] == bob.user_id and content["capabilities"] == {"m.call.dtmf": False}
    assert len(content["party_id"]) == 10 and content["party_id"].isalpha()
    assert "a=candidate" not in content["offer"]["sdp"] and content["offer"]["type"] == "offer"
    batch = await bob.wait_for_event(room_id, "m.call.candidates")
    cands = batch["content"]["candidates"]
    assert batch["content"]["call_id"] == out.call_id
    real = [c for c in cands if c["candidate"]]
    assert real and all(" 127.0.0.1 " in c["candidate"] for c in real)
    assert [c for c in cands if c["candidate"] == ""] in ([], [cands[-1]])  # end marker only last, with others


async def test_version0_non_trickle_pcmu_call_connects(
    alice_and_bob: tuple[MatrixTestClient, MatrixTestClient],
) -> None:
    alice, bob = alice_and_bob
    room_id = await _dm(alice, bob)
    out = await alice.place_call(room_id, version=0, trickle=False, codecs=["PCMU"], tone_hz=440.0)
    inc = await bob.wait_incoming_call(room_id)
    assert inc.invite["content"]["version"] == 0 and "party_id" not in inc.invite["content"]
    assert "a=candidate" in inc.offer_sdp and "PCMU/8000" in inc.offer_sdp and "opus" not in inc.offer_sdp
    await inc.answer()
    await out.wait_answer()
    await inc.wait_for_tone(440.0, timeout=30)
    await out.wait_for_tone(660.0, timeout=30)
    await inc.hangup()
    ended = await out.wait_hangup_or_reject()
    assert ended["type"] == "m.call.hangup"


async def test_dtmf_digits_sent_in_the_webrtc_stream_arrive_as_rfc4733_events(
    alice_and_bob: tuple[MatrixTestClient, MatrixTestClient],
) -> None:
    alice, bob = alice_and_bob
    room_id = await _dm(alice, bob)
    out = await alice.place_call(room_id, invitee=bob.user_id)
    inc = await bob.wait_incoming_call(room_id)
    assert "telephone-event/48000" in inc.offer_sdp
    await inc.answer()
    await out.wait_answer()
    await out.wait_for_tone(660.0, timeout=30)
    await out.send_dtmf("15#")
    await inc.wait_for_dtmf("15#")
    await inc.send_dtmf("*0")
    await out.wait_for_dtmf("*0")
    await inc.wait_for_tone(440.0, timeout=30)  # audio resumes after the digits


async def test_caller_selects_first_of_two_answering_devices(
    synapse_server: SynapseServer, alice_and_bob: tuple[MatrixTestClient, MatrixTestClient]
) -> None:
    alice, bob = alice_and_bob
    room_id = await _dm(alice, bob)
    async with await MatrixTestClient.login(synapse_server.url, bob.user_id, "pw", device_id="BOBSPHONEX") as phone:
        await phone.start_sync()
        assert phone.party_id == "BOBSPHONEX" != bob.party_id
        out = await alice.place_call(room_id, invitee=bob.user_id)
        first, second = await bob.wait_incoming_call(room_id), await phone.wait_incoming_call(room_id)
        await first.answer()
        answer = await out.wait_answer()
        await second.answer()  # too late: the caller already chose
        assert answer["content"]["party_id"] == bob.party_id
        for device in (first, second):
            select = await device.wait_select_answer()
            assert select["content"]["selected_party_id"] == bob.party_id
        await out.wait_for_tone(660.0, timeout=30)
        await out.hangup()
        for device in (first, second):
            assert (await device.wait_hangup())["content"]["party_id"] == out.party_id
