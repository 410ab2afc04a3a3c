"""The direction the bridge offers Matrix when the phone re-negotiates: the phone's own (mirrored)."""

from __future__ import annotations

import pytest

from bridge.call.hold import matrix_direction_for_phone


@pytest.mark.parametrize(
    ("ours_on_sip", "offered_to_matrix"),
    [
        ("recvonly", "sendonly"),  # phone a=sendonly (hold with music): Matrix is held, still hears the music
        ("inactive", "inactive"),  # phone a=inactive or c=0.0.0.0 with inactive
        ("sendonly", "recvonly"),
        ("sendrecv", "sendrecv"),  # resume
        ("bogus", "sendrecv"),
    ],
)
def test_phone_direction_is_mirrored_to_matrix(ours_on_sip: str, offered_to_matrix: str) -> None:
    assert matrix_direction_for_phone(ours_on_sip) == offered_to_matrix
