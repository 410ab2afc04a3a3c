"""Command line: run the bridge, generate the appservice registration, or check a config file."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import secrets
import sys
from pathlib import Path

import yaml

from bridge.config import Config, ConfigError, build_registration, load_config, parse_config, replace_tokens


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bridge",
        description="Matrix <-> SIP voice bridge (Matrix application service).",
    )
    p.add_argument("-c", "--config", default="config.yaml", metavar="PATH",
                   help="config file (default: config.yaml; start from bridge/example-config.yaml)")
    p.add_argument("-g", "--generate-registration", action="store_true",
                   help="generate fresh as_token/hs_token, write them into the config file and write the "
                        "appservice registration (see -r), then exit")
    p.add_argument("-r", "--registration", default="registration.yaml", metavar="PATH",
                   help="where -g writes the registration (default: registration.yaml)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the config (including that tokens were generated) and exit 0 if valid, 1 if not")
    return p


def generate_registration(config_path: Path, registration_path: Path) -> None:
    """Write new random tokens into the config file and a matching registration file."""
    config = load_config(config_path)
    as_token, hs_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    registration = build_registration(config, as_token, hs_token)
    new_text = replace_tokens(config_path.read_text(encoding="utf-8"), as_token, hs_token)
    # Re-validate the rewritten text before touching any file, so a failed rewrite leaves both files as they were.
    updated = parse_config(yaml.safe_load(new_text), config_path)
    if (updated.appservice.as_token, updated.appservice.hs_token) != (as_token, hs_token):
        raise ConfigError("appservice", "could not rewrite the token lines; set as_token/hs_token by hand")
    registration_path.write_text(yaml.safe_dump(registration, sort_keys=False), encoding="utf-8")
    config_path.write_text(new_text, encoding="utf-8")


def run(config: Config) -> int:
    """Hand the validated config to ``bridge.app.run`` (the composition root, which also sets up logging)."""
    try:
        app = importlib.import_module("bridge.app")
    except ModuleNotFoundError as e:
        if e.name != "bridge.app":
            raise
        print("matrix-sip-bridge: bridge/app.py is not part of this build yet; nothing to run "
              "(config is valid)", file=sys.stderr)
        return 2
    try:
        return int(asyncio.run(app.run(config)) or 0)
    except KeyboardInterrupt:  # before the signal handlers were installed
        return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config_path = Path(args.config)
    try:
        if args.generate_registration:
            generate_registration(config_path, Path(args.registration))
            print(f"wrote new tokens to {config_path} and the registration to {args.registration}; "
                  "add it to the homeserver's app_service_config_files and restart the homeserver")
            return 0
        config = load_config(config_path)
        config.check_tokens()
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.check_config:
        print(f"{config_path}: OK")
        return 0
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
