from bridge.call.candidates import CandidateBuffer
from bridge.call.events import Candidate
from bridge.call.policy import RateLimiter, TrustedSources

C1 = Candidate("candidate:1 1 udp 1 127.0.0.1 5000 typ host", "0", 0)
C2 = Candidate("candidate:2 1 udp 1 127.0.0.1 5002 typ host", "0", 0)
END = Candidate("", "0", 0)


def test_candidates_are_buffered_per_party_and_end_marker_is_remembered() -> None:
    buf = CandidateBuffer()
    buf.add("call", "A", [C1])
    buf.add("call", "B", [C2, END])
    assert buf.take("call", "B") == ([C2], True)
    assert buf.take("call", "A") == ([C1], False)
    assert buf.take("call", "A") == ([], False)


def test_version0_candidates_without_party_go_to_whoever_takes_them() -> None:
    buf = CandidateBuffer()
    buf.add("call", None, [C1])
    assert buf.take("call", "X") == ([C1], False)


def test_candidate_buffer_is_bounded() -> None:
    buf = CandidateBuffer(max_per_party=2, max_calls=2)
    buf.add("c", "p", [C1, C2, C1, C2])
    assert len(buf.take("c", "p")[0]) == 2
    for i in range(5):
        buf.add(f"call{i}", "p", [C1])
    assert len(buf) == 2


def test_trusted_sources_by_cidr_ipv4_ipv6_and_mapped() -> None:
    trusted = TrustedSources(["127.0.0.1/32", "::1/128"])
    assert trusted.allows("127.0.0.1")
    assert trusted.allows("::1") and trusted.allows("[::1]")
    assert trusted.allows("::ffff:127.0.0.1")
    assert not trusted.allows("127.0.0.2")
    assert not trusted.allows("not-an-ip")


def test_rate_limiter_allows_burst_then_refills() -> None:
    limiter = RateLimiter(per_second=1, burst=3)
    assert [limiter.allow("s", now=0.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow("other", now=0.0)
    assert limiter.allow("s", now=1.0)
    assert not limiter.allow("s", now=1.0)
