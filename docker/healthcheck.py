"""Container health check (Dockerfile HEALTHCHECK): exit 0 if the bridge's appservice HTTP listener answers.

The bridge has no readiness endpoint yet, so this POSTs to /_matrix/app/v1/ping without a token: a running
bridge answers 401 (missing hs_token). That proves the process is up, its HTTP listener is bound and its event
loop responds; it does not prove that the homeserver or the SIP trunk can be reached (see the bridge log).

The address comes from the config the bridge uses (BRIDGE_CONFIG, default /data/config.yaml, with the same
MATRIX_SIP_BRIDGE_* environment overrides): appservice.hostname (a wildcard means loopback) and appservice.port.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from bridge.config import ConfigError, load_config


def ping_url(hostname: str, port: int) -> str:
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(hostname, hostname)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/_matrix/app/v1/ping"


def check(config_path: str, timeout: float = 5.0) -> tuple[bool, str]:
    try:
        config = load_config(config_path)
    except ConfigError as e:
        return False, str(e)
    url = ping_url(config.appservice.hostname, config.appservice.port)
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=b"{}", method="POST"), timeout=timeout) as r:
            status = r.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError as e:
        return False, f"{url}: {e}"
    if status in (401, 403):
        return True, f"{url} answered {status} (appservice listener up)"
    return False, f"{url} answered {status}, expected 401 without a token"


def main() -> int:
    ok, message = check(os.environ.get("BRIDGE_CONFIG", "/data/config.yaml"))
    print(message)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
