"""What a transfer may dial (calls/transfer.py TransferPolicy) and how m.call.replaces is read."""

from __future__ import annotations

import pytest

from bridge.call.events import InvalidCallEvent
from bridge.call.limits import CallLimiter, CallLimits
from bridge.call.policy import TrustedSources
from bridge.call.replaces import parse_call_replaces
from bridge.calls.transfer import TransferPolicy
from bridge.config import DialplanConfig


def policy(*, allowed: bool = True, concurrent: int = 3) -> TransferPolicy:
    return TransferPolicy(TrustedSources(["127.0.0.1/32"]), DialplanConfig(), lambda _mxid: allowed,
                          CallLimiter(CallLimits(concurrent_calls=concurrent), lambda: 0.0))


def test_a_referred_number_passes_the_checks_of_a_dialled_one() -> None:
    p = policy()
    assert p.problem("@a:x", "15559870001", "k1") is None
    assert p.limits.active("@a:x") == 1  # and counts against the user's limits until released
    assert "blocked" in (p.problem("@a:x", "19005550123", "k2") or "")
    assert "not a phone number" in (p.problem("@a:x", None, "k3") or "")
    assert "may not place calls" in (policy(allowed=False).problem("@a:x", "15559870001", "k4") or "")


def test_a_transfer_over_the_users_call_limit_is_refused() -> None:
    p = policy(concurrent=1)
    assert p.problem("@a:x", "15559870001", "call") is None
    assert "limit" in (p.problem("@a:x", "15559870002", "transfer") or "")


def test_element_transfer_content_is_read() -> None:
    value = parse_call_replaces({"call_id": "c1", "party_id": "p1", "version": "1", "replacement_id": "r1",
                                 "target_user": {"id": "@sip_1555:x", "display_name": "x"}, "create_call": "n1"})
    assert (value.target_user, value.create_call, value.await_call) == ("@sip_1555:x", "n1", None)
    with pytest.raises(InvalidCallEvent):
        parse_call_replaces({"call_id": "c1", "party_id": "p1", "version": "1"})
