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
