#!/usr/bin/env bash
# Full check: setup (idempotent), ruff, mypy, the whole pytest suite. Exit status non-zero if any step fails.
# Extra arguments go to pytest (e.g. scripts/test.sh -k sip -x). Works from any cwd.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
say() { printf '[test] %s\n' "$*"; }

declare -a summary=()
failed=0
step() {  # step NAME CMD... : run, record PASS/FAIL with duration
    local name=$1 start rc
    shift
    say "== $name: $*"
    start=$(date +%s)
    "$@"
    rc=$?
    local secs=$(($(date +%s) - start))
    if [ "$rc" -eq 0 ]; then
        summary+=("PASS  $name (${secs}s)")
    else
        summary+=("FAIL  $name (exit $rc, ${secs}s)")
        failed=1
    fi
    return "$rc"
}

run_pytest() {
    .venv/bin/python -m pytest -q -rs -p no:cacheprovider --durations=10 "$@"
    local rc=$?
    if [ "$rc" -eq 5 ]; then
        say "pytest collected no tests: treated as a failure"
    fi
    return "$rc"
}

if ! step setup bash scripts/setup.sh; then
    say "setup failed; nothing else can run"
    printf '%s\n' "${summary[@]}"
    exit 1
fi
step ruff .venv/bin/ruff check bridge tests bench scripts docker
step mypy .venv/bin/mypy
step pytest run_pytest "$@"
# The end-to-end call tests again with media.backend rtpengine (a real rtpengine the fixtures start): every
# call feature either works on both media backends or is refused clearly. Skipped when arguments narrow the run.
if [ $# -eq 0 ]; then
    step pytest-rtpengine env BRIDGE_E2E_MEDIA=rtpengine .venv/bin/python -m pytest -q -rs -p no:cacheprovider \
        tests/e2e/test_outbound_calls.py tests/e2e/test_inbound_calls.py tests/e2e/test_rtpengine_backend.py
fi

echo
say "summary:"
printf '  %s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    say "RESULT: FAILED"
    exit 1
fi
say "RESULT: all checks passed"
