"""SDES (RFC 4568) offer/answer rules of sip/sdp_crypto.py."""

from __future__ import annotations

import pytest

from bridge.sip.sdp import Codec, MediaDescription, SdpError, SessionDescription, build_offer, negotiate_answer
from bridge.sip.sdp_crypto import OFFER_SUITES, SdesNegotiation, parse_crypto, usable_lines

PCMU = [Codec(0, "PCMU", 8000)]


def offer_media(mode: str, sdes: SdesNegotiation | None = None) -> tuple[SdesNegotiation, MediaDescription]:
    sdes = sdes or SdesNegotiation(mode)
    media = build_offer("127.0.0.1", 4000, PCMU).media[0]
    sdes.secure_offer(media)
    return sdes, media


def answer_for(answerer: SdesNegotiation, offer: MediaDescription) -> MediaDescription:
    sdp = SessionDescription(connection="127.0.0.1", media=[offer])
    answer, negotiated = negotiate_answer(sdp, address="127.0.0.1", port=5000, supported=PCMU,
                                          protos=answerer.accepted_protos(("RTP/AVP", "RTP/AVPF")))
    answerer.answer_offer(offer, answer.media[negotiated.media_index])
    return answer.media[negotiated.media_index]


def test_required_offers_savp_with_every_suite_and_distinct_fresh_keys() -> None:
    _, media = offer_media("required")
    assert media.proto == "RTP/SAVP"
    lines = usable_lines(media)
    assert [line.suite for line in lines] == list(OFFER_SUITES)
    assert [line.tag for line in lines] == [1, 2, 3]
    assert len({line.key for line in lines}) == 3
    assert media.serialize_lines()[-1] == "a=sendrecv"  # crypto lines before the direction


def test_optional_offers_avp_with_crypto_and_off_offers_plain() -> None:
    _, media = offer_media("optional")
    assert media.proto == "RTP/AVP" and len(usable_lines(media)) == 3
    _, plain = offer_media("off")
    assert plain.proto == "RTP/AVP" and not plain.attribute_values("crypto")


def test_answer_takes_the_offerers_first_suite_with_our_own_key_and_the_same_tag() -> None:
    offerer, offer = offer_media("required")
    answerer = SdesNegotiation("optional")
    answer = answer_for(answerer, offer)
    assert answer.proto == "RTP/SAVP"
    (ours,) = usable_lines(answer)
    first = usable_lines(offer)[0]
    assert (ours.tag, ours.suite) == (first.tag, first.suite) and ours.key != first.key
    keys = offerer.read_answer(answer)
    assert keys is not None and keys.local == first.key and keys.remote == ours.key
    assert answerer.active is not None and answerer.active[1].key == first.key


def test_savp_offer_without_a_supported_suite_is_refused() -> None:
    offer = MediaDescription("audio", 4000, "RTP/SAVP", ["0"], attributes=[
        ("rtpmap", "0 PCMU/8000"), ("crypto", "1 F8_128_HMAC_SHA1_80 inline:" + "A" * 40)])
    with pytest.raises(SdpError):
        answer_for(SdesNegotiation("optional"), offer)
    with pytest.raises(SdpError):  # SRTP off: a SAVP-only offer has no acceptable stream
        answer_for(SdesNegotiation("off"), offer_media("required")[1])


def test_plain_offer_is_refused_when_required_and_answered_plain_when_optional() -> None:
    _, plain = offer_media("off")
    with pytest.raises(SdpError, match="required"):
        answer_for(SdesNegotiation("required"), plain)
    answer = answer_for(SdesNegotiation("optional"), plain)
    assert answer.proto == "RTP/AVP" and not answer.attribute_values("crypto")


def test_required_offerer_refuses_an_answer_without_crypto_and_optional_falls_back() -> None:
    offerer, _ = offer_media("required")
    plain_answer = MediaDescription("audio", 5000, "RTP/AVP", ["0"])
    with pytest.raises(SdpError):
        offerer.read_answer(plain_answer)
    optional, _ = offer_media("optional")
    assert optional.read_answer(plain_answer) is None


def test_reoffer_repeats_the_line_in_use_so_contexts_survive_hold() -> None:
    offerer, offer = offer_media("required")
    answerer = SdesNegotiation("required")
    answer = answer_for(answerer, offer)
    first_keys = offerer.read_answer(answer)
    _, reoffer = offer_media("required", offerer)  # hold re-INVITE
    assert offerer.active is not None and usable_lines(reoffer) == [offerer.active[0]]
    reanswer = answer_for(answerer, reoffer)
    assert usable_lines(reanswer) == usable_lines(answer)  # peer key unchanged: our key unchanged
    assert offerer.read_answer(reanswer) == first_keys


def test_a_new_key_from_the_peer_gets_a_new_key_from_us() -> None:
    _, offer = offer_media("required")
    answerer = SdesNegotiation("required")
    answer = answer_for(answerer, offer)
    fresh = SdesNegotiation("required")  # the peer restarted its context: fresh lines
    _, reoffer = offer_media("required", fresh)
    reanswer = answer_for(answerer, reoffer)
    assert usable_lines(reanswer)[0].key != usable_lines(answer)[0].key


def test_parse_crypto_rejects_mki_multiple_keys_bad_length_and_unknown_session_params() -> None:
    good = "1 AES_CM_128_HMAC_SHA1_80 inline:" + "QUFB" * 10
    assert parse_crypto(good) is not None
    assert parse_crypto(good + "|2^20") is not None
    assert parse_crypto(good + "|2^20|1:4") is None
    assert parse_crypto(good + ";inline:" + "QUFB" * 10) is None
    assert parse_crypto("1 AES_CM_128_HMAC_SHA1_80 inline:QUFB") is None
    assert parse_crypto(good + " UNENCRYPTED_SRTP") is None
    assert parse_crypto(good + " WSH=64") is not None
    assert "inline" not in repr(parse_crypto(good))


def test_a_new_invite_renews_our_keys_even_with_a_context_running() -> None:
    offerer, offer = offer_media("required")
    offerer.read_answer(answer_for(SdesNegotiation("required"), offer))
    assert offerer.active is not None
    media = build_offer("127.0.0.1", 4000, PCMU).media[0]
    offerer.secure_offer(media, renew=True)  # e.g. a transfer's INVITE to another number
    assert offerer.active[0].key not in {line.key for line in usable_lines(media)}
