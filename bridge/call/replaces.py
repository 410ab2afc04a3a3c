"""m.call.replaces (MSC2747, what Element's "Transfer" sends), parsed. Pure: no I/O.

matrix-js-sdk's MatrixCall.transfer(user) sends, in the call being transferred, ``replacement_id``,
``target_user`` ({id, display_name, avatar_url}) and ``create_call`` (the transferee should place a new call to
the target), then ends the call locally without an m.call.hangup. transferToCall(other) sends the same with
``create_call`` in this call and ``await_call`` (the same ID) in the other call, whose far end is the target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .events import InvalidCallEvent, _base, _voip_id


@dataclass(frozen=True)
class CallReplaces:
    call_id: str
    party_id: str | None
    replacement_id: str
    target_user: str | None  # the Matrix ID of whom the far end should now talk to
    create_call: str | None
    await_call: str | None


def parse_call_replaces(content: Any) -> CallReplaces:
    if not isinstance(content, dict):
        raise InvalidCallEvent("content is not an object")
    call_id, party_id, _version = _base(content)
    replacement_id = _voip_id(content, "replacement_id")
    if replacement_id is None:
        raise InvalidCallEvent("replacement_id is required")
    target = content.get("target_user")
    target_id = target.get("id") if isinstance(target, dict) else target
    if target_id is not None and not isinstance(target_id, str):
        raise InvalidCallEvent("target_user.id must be a user ID")
    create_call = _voip_id(content, "create_call", required=False)
    await_call = _voip_id(content, "await_call", required=False)
    return CallReplaces(call_id, party_id, replacement_id, target_id, create_call, await_call)
