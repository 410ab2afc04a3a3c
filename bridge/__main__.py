"""Command line: run the bridge, generate the appservice registration, or check a config file."""

from __future__ import annotations

import argparse
import importlib.metadata
import re
import secrets
import sys
from importlib import resources
from pathlib import Path

import yaml

from bridge.config import (
    Config,
    ConfigError,
    build_registration,
    load_config,
    load_config_upgrade,
    parse_config,
    replace_tokens,
)
from bridge.config_secret import replace_provisioning_secret
from bridge.config_upgrade import Upgrade, upgrade_text


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bridge",
        description="Matrix <-> SIP voice bridge (Matrix application service).",
    )
    p.add_argument("-c", "--config", default="config.yaml", metavar="PATH",
                   help="config file (default: config.yaml; start from bridge/example-config.yaml)")
    p.add_argument("-g", "--generate-registration", action="store_true",
                   help="generate fresh as_token/hs_token (and provisioning.shared_secret and "
                        "bridge.accounts.encryption_key where they are still placeholders), write them into the "
                        "config file and write the appservice registration (see -r), then exit")
    p.add_argument("-r", "--registration", default="registration.yaml", metavar="PATH",
                   help="where -g writes the registration (default: registration.yaml)")
    p.add_argument("--generate-account-key", action="store_true",
                   help="write a random bridge.accounts.encryption_key into the config file if it is still the "
                        "\"generate\" placeholder (per-user SIP accounts), then exit (-g does this too)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the config (including that tokens were generated) and exit 0 if valid, 1 if not")
    p.add_argument("-e", "--example", action="store_true",
                   help="write the commented example config to the --config path (never overwrites), then exit")
    p.add_argument("--no-update", action="store_true",
                   help="do not write the upgraded config (new keys, renamed keys) back to the file on start; "
                        "the upgrade still applies in memory")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return p


def _version() -> str:
    try:
        return importlib.metadata.version("matrix-sip-bridge")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def write_example(config_path: Path) -> None:
    """Copy the packaged example config to ``config_path``; an existing file is never replaced."""
    example = resources.files("bridge").joinpath("example-config.yaml").read_text(encoding="utf-8")
    with config_path.open("x", encoding="utf-8") as f:
        f.write(example)


def generate_registration(config_path: Path, registration_path: Path) -> None:
    """Write new random tokens into the config file and a matching registration file (and a provisioning shared
    secret if it is still a placeholder)."""
    config = load_config(config_path)
    as_token, hs_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    registration = build_registration(config, as_token, hs_token)
    new_text = replace_tokens(config_path.read_text(encoding="utf-8"), as_token, hs_token)
    upgraded = upgrade_text(new_text, name=str(config_path))
    old_file = upgraded.changed and not isinstance((yaml.safe_load(new_text) or {}).get("provisioning"), dict)
    if old_file:
        # a file older than the provisioning API: write the upgrade now (as a start would, keeping a .bak) so the
        # block exists and gets its secret (and the accounts block its key) in this same run
        new_text = upgraded.text
    new_text = replace_provisioning_secret(new_text, secrets.token_urlsafe(32))  # only if still a placeholder
    # Re-validate the rewritten text before touching any file, so a failed rewrite leaves both files as they were.
    # (Through the in-memory upgrade, as load_config does: an old file with a renamed key is valid.)
    updated = parse_config(yaml.safe_load(upgrade_text(new_text, name=str(config_path)).text), config_path)
    if (updated.appservice.as_token, updated.appservice.hs_token) != (as_token, hs_token):
        raise ConfigError("appservice", "could not rewrite the token lines; set as_token/hs_token by hand")
    registration_path.write_text(yaml.safe_dump(registration, sort_keys=False), encoding="utf-8")
    if old_file:
        from bridge.config_upgrade import write_upgrade

        write_upgrade(config_path, Upgrade(data=None, text=new_text))
    else:
        config_path.write_text(new_text, encoding="utf-8")


_ACCOUNT_KEY_RE = re.compile(r'^(\s+encryption_key\s*:\s*)(["\']?)(generate|changeme|CHANGE_ME|)\2([ \t]*(?:#.*)?)$',
                             re.MULTILINE)


