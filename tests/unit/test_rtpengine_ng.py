"""rtpengine backend pieces: the ng message codec, node selection/failover, and the facade's method set."""

from __future__ import annotations

import inspect
import random

import pytest

from bridge.media.call_media import CallMedia
from bridge.media.rtpengine_media import RtpengineCallMedia
from bridge.media.rtpengine_ng import NgError, decode, encode
from bridge.media.rtpengine_nodes import NodePool, NodeSpec, parse_ng_url
from bridge.media.rtpengine_sdp import audio_direction, bump_origin, first_codec, set_direction


def test_ng_codec_round_trips_nested_dicts_lists_ints_and_text() -> None:
    msg = {"command": "offer", "sdp": "v=0\r\n", "flags": ["trust-address", "inject-DTMF"], "n": -3,
           "codec": {"transcode": ["PCMU", "opus"]}}
    data = encode(msg)
    assert data.startswith(b"d") and b"7:command5:offer" in data  # keys sorted, bencoded
    assert decode(data) == msg


def test_ng_codec_refuses_garbage() -> None:
    with pytest.raises(NgError):
        decode(b"d3:abc")
    with pytest.raises(NgError):
        decode(b"li1ee")  # a list, not a dict


def test_ng_url_parsing() -> None:
    assert parse_ng_url("udp:127.0.0.1:2223") == ("127.0.0.1", 2223)
    assert parse_ng_url("udp:[::1]:2223") == ("::1", 2223)
    for bad in ("tcp:1.2.3.4:1", "udp:host", "udp:h:0", "http://x:1"):
        with pytest.raises(ValueError):
            parse_ng_url(bad)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_node_pool_draws_by_weight_and_skips_failed_nodes_until_retry() -> None:
    a, b = NodeSpec("udp:127.0.0.1:1", 1), NodeSpec("udp:127.0.0.1:2", 3)
    clock = Clock()
    pool = NodePool([a, b], retry_after_s=30, clock=clock, rng=random.Random(1))
    firsts = [pool.candidates()[0] for _ in range(4000)]
    assert 0.70 < firsts.count(b) / len(firsts) < 0.80  # weight 3 of 4
    pool.failed(b)
    assert pool.candidates() == [a, b]  # b only as a last resort
    clock.now = 29.9
    assert pool.candidates()[0] == a
    clock.now = 30.0  # retried after retry_after_s
    assert b in pool.candidates()[:2] and pool.is_up(b)
    pool.failed(a)
    pool.failed(b)
    assert len(pool.candidates()) == 2  # all down: still tried, soonest retry first


def test_rtpengine_media_has_the_call_media_api() -> None:
    """The driver uses CallMedia's public methods; the rtpengine facade must have each, with the same
    parameters and the same sync/async kind (bridge/media/rtpengine_media.py casts it to CallMedia)."""
    for name, member in inspect.getmembers(CallMedia):
        if name.startswith("_"):
            continue
        assert hasattr(RtpengineCallMedia, name), name
        other = getattr(RtpengineCallMedia, name)
        if inspect.isfunction(member):
            assert inspect.iscoroutinefunction(member) == inspect.iscoroutinefunction(other), name
            assert list(inspect.signature(member).parameters) == list(inspect.signature(other).parameters), name


def test_sdp_text_edits() -> None:
    sdp = "v=0\r\no=- 5 7 IN IP4 1.2.3.4\r\ns=-\r\nm=audio 4 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n" \
          "a=sendrecv\r\n"
    held = set_direction(sdp, "inactive")
    assert audio_direction(held) == "inactive" and "a=sendrecv" not in held
    assert "o=- 5 8 IN IP4" in bump_origin(sdp)
    assert first_codec(sdp) == "PCMU"
    assert audio_direction(sdp.replace("m=audio", "c=IN IP4 0.0.0.0\r\nm=audio")) == "inactive"


def test_srtp_with_the_rtpengine_backend_is_a_config_error() -> None:
    """The rtpengine backend offers the SIP side plain RTP/AVP: media.srtp must say off, not be ignored."""
    from bridge.config import ConfigError, parse_config

    media = {"backend": "rtpengine", "rtpengine": {"nodes": [{"url": "udp:127.0.0.1:2223"}]}}
    cfg = parse_config({"homeserver": {"domain": "example.org"}, "media": media})
    assert cfg.media.backend == "rtpengine" and cfg.media.srtp == "off"
    with pytest.raises(ConfigError, match=r"media\.srtp"):
        parse_config({"homeserver": {"domain": "example.org"}, "media": {**media, "srtp": "required"}})
