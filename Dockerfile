# matrix-sip-bridge runtime image (no test extras). The README's "Docker" section has the steps:
#
#   docker build -t matrix-sip-bridge .
#   docker run --rm -v "$PWD/data:/data" matrix-sip-bridge      # 1st run: writes data/config.yaml, exits
#   $EDITOR data/config.yaml
#   docker run --rm -v "$PWD/data:/data" matrix-sip-bridge -g   # tokens + data/registration.yaml
#   docker run -d --name sip-bridge --network host -v "$PWD/data:/data" matrix-sip-bridge
#
# The entrypoint (docker/entrypoint.sh) starts as root only to give /data to uid 1000 (an admin's files copied
# in as root, a volume Docker created as root), then drops to that user with setpriv. tini is PID 1, so SIGTERM
# (docker stop) reaches the bridge, which ends its calls and exits within seconds.
#
# /data (volume) holds config.yaml, registration.yaml and, with the default SQLite path, the database; it is the
# working directory, and relative paths in the config resolve there.
#
# Ports (defaults of example-config.yaml; change them there and here together):
#   29350/tcp         appservice HTTP listener (the homeserver pushes transactions here); set
#                     appservice.hostname to 0.0.0.0 in the config to reach it from outside the container
#   5060/udp 5060/tcp SIP listeners (sip.listen)
#   16384-16484/udp   RTP towards the SIP side (media.port_start..port_end)
# The WebRTC leg (aiortc/aioice) binds ephemeral UDP ports that cannot be confined to a range, so use
# --network host (as above) or a TURN server in media.ice_servers for calls to work behind Docker's NAT.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DATA_DIR=/data \
    BRIDGE_UID=1000 \
    BRIDGE_GID=1000

# tini: an init as PID 1 that forwards signals and reaps children. setpriv (dropping root) is in util-linux,
# which the image already has.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini libopus0 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 1000 bridge \
    && useradd --system --uid 1000 --gid 1000 --home-dir /data --shell /usr/sbin/nologin bridge \
    && mkdir -p /data && chown bridge:bridge /data

WORKDIR /opt/matrix-sip-bridge

# Dependency layer: rebuilt only when pyproject.toml changes, not on every code change. Binary wheels (av
# bundles FFmpeg with Opus, pylibsrtp bundles libsrtp) need no build tools or system libraries.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['postgres']))" > /tmp/requirements.txt \
    && pip install --no-compile -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Code layer. README.md and LICENSE are named by pyproject.toml (readme, license-files).
# setup.py builds the relay's compiled per-packet path (bridge/media/_fastrelay.c): gcc only for that step.
COPY README.md LICENSE setup.py ./
COPY bridge ./bridge
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-compile --no-deps . \
    && (cd / && python -c "import bridge.media._fastrelay") \
    && apt-get purge -y --auto-remove gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* build ./*.egg-info
COPY docker/entrypoint.sh /usr/local/bin/docker-entrypoint.sh
COPY docker/healthcheck.py /usr/local/lib/matrix-sip-bridge/healthcheck.py
RUN chmod 755 /usr/local/bin/docker-entrypoint.sh

WORKDIR /data
VOLUME ["/data"]
EXPOSE 29350/tcp 5060/udp 5060/tcp 16384-16484/udp

# Liveness: the appservice listener answers (401 without a token). Not readiness: it does not check that the
# homeserver or the SIP trunk are reachable (the bridge has no readiness endpoint yet).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/matrix-sip-bridge/healthcheck.py"]

# Starts as root (see above); the bridge runs as uid 1000. `docker run --user 1000:1000 ...` also works if /data
# is already writable by that user (nothing is chowned then).
ENTRYPOINT ["tini", "--", "/usr/local/bin/docker-entrypoint.sh"]
CMD []
