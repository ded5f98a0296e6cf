"""Outlier ejection: pure logic against a fake clock."""

from __future__ import annotations

import threading

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from health.outlier import OutlierConfig, OutlierDetector

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
NOT_FOUND = grpc.StatusCode.NOT_FOUND


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def detector(
    keys: tuple[str, ...] = ("a", "b", "c", "d"), **kw: object
) -> tuple[OutlierDetector[str], FakeClock]:
    clock = FakeClock()
    config = OutlierConfig(**{"consecutive_failures": 3, "base_ejection_time": 10.0, **kw})  # type: ignore[arg-type]
    det: OutlierDetector[str] = OutlierDetector(config, clock=clock)
    for k in keys:
        det.add(k)
    return det, clock


def fail(det: OutlierDetector[str], key: str, n: int) -> list[bool]:
    return [det.record(key, UNAVAILABLE) for _ in range(n)]


def test_consecutive_failures_eject_on_the_nth() -> None:
    det, _ = detector()
    assert fail(det, "a", 3) == [False, False, True]
    assert det.is_ejected("a")
    assert det.ejected() == ["a"]


def test_success_resets_the_run() -> None:
    det, _ = detector()
    fail(det, "a", 2)
    assert not det.record("a", OK)
    assert fail(det, "a", 2) == [False, False]
    assert not det.is_ejected("a")
    assert det.record("a", UNAVAILABLE)


def test_codes_outside_failure_codes_count_as_success() -> None:
    det, _ = detector()
    fail(det, "a", 2)
    det.record("a", NOT_FOUND)  # the server answered: not an endpoint failure
    assert fail(det, "a", 2) == [False, False]
    custom, _ = detector(failure_codes=frozenset({NOT_FOUND}))
    assert fail(custom, "a", 5) == [False] * 5
    assert [custom.record("a", NOT_FOUND) for _ in range(3)] == [False, False, True]


def test_failures_are_counted_per_endpoint() -> None:
    det, _ = detector()
    for _ in range(2):
        det.record("a", UNAVAILABLE)
        det.record("b", UNAVAILABLE)
    assert not det.is_ejected("a") and not det.is_ejected("b")
    assert det.record("b", UNAVAILABLE)


def test_ejection_expires_and_next_expiry() -> None:
    det, clock = detector()
    assert det.next_expiry() is None
    fail(det, "a", 3)
    assert det.next_expiry() == clock.now + 10.0
    clock.now += 9.9
    assert det.expired() == []
    clock.now += 0.1
    assert det.expired() == ["a"]
    assert not det.is_ejected("a")
    assert det.next_expiry() is None
    assert det.expired() == []


def test_expired_takes_an_explicit_now_and_orders_by_expiry() -> None:
    det, clock = detector(max_ejection_percent=100)
    fail(det, "b", 3)
    clock.now += 1
    fail(det, "a", 3)
    assert det.expired(now=clock.now + 100) == ["b", "a"]


def test_ejection_time_grows_and_is_capped() -> None:
    det, clock = detector(keys=("a", "b"), max_ejection_time=25.0)
    durations = []
    for _ in range(4):
        fail(det, "a", 3)
        until = det.next_expiry()
        assert until is not None
        durations.append(until - clock.now)
        clock.now = until
        assert det.expired() == ["a"]
    # 10, 20, then capped at 25 (times_ejected keeps growing: no time spent healthy).
    assert durations == [10.0, 20.0, 25.0, 25.0]
    assert det.times_ejected("a") == 4


def test_cap_is_at_least_base_time() -> None:
    det, clock = detector(keys=("a", "b"), base_ejection_time=10.0, max_ejection_time=5.0)
    fail(det, "a", 3)
    assert det.next_expiry() == clock.now + 10.0


def test_times_ejected_decays_one_per_base_interval_healthy() -> None:
    det, clock = detector(keys=("a", "b"))
    for _ in range(3):
        fail(det, "a", 3)
        clock.now = det.next_expiry() or 0.0
        det.expired()
    assert det.times_ejected("a") == 3
    clock.now += 9.9
    assert det.times_ejected("a") == 3
    clock.now += 0.1
    assert det.times_ejected("a") == 2
    clock.now += 10.0
    assert det.times_ejected("a") == 1
    # Ejected again now: multiplier 1 + 1 = 2.
    fail(det, "a", 3)
    assert det.next_expiry() == clock.now + 20.0
    clock.now += 1000
    det.expired()
    assert det.times_ejected("a") == 0  # never below zero


def test_decay_counts_from_the_end_of_the_ejection_not_from_polling() -> None:
    det, clock = detector(keys=("a", "b"))
    fail(det, "a", 3)
    end = det.next_expiry() or 0.0
    clock.now = end + 9.0  # noticed late
    assert det.expired() == ["a"]
    clock.now = end + 10.0
    assert det.times_ejected("a") == 0


