from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.media.rtp_packet import (
    RtpParseError,
    build_rtp,
    is_rtcp,
    parse_rtp,
    seq_add,
    seq_diff,
    ts_add,
    ts_diff,
)


def test_built_packet_parses_back_to_the_same_fields() -> None:
    data = build_rtp(0, True, 65535, 0xFFFFFFF0, 0xDEADBEEF, b"\xff" * 160)
    packet = parse_rtp(data)
    assert (packet.payload_type, packet.marker, packet.sequence, packet.timestamp, packet.ssrc) == (
        0,
        True,
        65535,
        0xFFFFFFF0,
        0xDEADBEEF,
    )
    assert packet.payload == b"\xff" * 160
    assert len(data) == 12 + 160


def test_csrc_extension_and_padding_are_skipped() -> None:
    first = 0x80 | 0x20 | 0x10 | 2  # V=2, padding, extension, 2 CSRCs
    header = bytes([first, 8]) + (7).to_bytes(2, "big") + (1).to_bytes(4, "big") + (2).to_bytes(4, "big")
    csrcs = b"\x00\x00\x00\x01\x00\x00\x00\x02"
    extension = b"\xbe\xde\x00\x01" + b"\x10\xaa\x00\x00"
    data = header + csrcs + extension + b"payload" + b"\x00\x00\x03"
    packet = parse_rtp(data)
    assert packet.payload == b"payload"
    assert packet.payload_type == 8 and packet.sequence == 7


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x00",
        bytes([0x40, 0]) + bytes(10),  # version 1
        bytes([0x8F, 0]) + bytes(10) + bytes(20),  # 15 CSRCs announced, 20 bytes present
        bytes([0x90, 0]) + bytes(10) + b"\xbe\xde\x00\x09",  # extension longer than the packet
        bytes([0xA0, 0]) + bytes(10) + b"\x00",  # zero padding length
        bytes([0xA0, 0]) + bytes(10) + b"\x40",  # padding longer than the packet
    ],
)
def test_malformed_packets_raise_only_rtp_parse_error(data: bytes) -> None:
    with pytest.raises(RtpParseError):
        parse_rtp(data)


@given(st.binary(max_size=200))
def test_arbitrary_bytes_parse_or_raise_rtp_parse_error(data: bytes) -> None:
    try:
        packet = parse_rtp(data)
    except RtpParseError:
        return
    assert len(packet.payload) <= len(data) - 12
    assert 0 <= packet.payload_type < 128


@given(
    st.integers(0, 127),
    st.booleans(),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.binary(max_size=300),
)
def test_build_parse_roundtrip(pt: int, marker: bool, seq: int, ts: int, ssrc: int, payload: bytes) -> None:
    packet = parse_rtp(build_rtp(pt, marker, seq, ts, ssrc, payload))
    assert (packet.payload_type, packet.marker, packet.sequence, packet.timestamp, packet.ssrc, packet.payload) == (
        pt,
        marker,
        seq,
        ts,
        ssrc,
        payload,
    )


def test_rtcp_is_told_apart_from_rtp() -> None:
    assert is_rtcp(bytes([0x80, 200]) + bytes(6))  # sender report
    assert not is_rtcp(build_rtp(0, True, 1, 1, 1, b"x"))  # PCMU with marker: second byte 0x80
    assert not is_rtcp(build_rtp(101, False, 1, 1, 1, b"x"))


def test_sequence_and_timestamp_arithmetic_wraps() -> None:
    assert seq_add(65535, 1) == 0
    assert seq_add(0, -1) == 65535
    assert seq_diff(0, 65535) == 1
    assert seq_diff(65535, 0) == -1
    assert seq_diff(100, 100) == 0
    assert ts_add(0xFFFFFF60, 160) == 0
    assert ts_diff(0, 0xFFFFFF60) == 160
    assert ts_diff(0xFFFFFF60, 0) == -160


@given(st.integers(0, 0xFFFF), st.integers(-30000, 30000))
def test_seq_diff_inverts_seq_add(seq: int, delta: int) -> None:
    assert seq_diff(seq_add(seq, delta), seq) == delta
