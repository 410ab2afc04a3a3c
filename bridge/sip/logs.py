"""Per-call logging: every line about a call names its SIP Call-ID, in the text and as `extra`."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class CallLog(logging.LoggerAdapter):
    """Prefixes messages with `[call-id]` and adds `call_id` (and any other context) to each record."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return f"[{extra.get('call_id', '-')}] {msg}", kwargs


def call_log(logger: logging.Logger, call_id: str, **context: Any) -> CallLog:
    return CallLog(logger, {"call_id": call_id, **context})