def test_max_ejection_percent_is_strict() -> None:
    det, _ = detector(keys=("a", "b"), max_ejection_percent=50)
    assert fail(det, "a", 3)[-1]
    assert fail(det, "b", 10) == [False] * 10
    assert det.ejected() == ["a"]
    single, _ = detector(keys=("a",), max_ejection_percent=50)
    assert fail(single, "a", 10) == [False] * 10
    none, _ = detector(max_ejection_percent=0)
    assert fail(none, "a", 10) == [False] * 10
    everyone, _ = detector(keys=("a", "b"), max_ejection_percent=100)
    assert fail(everyone, "a", 3)[-1] and fail(everyone, "b", 3)[-1]


def test_refused_ejection_retries_on_next_failure_once_room_frees() -> None:
    det, clock = detector(keys=("a", "b"), max_ejection_percent=50)
    fail(det, "a", 3)
    fail(det, "b", 5)
    clock.now = det.next_expiry() or 0.0
    det.expired()
    assert det.record("b", UNAVAILABLE)  # its run was kept


def test_results_for_ejected_or_unknown_keys_are_ignored() -> None:
    det, _ = detector()
    fail(det, "a", 3)
    assert not det.record("a", UNAVAILABLE)
    assert not det.record("a", OK)
    assert not det.record("zzz", UNAVAILABLE)


def test_remove_and_update_keep_the_count_right() -> None:
    det, _ = detector(keys=("a", "b"), max_ejection_percent=50)
    fail(det, "a", 3)
    det.remove("a")
    det.remove("a")  # idempotent
    assert det.ejected() == []
    det.update(["b", "c"])
    assert fail(det, "b", 3)[-1]
    det.update(["c", "d"])
    assert det.ejected() == []
    assert fail(det, "c", 3)[-1]
    det.add("c")  # no-op: history kept
    assert det.is_ejected("c")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("consecutive_failures", 0),
        ("failure_codes", frozenset()),
        ("failure_codes", frozenset({grpc.StatusCode.OK})),
        ("failure_codes", frozenset({14})),
        ("base_ejection_time", 0.0),
        ("max_ejection_time", -1.0),
        ("max_ejection_percent", 101),
        ("max_ejection_percent", -1),
    ],
)
def test_config_validation_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        OutlierConfig(**{field: value})  # type: ignore[arg-type]


def test_defaults() -> None:
    cfg = OutlierConfig()
    assert cfg.consecutive_failures == 5
    assert grpc.StatusCode.DEADLINE_EXCEEDED in cfg.failure_codes
    assert cfg.ejection_cap == 300.0


def test_concurrent_records_eject_exactly_once() -> None:
    det, _ = detector(keys=("a", "b"), consecutive_failures=1000)
    results: list[bool] = []
    lock = threading.Lock()

    def worker() -> None:
        mine = fail(det, "a", 250)
        with lock:
            results.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results.count(True) == 1
    assert det.is_ejected("a")


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d", "e"]),
            st.sampled_from([OK, UNAVAILABLE, NOT_FOUND, "tick"]),
        ),
        max_size=200,
    ),
    st.sampled_from([0, 20, 40, 50, 100]),
)
def test_never_more_than_max_percent_ejected(
    events: list[tuple[str, object]], percent: int
) -> None:
    keys = ("a", "b", "c", "d", "e")
    det, clock = detector(keys=keys, consecutive_failures=2, max_ejection_percent=percent)
    for key, what in events:
        if what == "tick":
            clock.now += 7.0
            det.expired()
        else:
            assert isinstance(what, grpc.StatusCode)
            det.record(key, what)
        assert len(det.ejected()) * 100 <= percent * len(keys)
        expiry = det.next_expiry()
        assert (expiry is None) == (det.ejected() == [])


# -- counting ejections across removals and expiries; config boundaries ---------------------------


def test_the_cap_holds_after_ejections_expire_and_start_again() -> None:
    # 50 % of 5 endpoints: at most 2 out at once, round after round.
    det, clock = detector(keys=("a", "b", "c", "d", "e"), max_ejection_percent=50)
    for _ in range(3):
        assert [fail(det, k, 3)[-1] for k in ("a", "b", "c")] == [True, True, False]
        assert sorted(det.ejected()) == ["a", "b"]
        clock.now += 100.0
        assert sorted(det.expired()) == ["a", "b"]
        fail(det, "c", 3)  # its refused run went on; room now: ejected
        assert det.ejected() == ["c"]
        clock.now += 100.0
        det.expired()
    assert det.ejected() == []


def test_removing_ejected_endpoints_frees_exactly_their_places() -> None:
    det, _ = detector(keys=("a", "b", "c", "d", "e"), max_ejection_percent=50)
    fail(det, "a", 3)
    fail(det, "b", 3)
    det.remove("a")  # 1 of 4 ejected: one more fits (2 of 4), not two
    assert [fail(det, k, 3)[-1] for k in ("c", "d")] == [True, False]
    det.update(["b", "c", "d", "e", "f"])  # a no-op for the count: nothing ejected leaves
    assert not fail(det, "e", 3)[-1]  # 3 of 5 > 50 %
    det.update(["c", "d", "e", "f"])  # b (ejected) leaves: 1 of 4, one more fits
    fail(det, "d", 3)
    fail(det, "e", 3)
    assert sorted(det.ejected()) == ["c", "d"]


