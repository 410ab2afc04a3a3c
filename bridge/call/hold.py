"""Hold / resume across the bridge: which SIP direction a Matrix renegotiation maps to. Pure.

The bridge relays media, so it mirrors the Matrix party's wishes towards the phone: when Matrix will only
send (sendonly) the bridge will only send to the phone, and so on. The phone's answer then follows RFC 3264
(a sendonly offer is answered recvonly), which sip/sdp.py applies.
"""

from __future__ import annotations

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")


def sip_direction_for_matrix_offer(matrix_direction: str) -> str:
    """The a=<direction> of the SIP re-INVITE for a Matrix m.call.negotiate offer with that audio direction.

    Unknown values count as sendrecv (the SDP default, RFC 3264 5.1).
    """
    return matrix_direction if matrix_direction in DIRECTIONS else "sendrecv"

