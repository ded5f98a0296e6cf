"""``balancers.RetryPolicy``: validation and backoff bounds."""

from __future__ import annotations

import grpc
import pytest

import balancers
from balancers import RetryPolicy


def test_defaults_and_export() -> None:
    policy = balancers.RetryPolicy()
    assert policy.max_attempts == 3
    assert policy.retryable_codes == frozenset({grpc.StatusCode.UNAVAILABLE})
    assert "RetryPolicy" in balancers.__all__


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"max_attempts": 1}, "max_attempts"),
        ({"max_attempts": 6}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"retryable_codes": frozenset()}, "retryable_codes"),
        ({"retryable_codes": frozenset({"UNAVAILABLE"})}, "retryable_codes"),
        ({"retryable_codes": frozenset({grpc.StatusCode.OK})}, "retryable_codes"),
        ({"initial_backoff": -0.1}, "initial_backoff"),
        ({"initial_backoff": float("nan")}, "initial_backoff"),
        ({"initial_backoff": 2.0, "max_backoff": 1.0}, "max_backoff"),
        ({"max_backoff": "1"}, "max_backoff"),
        ({"backoff_multiplier": 0}, "backoff_multiplier"),
        ({"backoff_multiplier": 101}, "backoff_multiplier"),
        ({"max_buffer_bytes": -1}, "max_buffer_bytes"),
        ({"max_buffer_bytes": 1.5}, "max_buffer_bytes"),
    ],
)
def test_invalid_values_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_bounds_are_accepted_and_codes_become_a_frozenset() -> None:
    assert RetryPolicy(max_attempts=2).max_attempts == 2
    assert RetryPolicy(max_attempts=5).max_attempts == 5
    policy = RetryPolicy(retryable_codes={grpc.StatusCode.ABORTED})  # type: ignore[arg-type]
    assert policy.retryable_codes == frozenset({grpc.StatusCode.ABORTED})


def test_backoff_is_full_jitter_under_an_exponential_ceiling() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, backoff_multiplier=2.0)
    assert [policy.backoff_ceiling(n) for n in (1, 2, 3, 4, 5, 50, 10_000)] == pytest.approx(
        [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    )
    for retry in (1, 2, 3, 4):
        samples = [policy.backoff(retry) for _ in range(500)]
        ceiling = policy.backoff_ceiling(retry)
        assert all(0.0 <= s <= ceiling for s in samples)
        assert min(samples) < ceiling * 0.2 and max(samples) > ceiling * 0.8  # spread, not fixed
    assert RetryPolicy(initial_backoff=0.0).backoff(3) == 0.0


def test_should_retry() -> None:
    policy = RetryPolicy(max_attempts=3)
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert policy.should_retry(unavailable, answered=False, attempt=1)
    assert policy.should_retry(unavailable, answered=False, attempt=2)
    assert not policy.should_retry(unavailable, answered=False, attempt=3)
    assert not policy.should_retry(unavailable, answered=True, attempt=1)
    assert not policy.should_retry(grpc.StatusCode.INTERNAL, answered=False, attempt=1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"retryable_codes": frozenset()}, r"^retryable_codes: must name at least one"),
        ({"retryable_codes": frozenset({grpc.StatusCode.OK})}, r"^retryable_codes: OK is not"),
        ({"retryable_codes": frozenset({14})}, r"^retryable_codes: 14 is not a grpc\.StatusCode"),
        ({"max_attempts": 6}, r"^max_attempts: must be in 2\.\.5, got 6$"),
        ({"initial_backoff": 2.0, "max_backoff": 1.0}, r"^max_backoff: must be >= initial"),
        ({"backoff_multiplier": 0}, r"^backoff_multiplier: must be in \(0, 100\], got 0$"),
    ],
)
def test_errors_start_with_the_field_and_say_what_is_allowed(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_any_iterable_of_codes_becomes_a_frozenset_so_policies_hash() -> None:
    codes = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE]
    policy = RetryPolicy(retryable_codes=codes)  # type: ignore[arg-type]
    assert isinstance(policy.retryable_codes, frozenset)
    assert policy.retryable_codes == {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
    same = RetryPolicy(retryable_codes={grpc.StatusCode.ABORTED, grpc.StatusCode.UNAVAILABLE})  # type: ignore[arg-type]
    assert hash(policy) == hash(same) and policy == same


def test_boundary_values_are_accepted() -> None:
    flat = RetryPolicy(initial_backoff=0.2, max_backoff=0.2, backoff_multiplier=1)
    assert [flat.backoff_ceiling(n) for n in (1, 2, 5)] == [0.2, 0.2, 0.2]
    constant = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, backoff_multiplier=1.0)
    assert constant.backoff_ceiling(4) == pytest.approx(0.1)  # multiplier 1: no growth
    one = RetryPolicy(initial_backoff=1, max_backoff=5)
    assert [one.backoff_ceiling(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 5]


def test_the_config_bounds_are_the_library_bounds() -> None:
    """What the sidecar's ``retry`` section accepts, the policy accepts: a shrinking backoff
    (0 < multiplier < 1, as gRPC allows) and the extremes of every range."""
    shrinking = RetryPolicy(initial_backoff=0.4, max_backoff=1.0, backoff_multiplier=0.5)
    assert [shrinking.backoff_ceiling(n) for n in (1, 2, 3)] == pytest.approx([0.4, 0.2, 0.1])
    widest = RetryPolicy(max_attempts=5, backoff_multiplier=100, max_buffer_bytes=0)
    assert (widest.backoff_multiplier, widest.max_buffer_bytes) == (100, 0)
    assert RetryPolicy().max_buffer_bytes == 256 * 1024
