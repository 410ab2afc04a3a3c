"""A CI-sized run of the SIP fuzzer (bench/sip_fuzz.py runs 100,000): mutated requests and stray responses
from trusted and untrusted loopback sources at a UserAgent that answers like the bridge."""

from __future__ import annotations

from tests.harness.sip_fuzzer import run_fuzz


async def test_sip_fuzz_short_run_no_crash_no_reflection_no_lookups_and_calls_still_work() -> None:
    report = await run_fuzz(3000, seed=7, time_limit=60)
    assert report.datagrams + report.segments >= 2900
    assert report.crashes == 0
    assert report.tracebacks == 0, report.traceback_samples
    assert report.logging_errors == 0
    assert report.untrusted_sent_to_non_sender == 0
    assert report.victim_received_untrusted_phase == 0
    assert report.lookups_untrusted_phase == 0
    assert report.unsolicited_dropped > 0  # stray responses were in the mix, and were dropped
    assert report.calls_before_ok and report.calls_after_ok
    assert report.rss_after_kb - report.rss_before_kb < 50_000
