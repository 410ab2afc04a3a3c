#!/usr/bin/env bash
# One-command demo (README quick start): idempotent setup, then a Matrix -> SIP and a SIP -> Matrix call with
# audio both ways, all on 127.0.0.1 (real Synapse, the bridge as its own process, sipp as trunk and phone).
# Arguments go to scripts/demo.py, e.g. `bash scripts/demo.sh --keep` to leave the stack running afterwards.
# Works from any cwd. Exit status: 0 if both calls worked, non-zero otherwise.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
printf '[demo] setup (apt packages and .venv; skipped when already done)\n'
if ! bash scripts/setup.sh; then
    printf '[demo] DEMO FAILED: scripts/setup.sh failed (see its output above)\n' >&2
    exit 1
fi
printf '[demo] running scripts/demo.py\n'
exec .venv/bin/python scripts/demo.py "$@"
