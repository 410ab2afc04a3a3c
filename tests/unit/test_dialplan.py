"""Number normalisation, dial rules, display formatting and inbound routing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.call.dialplan import check_dial, format_number, normalize_number, route_users
from bridge.config import DialplanConfig, InboundRoute

NANP = DialplanConfig()
UK = DialplanConfig(default_country_code="44", national_prefix="0", national_number_length=0,
                    international_prefixes=("00",), allowed=(".*",), blocked=())


@pytest.mark.parametrize(
    "raw",
    [
        "+1 (555) 123-4567", "15551234567", "5551234567", "555.123.4567", "1-555-123-4567", "+1 555 123 4567",
        "tel:+1-555-123-4567", "tel:+15551234567;phone-context=example.org",
        "sip:+15551234567@trunk.example;user=phone",
        "sips:15551234567@[::1]:5061", "\"Alice\" <sip:5551234567@trunk.example>", "011 1 555 123 4567",
        "001 555 123 4567", " +1\u00a0555\u00a0123\u00a04567 ",
    ],
)
def test_nanp_spellings_normalise_to_e164_digits(raw: str) -> None:
    assert normalize_number(raw, NANP) == "15551234567"


@pytest.mark.parametrize(
    "raw", ["", "   ", "abc", "555-CALL-NOW", "+", "+0123456", "12", "1234567890123456", "sip:trunk.example",
            "*69", "#31#5551234567", "++15551234567", "١٥٥٥١٢٣٤٥٦٧"],
)
def test_garbage_is_rejected(raw: str) -> None:
    assert normalize_number(raw, NANP) is None


def test_national_prefix_is_replaced_by_the_country_code() -> None:
    assert normalize_number("020 7946 0958", UK) == "442079460958"
    assert normalize_number("0044 20 7946 0958", UK) == "442079460958"
    assert normalize_number("442079460958", UK) == "442079460958"


def test_short_codes_pass_through() -> None:
    assert normalize_number("911", NANP) == "911"


def test_blocked_is_checked_before_allowed() -> None:
    plan = DialplanConfig(allowed=(".*",), blocked=(r"^1900\d*$",))
    assert check_dial("19005551234", plan) == "+19005551234 is blocked by the bridge's dial plan"
    assert check_dial("15551234567", plan) is None


def test_number_must_match_an_allowed_pattern() -> None:
    plan = DialplanConfig(allowed=(r"^1\d{10}$",), blocked=())
    assert check_dial("442079460958", plan) == "+442079460958 is not allowed by the bridge's dial plan"
    assert check_dial("15551234567", plan) is None


def test_format_number_groups_nanp_and_others() -> None:
    assert format_number("15551234567") == "+1 555 123 4567"
    assert format_number("442079460958") == "+44 20 7946 0958"
    assert format_number("999") == "+999"


def test_routes_exact_beats_prefix_and_longest_prefix_wins() -> None:
    routes = (
        InboundRoute(users=("@short:x",), prefix="1"),
        InboundRoute(users=("@long:x",), prefix="1555"),
        InboundRoute(users=("@exact:x",), number="15551234567"),
    )
    assert route_users("15551234567", routes, ()) == ("@exact:x",)
    assert route_users("15559999999", routes, ()) == ("@long:x",)
    assert route_users("12125551234", routes, ()) == ("@short:x",)
    assert route_users("442079460958", routes, ("@default:x",)) == ("@default:x",)
    assert route_users("442079460958", routes, ()) == ()


@given(st.text(max_size=40))
def test_normalize_never_raises_and_returns_plain_e164_digits(raw: str) -> None:
    result = normalize_number(raw, NANP)
    assert result is None or (result.isdigit() and result.isascii() and 3 <= len(result) <= 15
                              and not result.startswith("0"))


@given(st.from_regex(r"\A[2-9][0-9]{2}[2-9][0-9]{6}\Z"))
def test_every_ten_digit_nanp_number_round_trips_through_format(national: str) -> None:
    digits = normalize_number(national, NANP)
    assert digits == "1" + national
    assert normalize_number(format_number(digits), NANP) == digits
