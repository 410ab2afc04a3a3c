"""Per-user limits on calls placed from Matrix, and throttles for what refusals send back.

Limits apply to calls a Matrix user places (they cost money and are the abuse path: one transaction of
1000 invites must not become 1000 phone calls). Inbound SIP calls are bounded per source address by
policy.RateLimiter and do not count here. Pure: the clock is injected (seconds, monotonic).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class CallLimits:
    attempts_per_minute: int = 10  # calls a user may place per rolling minute
    concurrent_calls: int = 3  # calls one user may have in progress at once
    total_concurrent_calls: int = 50  # calls placed from Matrix in progress at once, all users together


@dataclass(frozen=True)
class LimitRefusal:
    reason: str  # Matrix reject/hangup reason
    problem: str  # for the log
    notice: str  # for the room
    limit: str = "other"  # which limit: total_concurrency, user_concurrency, user_attempts (a metrics label)


class SlidingWindow:
    """At most ``limit`` events per ``window_s`` per key (a rolling window, not a reset each minute).

    Memory is bounded: at most ``limit`` timestamps per key and ``max_keys`` keys (idle keys go first,
    then the least recently used).
    """

    def __init__(self, limit: int, window_s: float, clock: Clock, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self._clock = clock
        self._max_keys = max_keys
        self._events: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._events.get(key)
        if times is None:
            times = deque(maxlen=self.limit)
            self._events[key] = times
        self._events.move_to_end(key)
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def allow(self, key: str) -> bool:
        """Count one event for ``key`` if the window has room; False (nothing counted) if not."""
        now = self._clock()
        times = self._recent(key, now)
        allowed = len(times) < self.limit
        if allowed:
            times.append(now)
        self._bound(now)
        return allowed

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may have another event (0 if it may now)."""
        now = self._clock()
        times = self._recent(key, now)
        if len(times) < self.limit:
            return 0.0
        return max(0.0, times[0] + self.window_s - now)

    def _bound(self, now: float) -> None:
        if len(self._events) <= self._max_keys:
            return
        for key in [k for k, t in self._events.items() if not t or t[-1] <= now - self.window_s]:
            del self._events[key]
        while len(self._events) > self._max_keys:
            self._events.popitem(last=False)

    def __len__(self) -> int:
        return len(self._events)


class CallLimiter:
    """Admits or refuses each call a Matrix user places; ``release`` when the call is over."""

    def __init__(self, limits: CallLimits, clock: Clock) -> None:
        self.limits = limits
        self._attempts = SlidingWindow(limits.attempts_per_minute, 60.0, clock)
        self._active: dict[str, str] = {}  # call_id -> user

    def active(self, user: str | None = None) -> int:
        if user is None:
            return len(self._active)
        return sum(1 for u in self._active.values() if u == user)

    def admit(self, user: str, call_id: str, concurrent_calls: int | None = None) -> LimitRefusal | None:
        """None: the call may be dialled and now counts against the limits. Check and count happen in one
        synchronous step, so invites handled concurrently (other rooms) cannot both take the last slot.
        ``concurrent_calls`` overrides the per-user concurrency limit (bridge.dial_permissions)."""
        limits = self.limits
        per_user = limits.concurrent_calls if concurrent_calls is None else concurrent_calls
        if len(self._active) >= limits.total_concurrent_calls:
            return LimitRefusal(
                "user_busy", f"bridge-wide limit of {limits.total_concurrent_calls} concurrent calls reached",
                "The bridge is handling as many phone calls as it may right now. Please try again later.",
                "total_concurrency")
        if self.active(user) >= per_user:
            notice = (f"You already have {per_user} phone call(s) in progress; end one first." if per_user else
                      "You may not place phone calls through this bridge (your concurrent call limit is 0).")
            return LimitRefusal("user_busy", f"{per_user} concurrent calls already in progress", notice,
                                "user_concurrency")
        if not self._attempts.allow(user):
            wait = math.ceil(self._attempts.retry_after(user))
            return LimitRefusal(
                "unknown_error", f"more than {limits.attempts_per_minute} call attempts per minute",
                f"Too many call attempts (at most {limits.attempts_per_minute} per minute). "
                f"Please try again in {wait} s.", "user_attempts")
        self._active[call_id] = user
        return None

    def release(self, call_id: str) -> None:
        """The call is over (or was never dialled). Harmless to call twice."""
        self._active.pop(call_id, None)


@dataclass(frozen=True)
class RefusalPlan:
    send_event: bool  # m.call.reject / m.call.hangup for the refused invite
    send_notice: bool  # an m.notice explaining it


class RefusalThrottle:
    """How much a refused invite may send back, per user: a flood of refused invites gets a bounded number of
    reject events (the first ones: what a person pressing "call" again sees) and one notice per minute.
    Invites beyond that are only logged; their callers' clients end them at the invite's lifetime."""

    def __init__(self, clock: Clock, *, events_per_minute: int = 20, notices_per_minute: int = 1) -> None:
        self._events = SlidingWindow(events_per_minute, 60.0, clock)
        self._notices = SlidingWindow(notices_per_minute, 60.0, clock)

    def plan(self, user: str, *, wants_notice: bool) -> RefusalPlan:
        send_event = self._events.allow(user)
        return RefusalPlan(send_event, wants_notice and self._notices.allow(user))