def generate_account_key(config_path: Path, *, required: bool) -> bool:
    """Replace a placeholder bridge.accounts.encryption_key in the file with a random key (text edit: comments
    and layout kept). False if there was no placeholder to replace (``required``: then a ConfigError)."""
    from bridge.db.credential_cipher import generate_key

    config = load_config(config_path)
    if config.bridge.accounts.key_configured:
        if required:
            raise ConfigError("bridge.accounts.encryption_key", "is already set; to rotate it, move it to "
                              "previous_keys and put a new key (this option prints none) in encryption_key")
        return False
    text = config_path.read_text(encoding="utf-8")
    new_text, count = _ACCOUNT_KEY_RE.subn(lambda m: f'{m.group(1)}"{generate_key()}"{m.group(4)}', text, count=1)
    if count == 0:
        if required:
            raise ConfigError("bridge.accounts.encryption_key", "no placeholder line found in the file (start the "
                              "bridge once to add the key, or set it by hand)")
        return False
    updated = parse_config(yaml.safe_load(upgrade_text(new_text, name=str(config_path)).text), config_path)
    if not updated.bridge.accounts.key_configured:
        raise ConfigError("bridge.accounts.encryption_key", "could not rewrite the key line; set it by hand")
    config_path.write_text(new_text, encoding="utf-8")
    return True


def save_upgrade(config_path: Path, upgrade: Upgrade, *, write: bool) -> None:
    """Log what the in-memory upgrade changed and, unless ``write`` is false, write it to the file. A file that
    cannot be written costs one warning: the bridge runs with the upgraded settings anyway."""
    import logging

    log = logging.getLogger("bridge.config")
    if not upgrade.changed:
        return
    for change in upgrade.changes:
        log.info("config upgrade: %s", change)
    if not write:
        log.info("config upgrade: %d change(s) applied in memory only (--no-update)", len(upgrade.changes))
        return
    from bridge.config_upgrade import write_upgrade

    try:
        backup = write_upgrade(config_path, upgrade)
    except OSError as e:
        log.warning("config upgrade: cannot write %s (%s); running with the upgraded settings in memory",
                    config_path, e.strerror or e)
        return
    log.info("config upgrade: wrote %s (previous version saved as %s)", config_path, backup)


def run(config: Config, upgrade: Upgrade | None = None, *, write_upgrade: bool = True) -> int:
    """Hand the validated config to ``bridge.app.run`` (the composition root, which also sets up logging)."""
    from bridge import app, event_loop  # imported here: --help and --check-config need none of aiortc/mautrix
    from bridge.logs import configure_logging

    configure_logging(config.logging)  # app.run does it again; here so the upgrade's lines are logged
    if upgrade is not None and config.path is not None:
        save_upgrade(config.path, upgrade, write=write_upgrade)
    try:
        return int(event_loop.run(app.run(config)) or 0)
    except KeyboardInterrupt:  # before the signal handlers were installed
        return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config_path = Path(args.config)
    if args.example:
        try:
            write_example(config_path)
        except FileExistsError:
            print(f"{config_path} exists; not overwriting it (remove it or pick another -c path)", file=sys.stderr)
            return 1
        except OSError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"wrote the example config to {config_path}; edit it (see README 'Configure'), then run -g")
        return 0
    try:
        if args.generate_registration:
            generate_registration(config_path, Path(args.registration))
            keyed = generate_account_key(config_path, required=False)
            print(f"wrote new tokens{' and an account encryption key' if keyed else ''} to {config_path} and the "
                  f"registration to {args.registration}; add it to the homeserver's app_service_config_files and "
                  "restart the homeserver")
            return 0
        if args.generate_account_key:
            generate_account_key(config_path, required=True)
            print(f"wrote a new bridge.accounts.encryption_key to {config_path}; keep it secret and backed up")
            return 0
        config, upgrade = load_config_upgrade(config_path)
        config.check_tokens()
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.check_config:
        # Never writes: the upgrade is only reported (a start applies it).
        print(f"{config_path}: OK")
        if upgrade.changed:
            print(f"{config_path}: {len(upgrade.changes)} upgrade(s) that a start will write to the file "
                  "(they already apply): " + "; ".join(upgrade.changes))
        return 0
    return run(config, upgrade, write_upgrade=not args.no_update)


if __name__ == "__main__":
    sys.exit(main())
