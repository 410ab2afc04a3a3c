import pytest

from bridge.call.reasons import (
    lifetime_expired_to_matrix,
    matrix_hangup_before_answer_to_sip,
    media_failure_reason,
    sip_failure_to_matrix,
    transport_failure_to_matrix,
)


@pytest.mark.parametrize(
    ("status", "reason", "has_notice"),
    [
        (486, "user_busy", False),
        (600, "user_busy", False),
        (404, "unknown_error", True),
        (484, "unknown_error", True),
        (604, "unknown_error", True),
        (408, "invite_timeout", True),
        (480, "invite_timeout", True),
        (500, "unknown_error", True),
        (503, "unknown_error", True),
        (488, "unknown_error", True),
    ],
)
def test_sip_failure_maps_to_matrix_reason(status: int, reason: str, has_notice: bool) -> None:
    v1 = sip_failure_to_matrix(status, "1")
    assert v1.kind == "reject" and v1.reason == reason
    assert (v1.notice is not None) == has_notice
    v0 = sip_failure_to_matrix(status, 0)
    assert v0.kind == "hangup" and v0.reason == reason


def test_sip_603_is_a_plain_reject_for_version_1_and_a_hangup_for_version_0() -> None:
    v1 = sip_failure_to_matrix(603, "1")
    assert (v1.kind, v1.reason) == ("reject", None)
    assert v1.notice and "declined" in v1.notice
    assert sip_failure_to_matrix(603, 0).kind == "hangup"


def test_not_found_notice_names_number_and_status() -> None:
    ending = sip_failure_to_matrix(404, "1")
    assert ending.notice is not None
    text = ending.notice.format(number="+1 555 123 4567", status="404 Not Found")
    assert text == "+1 555 123 4567 is not reachable: 404 Not Found"


def test_timeouts_and_transport_failures() -> None:
    assert lifetime_expired_to_matrix("1").reason == "invite_timeout"
    assert lifetime_expired_to_matrix(0).kind == "hangup"
    assert transport_failure_to_matrix("1", timeout=True).reason == "unknown_error"


def test_matrix_hangup_before_answer_maps_busy_to_486_else_480() -> None:
    assert matrix_hangup_before_answer_to_sip("user_busy") == (486, "Busy Here")
    assert matrix_hangup_before_answer_to_sip("user_hangup")[0] == 480
    assert matrix_hangup_before_answer_to_sip(None)[0] == 480


def test_media_failure_reason_depends_on_whether_media_flowed() -> None:
    assert media_failure_reason(False) == "ice_failed"
    assert media_failure_reason(True) == "ice_timeout"


def test_fork_finals_prefer_decline_then_busy_then_no_answer() -> None:
    from bridge.call.reasons import aggregate_fork_finals

    assert aggregate_fork_finals([480, 603]) == (603, "Decline")
    assert aggregate_fork_finals([480, 486]) == (486, "Busy Here")
    assert aggregate_fork_finals([480, 480]) == (480, "Temporarily Unavailable")
    assert aggregate_fork_finals([500, 503])[0] == 500


def test_fork_finals_keep_503_when_every_branch_found_the_homeserver_unreachable() -> None:
    from bridge.call.reasons import aggregate_fork_finals

    assert aggregate_fork_finals([503, 503]) == (503, "Service Unavailable")
    assert aggregate_fork_finals([503]) == (503, "Service Unavailable")
    assert aggregate_fork_finals([480, 503]) == (480, "Temporarily Unavailable")
