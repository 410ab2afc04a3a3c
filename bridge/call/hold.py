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



_REVERSE = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def matrix_direction_for_phone(sip_direction: str) -> str:
    """The a=<direction> of the bridge's m.call.negotiate offer when the phone re-negotiated (hold / resume).

    ``sip_direction`` is the bridge's own direction on the SIP leg after answering the phone. The bridge speaks
    for the phone, so the Matrix party is offered what the phone offered: the reverse of ours (phone ``sendonly``
    (we answered ``recvonly``) -> offer ``sendonly``: its music on hold still reaches Matrix and matrix-js-sdk,
    answering ``recvonly``, shows the call as held by the other side; ``inactive`` -> ``inactive``).
    """
    return _REVERSE.get(sip_direction, "sendrecv")
