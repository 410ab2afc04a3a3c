"""Exceptions shared by the SIP core's layers (parser helpers and the I/O half)."""

from __future__ import annotations


class SipTimeout(Exception):
    """A transaction gave up waiting (timer B, F or H)."""


class SipTransportError(Exception):
    """A message could not be sent (connection refused/reset, unresolvable host, ...)."""
