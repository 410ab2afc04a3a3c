from __future__ import annotations

import pytest

from bridge.media.errors import MediaError
from bridge.media.ports import PortAllocator


def test_only_even_ports_inside_the_range_are_handed_out() -> None:
    ports = PortAllocator("127.0.0.1", 20001, 20010)
    got = [ports.allocate() for _ in range(ports.capacity)]
    assert sorted(got) == [20002, 20004, 20006, 20008]


def test_exhaustion_raises_media_error_and_release_makes_room() -> None:
    ports = PortAllocator("127.0.0.1", 30000, 30004)
    a, b = ports.allocate(), ports.allocate()
    with pytest.raises(MediaError):
        ports.allocate()
    ports.release(a)
    assert ports.allocate() == a
    assert ports.in_use == {a, b}


def test_a_released_port_is_not_reused_immediately() -> None:
    ports = PortAllocator("127.0.0.1", 30000, 30010)
    first = ports.allocate()
    ports.release(first)
    assert ports.allocate() != first


def test_an_empty_range_is_rejected() -> None:
    with pytest.raises(ValueError):
        PortAllocator("127.0.0.1", 30001, 30002)
    with pytest.raises(ValueError):
        PortAllocator("127.0.0.1", 30010, 30000)


def test_quarantined_port_is_skipped_until_it_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("bridge.media.ports.time.monotonic", lambda: now[0])
    alloc = PortAllocator("127.0.0.1", 20000, 20006)  # 20000, 20002, 20004
    alloc.quarantine(20000, 60)
    alloc.quarantine(20002, 60)
    assert alloc.allocate() == 20004
    with pytest.raises(MediaError):
        alloc.allocate()  # the only free ports are quarantined
    now[0] += 61
    assert sorted([alloc.allocate(), alloc.allocate()]) == [20000, 20002]
