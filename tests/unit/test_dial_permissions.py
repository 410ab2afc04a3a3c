"""bridge.dial_permissions (call/dial_permissions.py): the most specific entry that sets a field wins; per-user
concurrency reaches the call limiter; the config keys are validated."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.call.dial_permissions import DialPermissions
from bridge.call.limits import CallLimiter, CallLimits
from bridge.config import ConfigError, DialPermissionRule, parse_config
from bridge.db.credential_cipher import generate_key

RULES = {
    "*": DialPermissionRule(blocked=("^1900",)),
    "user": DialPermissionRule(blocked=("^1900", "^44"), concurrent_calls=2),
    "admin": DialPermissionRule(blocked=()),
    "@bob:x": DialPermissionRule(allowed=("^1555",), concurrent_calls=1),
}


def perms(rules: Any = RULES) -> DialPermissions:
    return DialPermissions(rules, allowed=(".*",), blocked=(r"^1900\d*$",), concurrent_calls=3)


def test_level_entry_applies_to_users_of_that_level() -> None:
    p = perms()
    assert p.check("@alice:x", "user", "442071234567") == "+442071234567 is blocked by your dial permissions"
    assert p.check("@alice:x", "user", "15551234567") is None
    assert p.concurrent_calls("@alice:x", "user") == 2


def test_admin_entry_unblocks_and_falls_back_per_field() -> None:
    p = perms()
    assert p.check("@root:x", "admin", "19005550100") is None  # admin: blocked = []
    assert p.concurrent_calls("@root:x", "admin") == 3  # not set for admins: bridge.limits


def test_user_entry_beats_level_entry_field_by_field() -> None:
    p = perms()
    assert p.check("@bob:x", "user", "15551234567") is None
    assert p.check("@bob:x", "user", "16175550100") == "+16175550100 is not allowed by your dial permissions"
    assert p.check("@bob:x", "user", "442071234567") is not None  # blocked still inherited from "user"
    assert p.concurrent_calls("@bob:x", "user") == 1


def test_without_entries_the_dialplan_and_limits_apply() -> None:
    p = perms({})
    assert p.check("@a:x", "user", "19005550100") == "+19005550100 is blocked by the bridge's dial plan"
    assert p.check("@a:x", "user", "15551234567") is None and p.concurrent_calls("@a:x", "user") == 3


def test_per_user_concurrency_overrides_the_global_limit() -> None:
    limiter = CallLimiter(CallLimits(concurrent_calls=3), lambda: 0.0)
    assert limiter.admit("@bob:x", "c1", 1) is None
    refusal = limiter.admit("@bob:x", "c2", 1)
    assert refusal is not None and refusal.limit == "user_concurrency"
    assert limiter.admit("@alice:x", "c3") is None and limiter.admit("@alice:x", "c4") is None
    nobody = limiter.admit("@eve:x", "c5", 0)
    assert nobody is not None and "may not place phone calls" in nobody.notice


def base(**bridge: Any) -> dict[str, Any]:
    return {"homeserver": {"domain": "x"}, "bridge": bridge}


def test_config_keys_parse_and_reject_mistakes() -> None:
    cfg = parse_config(base(dial_permissions={"user": {"blocked": ["^44"], "concurrent_calls": 2},
                                              "@bob:x": {"allowed": ["^1555"]}},
                            accounts={"shared_trunk": "admin"}))
    assert cfg.bridge.dial_permissions["user"] == DialPermissionRule(blocked=("^44",), concurrent_calls=2)
    assert cfg.bridge.dial_permissions["@bob:x"].allowed == ("^1555",)
    assert cfg.bridge.accounts.shared_trunk == "admin" and not cfg.bridge.accounts.key_configured
    key = generate_key()
    keyed = parse_config(base(accounts={"encryption_key": key, "previous_keys": [generate_key()]}))
    assert keyed.bridge.accounts.key_configured and key not in repr(keyed.bridge.accounts)
    assert parse_config(base(accounts={"register_expires": 5})).bridge.accounts.register_expires == 5  # tests
    for bad, key in [(base(dial_permissions={"users": {}}), "bridge.dial_permissions.users"),
                     (base(dial_permissions={"user": {"blocked": ["("]}}), "bridge.dial_permissions.user.blocked[0]"),
                     (base(dial_permissions={"user": {"limit": 1}}), "bridge.dial_permissions.user.limit"),
                     (base(accounts={"shared_trunk": "everyone"}), "bridge.accounts.shared_trunk"),
                     (base(accounts={"encryption_key": "short"}), "bridge.accounts.encryption_key"),
                     (base(accounts={"register_expires": 4}), "bridge.accounts.register_expires")]:
        with pytest.raises(ConfigError) as err:
            parse_config(bad)
        assert err.value.key == key


def test_check_anyone_refuses_only_what_no_user_may_dial() -> None:
    """For /thirdparty look-ups (no user named): a number resolves if some user or level may dial it."""
    p = perms()
    assert p.check_anyone("442071234567") is None  # blocked for users, but admins may
    assert p.check_anyone("15551234567") is None
    strict = perms({"*": DialPermissionRule(blocked=("^44",)), "@bob:x": DialPermissionRule(allowed=("^1555",))})
    assert strict.check_anyone("442071234567") == "+442071234567 is blocked by your dial permissions"
    assert strict.check_anyone("16175550100") is None  # bob may not, everybody else may
    unblocked = perms({"*": DialPermissionRule(blocked=("^44",)), "@eve:x": DialPermissionRule(blocked=())})
    assert unblocked.check_anyone("442071234567") is None  # eve may


def test_thirdparty_lookup_applies_dial_permissions_that_hold_for_everybody() -> None:
    from pathlib import Path

    import yaml

    from bridge.matrix.ghosts import Ghosts
    from bridge.matrix.thirdparty import ThirdParty

    data = yaml.safe_load((Path(__file__).resolve().parents[2] / "bridge" / "example-config.yaml").read_text())
    data["homeserver"]["domain"] = "x"
    data["bridge"]["dial_permissions"] = {"*": {"blocked": ["^44"]}, "admin": {"blocked": []}}
    tp = ThirdParty(parse_config(data), Ghosts(None, parse_config(data), None))  # type: ignore[arg-type]
    assert tp.lookup("m.protocol.pstn", "+44 20 7946 0000") != []  # admins may dial it
    data["bridge"]["dial_permissions"] = {"*": {"blocked": ["^44"]}}
    tp = ThirdParty(parse_config(data), Ghosts(None, parse_config(data), None))  # type: ignore[arg-type]
    assert tp.lookup("m.protocol.pstn", "+44 20 7946 0000") == []  # nobody may
    assert tp.lookup("m.protocol.pstn", "+1 555 123 4567")[0]["fields"] == {"m.id.phone": "+15551234567"}
