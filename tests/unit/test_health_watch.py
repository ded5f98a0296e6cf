"""The sans-I/O core of the health watchers: verdicts, transitions, backoff."""

from __future__ import annotations

import grpc
import pytest

from health.watch import Backoff, HealthVerdict, Transition, WatchState, verdict_for_status

SERVING, NOT_SERVING, SERVICE_UNKNOWN, UNKNOWN = 1, 2, 3, 0


def state(**kw: float) -> WatchState:
    return WatchState(Backoff(initial=1.0, maximum=10.0, multiplier=2.0, jitter=0.0, **kw))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (SERVING, HealthVerdict.HEALTHY),
        (NOT_SERVING, HealthVerdict.UNHEALTHY),
        (SERVICE_UNKNOWN, HealthVerdict.UNHEALTHY),
        (UNKNOWN, HealthVerdict.UNHEALTHY),
        (99, HealthVerdict.UNHEALTHY),
    ],
)
def test_status_to_verdict(status: int, verdict: HealthVerdict) -> None:
    assert verdict_for_status(status)[0] is verdict


def test_reasons_name_the_status() -> None:
    assert "NOT_SERVING" in verdict_for_status(NOT_SERVING)[1]
    assert "SERVICE_UNKNOWN" in verdict_for_status(SERVICE_UNKNOWN)[1]


def test_transitions_only_on_change() -> None:
    s = state()
    assert s.verdict is HealthVerdict.PENDING
    s.stream_started()
    assert s.on_message(SERVING) == Transition(HealthVerdict.HEALTHY, "SERVING")
    assert s.on_message(SERVING) is None
    t = s.on_message(NOT_SERVING)
    assert t is not None and t.verdict is HealthVerdict.UNHEALTHY
    assert s.on_message(SERVICE_UNKNOWN) is None  # still UNHEALTHY
    assert s.on_message(SERVING) is not None


def test_broken_stream_is_unhealthy_with_reason_and_backs_off() -> None:
    s = state()
    s.stream_started()
    t, delay = s.on_stream_end(grpc.StatusCode.UNAVAILABLE, "connection refused")
    assert t == Transition(
        HealthVerdict.UNHEALTHY, "health-check stream failed: UNAVAILABLE: connection refused"
    )
    assert delay == 1.0
    delays = []
    for _ in range(5):
        s.stream_started()
        t, d = s.on_stream_end(grpc.StatusCode.UNAVAILABLE, "again")
        assert t is None  # already UNHEALTHY
        delays.append(d)
    assert delays == [2.0, 4.0, 8.0, 10.0, 10.0]
    assert s.attempts == 6


def test_stream_closed_by_server_is_unhealthy() -> None:
    s = state()
    s.stream_started()
    s.on_message(SERVING)
    t, delay = s.on_stream_end(grpc.StatusCode.OK, "")
    assert t == Transition(HealthVerdict.UNHEALTHY, "health-check stream closed by the server")
    assert delay == 0.0  # it had answered: reopen at once (A17)


def test_an_answer_resets_the_backoff() -> None:
    s = state()
    for _ in range(3):
        s.stream_started()
        s.on_stream_end(grpc.StatusCode.UNAVAILABLE, "")
    s.stream_started()
    s.on_message(SERVING)
    _, delay = s.on_stream_end(grpc.StatusCode.UNAVAILABLE, "")
    assert delay == 0.0
    s.stream_started()
    _, delay = s.on_stream_end(grpc.StatusCode.UNAVAILABLE, "")
    assert delay == 1.0  # from the start again


def test_unimplemented_disables_and_stops() -> None:
    s = state()
    s.stream_started()
    t, delay = s.on_stream_end(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
    assert t is not None and t.verdict is HealthVerdict.DISABLED
    assert delay is None


def test_backoff_jitter_stays_within_bounds() -> None:
    values = iter([0.0, 1.0, 0.5])
    b = Backoff(initial=1.0, maximum=100.0, multiplier=2.0, jitter=0.2, rng=lambda: next(values))
    assert b.next_delay() == pytest.approx(0.8)
    assert b.next_delay() == pytest.approx(2.4)
    assert b.next_delay() == pytest.approx(4.0)
    b.reset()
    b.rng = lambda: 0.5
    assert b.next_delay() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0.0},
        {"initial": 2.0, "maximum": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.0},
    ],
)
def test_backoff_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)  # type: ignore[arg-type]