def test_an_expired_endpoint_needs_a_full_run_again() -> None:
    det, clock = detector(keys=("a", "b"))
    fail(det, "a", 3)
    clock.now += 10.0
    assert det.expired() == ["a"]
    assert fail(det, "a", 3) == [False, False, True]


def test_times_ejected_while_ejected_and_for_unknown_keys() -> None:
    det, clock = detector(keys=("a", "b"))
    assert det.times_ejected("nobody") == 0
    assert det.times_ejected("a") == 0
    clock.now += 500.0  # long after the endpoint was added: no decay while ejected
    fail(det, "a", 3)
    clock.now += 9.0
    assert det.times_ejected("a") == 1
    clock.now += 1.0
    det.expired()
    fail(det, "a", 3)  # again at once: second ejection, 20 s
    assert det.times_ejected("a") == 2
    assert det.next_expiry() == clock.now + 20.0


def test_expired_takes_keys_that_cannot_be_ordered() -> None:
    # Keys need only be hashable (subchannels are); simultaneous expiries must not compare them.
    clock = FakeClock()
    det: OutlierDetector[object] = OutlierDetector(
        OutlierConfig(consecutive_failures=1, max_ejection_percent=100), clock=clock
    )
    first, second = object(), object()
    det.update([first, second])
    det.record(first, UNAVAILABLE)
    det.record(second, UNAVAILABLE)
    clock.now += 30.0
    assert set(det.expired()) == {first, second}


def test_one_failure_can_be_enough() -> None:
    det, _ = detector(consecutive_failures=1)
    assert det.record("a", UNAVAILABLE)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("consecutive_failures", 0, r"^consecutive_failures: must be >= 1$"),
        ("consecutive_failures", True, r"^consecutive_failures: "),
        ("failure_codes", frozenset(), r"^failure_codes: must not be empty$"),
        ("failure_codes", frozenset({grpc.StatusCode.OK}), r"^failure_codes: OK is not"),
        ("failure_codes", frozenset({14}), r"^failure_codes: must be grpc\.StatusCode values$"),
        ("base_ejection_time", 0.0, r"^base_ejection_time: must be > 0$"),
        ("max_ejection_time", 0.0, r"^max_ejection_time: must be > 0$"),
        ("max_ejection_percent", 101, r"^max_ejection_percent: must be 0\.\.100$"),
    ],
)
def test_config_errors_start_with_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OutlierConfig(**{field: value})  # type: ignore[arg-type]


def test_config_boundaries_are_accepted() -> None:
    cfg = OutlierConfig(
        consecutive_failures=1,
        base_ejection_time=0.5,
        max_ejection_time=0.25,
        max_ejection_percent=0,
    )
    assert cfg.ejection_cap == 0.5
    assert OutlierConfig(max_ejection_percent=100).max_ejection_percent == 100


def test_any_iterable_of_codes_becomes_a_frozenset_so_configs_hash() -> None:
    cfg = OutlierConfig(failure_codes=[UNAVAILABLE, grpc.StatusCode.INTERNAL])  # type: ignore[arg-type]
    assert isinstance(cfg.failure_codes, frozenset)
    same = OutlierConfig(failure_codes={grpc.StatusCode.INTERNAL, UNAVAILABLE})  # type: ignore[arg-type]
    assert hash(cfg) == hash(same) and cfg == same


def test_an_expiry_time_ahead_of_the_clock_never_grows_the_multiplier() -> None:
    # expired(now=...) may be given a time later than the detector's own clock: the decay
    # then starts "in the future", which must not count as negative healthy time.
    det, clock = detector(keys=("a", "b"))
    fail(det, "a", 3)
    assert det.expired(now=clock.now + 50) == ["a"]
    assert det.times_ejected("a") == 1  # still 1 at the clock's (earlier) time
    fail(det, "a", 3)
    until = det.next_expiry()
    assert until is not None and until - clock.now == 20.0  # second ejection: 2x, not 3x


def test_ejections_total_counts_every_ejection_and_never_decreases() -> None:
    det, clock = detector(keys=("a", "b"), max_ejection_percent=50)
    assert det.ejections_total == 0
    fail(det, "a", 3)
    fail(det, "b", 3)  # refused by the cap: not an ejection
    assert det.ejections_total == 1
    clock.now = det.next_expiry() or 0.0
    assert det.expired() == ["a"]
    assert det.ejections_total == 1  # un-ejection does not count
    fail(det, "a", 3)
    det.remove("a")
    assert det.ejections_total == 2
