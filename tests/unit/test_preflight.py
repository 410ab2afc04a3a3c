"""Start-up warnings for settings that make every call fail, checked against real sockets and resolvers."""

from __future__ import annotations

import dataclasses
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.config import Config, load_config
from bridge.preflight import (
    check_ice_addresses,
    check_permissions,
    check_rtp_ports,
    check_trunk_proxy,
    run_preflight,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "bridge" / "example-config.yaml"


def config(**sections: dict[str, object]) -> Config:
    base = load_config(EXAMPLE, {})
    for name, changes in sections.items():
        base = dataclasses.replace(base, **{name: dataclasses.replace(getattr(base, name), **changes)})
    return base


def free_range(length: int) -> int:
    """An even port with ``length`` free UDP ports after it on 127.0.0.1 (as far as a probe can tell)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            start = s.getsockname()[1] & ~1
        if start + length > 65535 or start < 1024:
            continue
        try:
            socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(length)]
            try:
                for i, sock in enumerate(socks):
                    sock.bind(("127.0.0.1", start + i))
                return start
            finally:
                for sock in socks:
                    sock.close()
        except OSError:
            continue
    raise RuntimeError("no free UDP port range")


@pytest.fixture
def occupied() -> Iterator[tuple[int, int]]:
    """A 6-port RTP range on 127.0.0.1 whose every port is bound by someone else."""
    start = free_range(6)
    socks = []
    for port in range(start, start + 6):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", port))
        socks.append(sock)
    yield start, start + 6
    for sock in socks:
        sock.close()


def test_an_rtp_range_whose_every_port_is_taken_gives_one_warning(occupied: tuple[int, int]) -> None:
    start, end = occupied
    warning = check_rtp_ports(config(media={"rtp_host": "127.0.0.1", "port_start": start, "port_end": end}))
    assert warning is not None
    assert warning.startswith(f"media.port_start..port_end: none of the 3 RTP ports tried in {start}-{end} can be "
                              "bound on 127.0.0.1 (Address already in use)")


def test_a_free_rtp_range_or_one_with_a_free_port_is_fine() -> None:
    start = free_range(6)
    assert check_rtp_ports(config(media={"port_start": start, "port_end": start + 6})) is None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", start))  # one port busy (a call, another program): the rest still work
        assert check_rtp_ports(config(media={"port_start": start, "port_end": start + 6})) is None


def test_an_rtp_host_this_machine_does_not_have_is_reported() -> None:
    warning = check_rtp_ports(config(media={"rtp_host": "192.0.2.77"}))
    assert warning is not None and "can be bound on 192.0.2.77" in warning


@pytest.mark.parametrize(("permissions", "problem"), [
    ({"*": "none", "example.org": "none"}, 'every entry is "none", so nobody can use the bridge'),
    ({"other.example": "user", "@bob:other.example": "admin"},
     "only @bob:other.example, other.example may use the bridge, none of them on this homeserver (example.org)"),
])
def test_permissions_that_admit_nobody_here_are_reported(permissions: dict[str, str], problem: str) -> None:
    warning = check_permissions(config(bridge={"permissions": permissions}))
    assert warning is not None and warning.startswith(f"bridge.permissions: {problem}")


@pytest.mark.parametrize("permissions", [
    {},  # the default: this homeserver's users
    {"example.org": "user"},
    {"*": "user", "evil.example": "none"},
    {"@alice:example.org": "admin"},
])
def test_permissions_admitting_someone_here_are_fine(permissions: dict[str, str]) -> None:
    assert check_permissions(config(bridge={"permissions": permissions})) is None


def test_ice_addresses_that_are_not_on_this_machine_are_reported() -> None:
    warning = check_ice_addresses(config(media={"ice_host_addresses": ("192.0.2.55", "198.51.100.9")}))
    assert warning is not None and warning.startswith(
        "media.ice_host_addresses: none of 192.0.2.55, 198.51.100.9 is an address of this machine")
    assert check_ice_addresses(config(media={"ice_host_addresses": ("127.0.0.1",)})) is None


def test_a_machine_whose_only_addresses_are_filtered_offers_no_candidates() -> None:
    # aioice's gathering leaves out loopback: a loopback-only machine ends up with no host candidates.
    warning = check_ice_addresses(config(), host_addresses=lambda v4, v6: [])
    assert warning is not None and "no non-loopback address for ICE host candidates" in warning
    assert check_ice_addresses(config(), host_addresses=lambda v4, v6: ["192.0.2.1"]) is None


async def test_a_trunk_proxy_that_does_not_resolve_is_reported() -> None:
    warning = await check_trunk_proxy(config(sip={"trunk": dataclasses.replace(
        config().sip.trunk, proxy="sip:no-such-host.invalid:5060")}))
    assert warning is not None
    assert warning.startswith("sip.trunk.proxy: 'no-such-host.invalid' does not resolve")
    assert await check_trunk_proxy(config()) is None  # an IP literal
    assert await check_trunk_proxy(config(sip={"trunk": dataclasses.replace(
        config().sip.trunk, proxy="sip:localhost:5060")})) is None


async def test_preflight_logs_one_warning_per_problem(occupied: tuple[int, int],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    start, end = occupied
    bad = config(
        media={"port_start": start, "port_end": end, "ice_host_addresses": ("192.0.2.55",)},
        bridge={"permissions": {"*": "none"}},
        sip={"trunk": dataclasses.replace(config().sip.trunk, proxy="sip:no-such-host.invalid")},
    )
    with caplog.at_level(logging.WARNING, logger="bridge.preflight"):
        warnings = await run_preflight(bad)
    assert [w.split(":", 1)[0] for w in warnings] == [
        "media.ice_host_addresses", "bridge.permissions", "media.port_start..port_end", "sip.trunk.proxy"]
    assert [r.getMessage() for r in caplog.records] == warnings
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bridge.preflight"):
        free = free_range(6)
        fine = config(media={"ice_host_addresses": ("127.0.0.1",), "port_start": free, "port_end": free + 6})
        assert await run_preflight(fine) == []
    assert not caplog.records
