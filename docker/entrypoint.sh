#!/bin/sh
# Container entrypoint of matrix-sip-bridge (POSIX sh). Does what mautrix bridge images do:
#
#   1. started as root (the default): make $DATA_DIR (the /data volume) belong to $BRIDGE_UID:$BRIDGE_GID,
#      then re-run this script as that user (setpriv); the bridge itself never runs as root. Started as
#      another user already (docker run --user ...): nothing is chowned, the script just goes on.
#   2. no config yet: write the commented example config to $DATA_DIR/config.yaml, say what to edit and
#      what to run next, and exit 1 (the bridge cannot run on the example's values).
#   3. otherwise run `python -m bridge` in $DATA_DIR with the arguments given (`-c $DATA_DIR/config.yaml` is
#      added unless a -c/--config is given; `-g` alone writes $DATA_DIR/registration.yaml).
#      A first argument that is not an option is run as a command instead (e.g. `sh`), as that user.
#
# Settings (environment; the defaults are the image's):
#   DATA_DIR=/data  BRIDGE_UID=1000  BRIDGE_GID=$BRIDGE_UID  PYTHON=python  SETPRIV=setpriv
set -eu

DATA_DIR="${DATA_DIR:-/data}"
BRIDGE_UID="${BRIDGE_UID:-1000}"
BRIDGE_GID="${BRIDGE_GID:-$BRIDGE_UID}"
PYTHON="${PYTHON:-python}"
SETPRIV="${SETPRIV:-setpriv}"

say() { printf 'matrix-sip-bridge: %s\n' "$*" >&2; }

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$DATA_DIR"
    # Only what is not already theirs (an admin's `cp` as root, or a volume created by Docker as root).
    find "$DATA_DIR" \( ! -user "$BRIDGE_UID" -o ! -group "$BRIDGE_GID" \) -exec chown -h "$BRIDGE_UID:$BRIDGE_GID" {} +
    export HOME="$DATA_DIR"
    exec "$SETPRIV" --reuid="$BRIDGE_UID" --regid="$BRIDGE_GID" --clear-groups -- sh "$0" "$@"
fi

cd "$DATA_DIR" || { say "cannot enter $DATA_DIR (uid $(id -u)); mount a writable directory there"; exit 1; }

case "${1:-}" in
    "" | -*) ;;
    *) exec "$@" ;;
esac

# The config the bridge will use: the last -c/--config given, else $DATA_DIR/config.yaml (added below).
config=""
want_value=0
bootstrap=1
generate=0
registration=0
for arg in "$@"; do
    if [ "$want_value" = 1 ]; then config="$arg"; want_value=0; continue; fi
    case "$arg" in
        -c | --config) want_value=1 ;;
        --config=*) config="${arg#--config=}" ;;
        -e | --example | -h | --help | --version) bootstrap=0 ;;
        -g | --generate-registration) generate=1 ;;
        -r | --registration | --registration=*) registration=1 ;;
    esac
done
if [ -z "$config" ]; then
    config="$DATA_DIR/config.yaml"
    set -- -c "$config" "$@"
fi
if [ "$generate" = 1 ] && [ "$registration" = 0 ]; then
    set -- "$@" -r "$DATA_DIR/registration.yaml"
fi

if [ "$bootstrap" = 1 ] && [ ! -e "$config" ]; then
    "$PYTHON" -m bridge -c "$config" -e >/dev/null
    say "there was no config, so the commented example config was written to $config"
    say "(in the data volume, e.g. ./data/config.yaml on the host). Edit it, at least:"
    say "  homeserver.address, homeserver.domain    how the bridge reaches your homeserver, and its server name"
    say "  appservice.address, appservice.hostname  how the homeserver reaches the bridge (hostname 0.0.0.0 unless"
    say "                                           the container uses --network host)"
    say "  bridge.permissions, sip.trunk.*, sip.inbound.*, media.*"
    say "then run the image with -g: it writes the tokens into the config and $DATA_DIR/registration.yaml,"
    say "which the homeserver must load (app_service_config_files); then run the image without arguments."
    exit 1
fi

exec "$PYTHON" -m bridge "$@"
