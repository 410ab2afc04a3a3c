# matrix-sip-bridge runtime image (no test extras).
#
#   docker build -t matrix-sip-bridge .
#   # once: write tokens into the config and create the appservice registration for the homeserver
#   docker run --rm -v "$PWD/data:/data" matrix-sip-bridge -c /data/config.yaml -g -r /data/registration.yaml
#   docker run -d --name sip-bridge --network host -v "$PWD/data:/data" matrix-sip-bridge
#
# /data (volume) holds config.yaml (start from bridge/example-config.yaml), the registration and, with the
# default SQLite database path, the database; it is also the working directory, so relative paths in the
# config resolve there.
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
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/matrix-sip-bridge
# Binary wheels (av bundles FFmpeg with Opus, pylibsrtp bundles libsrtp) need no build tools or system libs.
# README.md* : copied when present (pyproject names it as the readme).
COPY pyproject.toml README.md* ./
COPY bridge ./bridge
# postgres extra: asyncpg, for database: postgres://... (SQLite needs nothing more)
RUN pip install --no-compile '.[postgres]' \
    && useradd --system --uid 1000 --home-dir /data --shell /usr/sbin/nologin bridge \
    && mkdir -p /data && chown bridge:bridge /data

USER bridge
WORKDIR /data
VOLUME ["/data"]
EXPOSE 29350/tcp 5060/udp 5060/tcp 16384-16484/udp

ENTRYPOINT ["python", "-m", "bridge"]
CMD ["-c", "/data/config.yaml"]
