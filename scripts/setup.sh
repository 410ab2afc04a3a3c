#!/usr/bin/env bash
# Idempotent setup on a fresh Debian 12 machine (as root, or with sudo):
#   - apt: sip-tester (sipp) and kamailio for the SIP end-to-end tests, postgresql (server binaries) for the
#     database tests, python3-venv if venv is missing;
#   - .venv with Python 3.11/3.12 and `pip install -e '.[test,postgres]'`.
# Audio codecs need no system packages: the av (PyAV) wheels bundle FFmpeg with libopus/libvpx, and the
# pylibsrtp/cryptography wheels bundle libsrtp/OpenSSL.
# Works from any cwd. Env: PYTHON=/path/to/python3.11 to pick the interpreter.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
say() { printf '[setup] %s\n' "$*"; }

if [ "$(id -u)" -eq 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -n)
else
    SUDO=(false)  # apt steps will fail with a clear message below
fi

pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3.11 python3.12 python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)'; then
            command -v "$candidate"
            return 0
        fi
    done
    return 1
}

# --- system packages ---------------------------------------------------------------------------------------
apt_missing=()
command -v sipp >/dev/null 2>&1 || apt_missing+=(sip-tester)
# SRTP/TLS end-to-end tests: baresip (srtp module) as the peer, tcpdump to check the wire
[ -e /usr/lib/baresip/modules/srtp.so ] || apt_missing+=(baresip-core)
command -v tcpdump >/dev/null 2>&1 || [ -x /usr/bin/tcpdump ] || apt_missing+=(tcpdump)
command -v kamailio >/dev/null 2>&1 || [ -x /usr/sbin/kamailio ] || apt_missing+=(kamailio)
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || apt_missing+=(dnsmasq-base)  # tests: a local DNS server (RFC 3263)
# per-user SIP accounts over TLS: Kamailio's TLS listener (tls.so is packaged apart from kamailio)
compgen -G "/usr/lib/*/kamailio/modules/tls.so" >/dev/null || apt_missing+=(kamailio-tls-modules)
command -v rtpengine >/dev/null 2>&1 || [ -x /usr/bin/rtpengine ] || apt_missing+=(rtpengine-daemon)  # media.backend rtpengine tests
# PostgreSQL server binaries: the database tests run every table on a throwaway cluster as well as SQLite.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || apt_missing+=(postgresql)
# libopus: inline Opus <-> G.711 transcoding without codec threads (bridge/media/libopus.py; falls back to PyAV)
ldconfig -p 2>/dev/null | grep -q 'libopus\.so\.0' || apt_missing+=(libopus0)
PY=$(pick_python || true)
if [ -z "$PY" ]; then
    apt_missing+=(python3 python3-venv)
elif ! "$PY" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_missing+=(python3-venv)
fi
# the relay's compiled per-packet path (bridge/media/_fastrelay.c, built by pip through setup.py): a C compiler and
# the interpreter's headers (Debian's own python3 keeps them in python3-dev)
command -v cc >/dev/null 2>&1 || apt_missing+=(gcc libc6-dev)
if [ -n "$PY" ] && ! "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    apt_missing+=(python3-dev)
fi

if [ ${#apt_missing[@]} -gt 0 ]; then
    say "installing with apt-get: ${apt_missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if [ "$(id -u)" -ne 0 ] && ! sudo -n true 2>/dev/null; then
        say "ERROR: installing ${apt_missing[*]} needs root or passwordless sudo"
        exit 1
    fi
    # Another apt/dpkg (unattended-upgrades on a fresh cloud VM) may hold the lock: wait for it, visibly.
    if command -v fuser >/dev/null 2>&1 && "${SUDO[@]}" fuser /var/lib/dpkg/lock-frontend >/dev/null 2>&1; then
        say "another apt/dpkg process holds the lock; waiting for it (up to 10 minutes)"
    fi
    APT_WAIT=(-o DPkg::Lock::Timeout=600)
    if ! "${SUDO[@]}" apt-get "${APT_WAIT[@]}" update -qq; then
        say "ERROR: apt-get update failed (see above)"
        exit 1
    fi
    if ! "${SUDO[@]}" apt-get "${APT_WAIT[@]}" install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null; then
        say "ERROR: apt-get install ${apt_missing[*]} failed (see above)"
        exit 1
    fi
    PY=$(pick_python || true)
else
    say "system packages present: sipp, kamailio (+ tls module), postgresql, python venv"
fi
if [ -z "$PY" ]; then
    say "ERROR: no Python 3.11 or 3.12 found (set PYTHON=/path/to/python3.11)"
    exit 1
fi

# --- virtualenv --------------------------------------------------------------------------------------------
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 13) else 1)'; then
    say "creating .venv with $PY ($("$PY" --version 2>&1))"
    rm -rf .venv
    "$PY" -m venv .venv
else
    say ".venv exists ($(.venv/bin/python --version 2>&1))"
fi

# pip runs only when the package metadata or the C source changed since the last successful install (the editable
# install already follows Python code changes; the compiled module is rebuilt by pip). Its progress is shown one line per package; the full log is kept on failure.
STAMP=.venv/.setup-stamp
want=$(cat pyproject.toml setup.py bridge/media/_fastrelay.c scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && .venv/bin/python -c 'import importlib.metadata as m; m.version("matrix-sip-bridge")' 2>/dev/null; then
    say "python packages up to date (pyproject.toml, setup.py and the C source unchanged); skipping pip"
else
    PIP_LOG=$(mktemp)
    trap 'rm -f "$PIP_LOG"' EXIT
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    say "installing the package with its test and postgres extras into .venv (first run: a few minutes)"
    rc=0
    .venv/bin/python -m pip install --progress-bar off -e '.[test,postgres]' 2>&1 | tee "$PIP_LOG" | \
        { grep --line-buffered -E "^(Collecting|Successfully installed)" | sed -u 's/^/[setup]   /'; true; } || rc=$?
    if [ "$rc" -ne 0 ] || ! .venv/bin/python -c 'import importlib.metadata as m; m.version("matrix-sip-bridge")' 2>/dev/null; then
        cat "$PIP_LOG"
        say "ERROR: pip install failed"
        exit 1
    fi
    echo "$want" > "$STAMP"
fi
say "done: $REPO_ROOT/.venv ready ($(.venv/bin/python -c 'import aiortc, synapse; print(f"aiortc {aiortc.__version__}, synapse {synapse.__version__}")' 2>/dev/null || echo 'imports not checked'))"
