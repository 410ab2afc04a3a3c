"""SIP fuzz run against a real UserAgent on loopback (a script, not a test; the CI-sized run is
tests/sip/test_sip_fuzz.py). Prints the figures of tests/harness/sip_fuzzer.py's FuzzReport.

    .venv/bin/python bench/sip_fuzz.py --count 100000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness.sip_fuzzer import run_fuzz  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=100_000, help="datagrams + TCP messages to send")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tcp-share", type=float, default=0.1, help="share of messages sent over TCP")
    parser.add_argument("--time-limit", type=float, default=900.0, help="stop sending after this many seconds")
    parser.add_argument("--settle", type=float, default=8.0,
                        help="seconds to wait before measuring what the UA still holds (64*T1 = 6.4 s)")
    args = parser.parse_args()
    report = asyncio.run(run_fuzz(args.count, seed=args.seed, tcp_share=args.tcp_share,
                                  time_limit=args.time_limit, settle=args.settle))
    figures = report.as_dict()
    print(json.dumps(figures, indent=2))
    bad = (report.crashes or report.tracebacks or report.logging_errors or report.untrusted_sent_to_non_sender
           or report.victim_received_untrusted_phase or report.lookups_untrusted_phase
           or not report.calls_before_ok or not report.calls_after_ok)
    print("RESULT:", "FAIL" if bad else "OK")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
