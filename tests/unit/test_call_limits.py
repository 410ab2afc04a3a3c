from bridge.call.limits import CallLimiter, CallLimits, RefusalThrottle, SlidingWindow


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_attempts_per_minute_is_a_rolling_window_per_user() -> None:
    clock = Clock()
    limiter = CallLimiter(CallLimits(attempts_per_minute=3, concurrent_calls=100, total_concurrent_calls=100), clock)
    for i in range(3):
        assert limiter.admit("@a:x", f"a{i}") is None
        clock.now += 10
    refusal = limiter.admit("@a:x", "a3")
    assert refusal is not None and refusal.reason == "unknown_error" and "per minute" in refusal.notice
    assert "try again in 30 s" in refusal.notice  # the first attempt leaves the window at +60 s
    assert limiter.admit("@b:x", "b0") is None  # other users are not affected
    clock.now += 30.5
    assert limiter.admit("@a:x", "a4") is None
    assert limiter.admit("@a:x", "a5") is not None


def test_concurrent_calls_per_user_are_freed_by_release() -> None:
    limiter = CallLimiter(CallLimits(attempts_per_minute=100, concurrent_calls=2, total_concurrent_calls=100), Clock())
    assert limiter.admit("@a:x", "c1") is None and limiter.admit("@a:x", "c2") is None
    refusal = limiter.admit("@a:x", "c3")
    assert refusal is not None and refusal.reason == "user_busy"
    limiter.release("c1")
    limiter.release("c1")  # twice is harmless
    assert limiter.active("@a:x") == 1
    assert limiter.admit("@a:x", "c3") is None


def test_refused_attempts_do_not_use_up_the_rate() -> None:
    limiter = CallLimiter(CallLimits(attempts_per_minute=2, concurrent_calls=1, total_concurrent_calls=100), Clock())
    assert limiter.admit("@a:x", "c1") is None
    for i in range(5):
        assert limiter.admit("@a:x", f"busy{i}") is not None  # refused for concurrency, not counted
    limiter.release("c1")
    assert limiter.admit("@a:x", "c2") is None


def test_total_concurrent_calls_bound_all_users_together() -> None:
    limiter = CallLimiter(CallLimits(attempts_per_minute=10, concurrent_calls=10, total_concurrent_calls=3), Clock())
    admitted = [limiter.admit(f"@u{i}:x", f"c{i}") for i in range(5)]
    assert admitted[:3] == [None, None, None]
    assert all(r is not None and "bridge-wide" in r.problem for r in admitted[3:])
    assert limiter.active() == 3


def test_a_thousand_invites_admit_only_the_configured_number() -> None:
    limiter = CallLimiter(CallLimits(attempts_per_minute=5, concurrent_calls=2, total_concurrent_calls=50), Clock())
    admitted = [i for i in range(1000) if limiter.admit("@a:x", f"c{i}") is None]
    assert admitted == [0, 1]


def test_refusals_send_a_bounded_number_of_events_and_one_notice_per_minute() -> None:
    clock = Clock()
    throttle = RefusalThrottle(clock, events_per_minute=20, notices_per_minute=1)
    plans = [throttle.plan("@a:x", wants_notice=True) for _ in range(1000)]
    assert sum(p.send_event for p in plans) == 20 and all(p.send_event for p in plans[:20])
    assert [i for i, p in enumerate(plans) if p.send_notice] == [0]
    assert throttle.plan("@b:x", wants_notice=True).send_notice  # per user
    assert not throttle.plan("@c:x", wants_notice=False).send_notice
    clock.now += 60.1
    again = throttle.plan("@a:x", wants_notice=True)
    assert again.send_event and again.send_notice


def test_sliding_window_forgets_idle_keys_to_stay_bounded() -> None:
    clock = Clock()
    window = SlidingWindow(1, 60.0, clock, max_keys=10)
    for i in range(10):
        assert window.allow(f"k{i}")
    clock.now += 61
    assert window.allow("new")
    assert len(window) <= 10
    for i in range(50):
        window.allow(f"busy{i}")  # all active: the least recently used go
    assert len(window) == 10
