from __future__ import annotations

import pytest

from bridge.media.dtmf import DtmfDetector, DtmfError, DtmfEvent, decode_event, digit_to_event, encode_event


def test_event_payload_matches_rfc4733_layout() -> None:
    # event 5, end bit, volume 10, duration 800
    assert encode_event(5, end=True, volume=10, duration=800) == bytes([5, 0x80 | 10, 0x03, 0x20])
    assert decode_event(bytes([11, 10, 0x01, 0x40])) == DtmfEvent(11, False, 10, 320)


def test_digits_map_to_events_both_ways() -> None:
    assert [digit_to_event(d) for d in "0159*#AD"] == [0, 1, 5, 9, 10, 11, 12, 15]
    assert DtmfEvent(10, True, 0, 0).digit == "*"
    assert DtmfEvent(11, True, 0, 0).digit == "#"
    assert DtmfEvent(16, True, 0, 0).digit is None  # flash etc.: no digit


def test_bad_input_raises_dtmf_error() -> None:
    with pytest.raises(DtmfError):
        decode_event(b"\x01\x02")
    with pytest.raises(DtmfError):
        digit_to_event("x")
    with pytest.raises(DtmfError):
        encode_event(1, end=False, volume=64, duration=0)


def test_detector_reports_each_key_press_once_despite_updates_and_end_retransmits() -> None:
    detector = DtmfDetector()
    stream = [
        (1000, DtmfEvent(1, False, 10, 160)),
        (1000, DtmfEvent(1, False, 10, 320)),
        (1000, DtmfEvent(1, True, 10, 480)),
        (1000, DtmfEvent(1, True, 10, 480)),
        (1000, DtmfEvent(1, True, 10, 480)),
        (3000, DtmfEvent(1, False, 10, 160)),  # same digit again: new timestamp, new press
        (3000, DtmfEvent(1, True, 10, 320)),
    ]
    assert [detector.feed(ts, ev) for ts, ev in stream] == [True, False, False, False, False, True, False]
    assert not detector.active
