"""The polling loop's timing, against a fake clock and a scripted lookup."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resolvers import Address, ResolverOptions, ResolverState

# Reaches inside: unit tests of the polling engine every resolver is built on.
from resolvers._polling import (
    LookupResult,
    PollingResolver,
    ResolutionError,
    backoff_delay,
    refresh_delay,
)

TARGET = "dns:///svc.example:50051"
A1 = Address("10.0.0.1", 50051)
A2 = Address("10.0.0.2", 50051)


# -- pure delay functions ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ttl", "expected"),
    [(0, 1.0), (0.2, 1.0), (1, 1.0), (30, 30.0), (299.9, 299.9), (300, 300.0), (86400, 300.0)],
)
def test_refresh_delay_clamps_ttl(ttl: float, expected: float) -> None:
    assert refresh_delay(ttl, ResolverOptions(), 0.0) == pytest.approx(expected)


unit = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
options_st = st.builds(
    lambda lo, span, jitter, ib, bspan: ResolverOptions(
        min_refresh=lo,
        max_refresh=lo + span,
        jitter=jitter,
        initial_backoff=ib,
        max_backoff=ib + bspan,
    ),
    st.floats(0.01, 100),
    st.floats(0, 1000),
    st.floats(0, 1),
    st.floats(0.01, 10),
    st.floats(0, 100),
)


@given(options_st, st.floats(0, 1e7), unit)
def test_refresh_delay_within_clamp_plus_jitter(
    options: ResolverOptions, ttl: float, u: float
) -> None:
    base = min(max(ttl, options.min_refresh), options.max_refresh)
    delay = refresh_delay(ttl, options, u)
    assert options.min_refresh <= base <= delay <= base * (1 + options.jitter) * (1 + 1e-12)
    # Jitter is only ever added: never re-query before the record expires (within the clamp).
    assert delay >= min(ttl, options.max_refresh)


def test_backoff_delay_doubles_up_to_max() -> None:
    options = ResolverOptions(initial_backoff=0.5, max_backoff=4.0, jitter=0.0)
    delays = [backoff_delay(n, options, 0.0) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0]
    assert backoff_delay(10_000, options, 0.0) == 4.0  # no float overflow


def test_backoff_delay_rejects_zero_failures() -> None:
    with pytest.raises(ValueError):
        backoff_delay(0, ResolverOptions(), 0.0)


@given(options_st, st.integers(1, 5000), unit)
def test_backoff_delay_bounds_and_monotonic(options: ResolverOptions, n: int, u: float) -> None:
    delay = backoff_delay(n, options, u)
    assert (
        options.initial_backoff <= delay <= options.max_backoff * (1 + options.jitter) * (1 + 1e-12)
    )
    assert backoff_delay(n + 1, options, u) >= delay


# -- a fake clock and a scripted lookup ----------------------------------------------------


class FakeClock:
    """Monotonic time that moves only when the test says so; ``sleep`` waits on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(delay, 0.0), next(self._seq), future))
        await future

    @property
    def next_wakeup(self) -> float | None:
        live = [when for when, _, f in self._sleepers if not f.done()]
        return min(live) if live else None

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking each sleeper at its own deadline, in order."""
        end = self.now + seconds
        while self._sleepers and self._sleepers[0][0] <= end:
            when, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self.now = max(self.now, when)
            future.set_result(None)
            await settle()
        self.now = end
        await settle()

    async def advance_to(self, when: float) -> None:
        await self.advance(when - self.now)


async def settle() -> None:
    """Run the loop until the resolver is idle again (nothing here waits on real time)."""
    for _ in range(50):
        await asyncio.sleep(0)


@dataclass
class Call:
    at: float
    gate: asyncio.Event


class ScriptedLookup:
    """Returns (or raises) the scripted outcomes in order, repeating the last one."""

    def __init__(self, clock: FakeClock, *outcomes: LookupResult | BaseException) -> None:
        self._clock = clock
        self.outcomes = list(outcomes)
        self.calls: list[Call] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.hold = False
        """When set, each call waits for its ``gate`` before answering."""

    def then(self, *outcomes: LookupResult | BaseException) -> None:
        self.outcomes = list(outcomes)

    @property
    def times(self) -> list[float]:
        return [c.at for c in self.calls]

    async def __call__(self) -> LookupResult:
        call = Call(self._clock.now, asyncio.Event())
        self.calls.append(call)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.hold:
                await call.gate.wait()
            outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        finally:
            self.in_flight -= 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class RecordingListener:
    def __init__(self, clock: FakeClock) -> None:
        self._clock = clock
        self.events: list[tuple[float, ResolverState | Exception]] = []

    def update_state(self, state: ResolverState) -> None:
        self.events.append((self._clock.now, state))

    def report_error(self, error: Exception) -> None:
        self.events.append((self._clock.now, error))

    @property
    def states(self) -> list[ResolverState]:
        return [e for _, e in self.events if isinstance(e, ResolverState)]

    @property
    def errors(self) -> list[Exception]:
        return [e for _, e in self.events if isinstance(e, Exception)]


def ok(*addresses: Address, ttl: float | None = 10.0, note: str = "") -> LookupResult:
    return LookupResult(tuple(addresses), ttl, note)


@dataclass
class Harness:
    clock: FakeClock
    lookup: ScriptedLookup
    listener: RecordingListener
    resolver: PollingResolver


class Make(Protocol):
    async def __call__(
        self,
        *outcomes: LookupResult | BaseException,
        rng: Callable[[], float] = ...,
        **option_overrides: float,
    ) -> Harness: ...


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    """Start a resolver on a fake clock with scripted lookup outcomes; closed after the test."""
    made: list[PollingResolver] = []

    async def _make(
        *outcomes: LookupResult | BaseException,
        rng: Callable[[], float] = lambda: 0.0,
        **option_overrides: float,
    ) -> Harness:
        clock = FakeClock()
        lookup = ScriptedLookup(clock, *outcomes)
        listener = RecordingListener(clock)
        options = ResolverOptions(**option_overrides)
        resolver = PollingResolver(
            TARGET, lookup, listener, options, clock=clock, sleep=clock.sleep, rng=rng
        )
        made.append(resolver)
        await settle()
        return Harness(clock, lookup, listener, resolver)

    yield _make
    for resolver in made:
        await asyncio.wait_for(resolver.aclose(), 5)


# -- refresh timing ------------------------------------------------------------------------


async def test_first_result_is_pushed_at_once(make: Make) -> None:
    h = await make(ok(A1, A2))
    assert h.lookup.times == [0.0]
    assert h.listener.events == [(0.0, ResolverState((A1, A2)))]


async def test_refreshes_when_ttl_expires(make: Make) -> None:
    h = await make(ok(A1, ttl=7))
    await h.clock.advance(6.875)
    assert h.lookup.times == [0.0]
    await h.clock.advance(0.125)
    assert h.lookup.times == [0.0, 7.0]
    await h.clock.advance(7.0)
    assert h.lookup.times == [0.0, 7.0, 14.0]


@pytest.mark.parametrize(("ttl", "expected"), [(0, 1.0), (0.1, 1.0), (10_000, 300.0)])
async def test_ttl_is_clamped(make: Make, ttl: float, expected: float) -> None:
    h = await make(ok(A1, ttl=ttl))
    await h.clock.advance(expected - 0.125)
    assert h.lookup.times == [0.0], "re-queried before min_refresh / the TTL"
    await h.clock.advance(0.125)
    assert h.lookup.times == [0.0, expected]


async def test_custom_refresh_bounds(make: Make) -> None:
    h = await make(ok(A1, ttl=0), min_refresh=0.25, max_refresh=0.5)
    await h.clock.advance(1.0)
    assert h.lookup.times == [0.0, 0.25, 0.5, 0.75, 1.0]


async def test_jitter_is_added_within_bounds(make: Make) -> None:
    draws = itertools.chain([0.999, 0.5], itertools.repeat(0.0))
    h = await make(ok(A1, ttl=10), jitter=0.2, rng=lambda: next(draws))
    await h.clock.advance(40)
    first = 10 * (1 + 0.2 * 0.999)
    second = first + 10 * (1 + 0.2 * 0.5)
    assert h.lookup.times == pytest.approx([0.0, first, second, second + 10.0])


async def test_answers_that_never_expire_are_not_polled(make: Make) -> None:
    h = await make(ok(A1, ttl=None))
    await h.clock.advance(10_000)
    assert h.lookup.times == [0.0]
    h.resolver.resolve_now()
    await settle()  # the rate limit counts from the last lookup, long ago: no wait
    assert h.lookup.times == [0.0, 10_000.0]


# -- pushing states ------------------------------------------------------------------------


async def test_identical_answers_are_not_pushed_again(make: Make) -> None:
    h = await make(ok(A1, A2, ttl=1), ok(A2, A1, ttl=1), ok(A1, A2, ttl=1))
    await h.clock.advance(5)
    assert len(h.lookup.calls) == 6
    assert h.listener.states == [ResolverState((A1, A2))]  # reordering is not a change


async def test_changes_are_pushed(make: Make) -> None:
    weighted = Address("10.0.0.1", 50051, {"weight": 5})
    h = await make(ok(A1, ttl=1), ok(A1, A2, ttl=1), ok(A2, ttl=1), ok(weighted, ttl=1))
    await h.clock.advance(3.5)
    assert [s.addresses for s in h.listener.states] == [(A1,), (A1, A2), (A2,), (weighted,)]
    assert h.listener.states[-1].addresses[0].weight == 5  # an attribute change is a change


async def test_nxdomain_pushes_an_empty_state_with_its_note(make: Make) -> None:
    h = await make(ok(A1, ttl=1), ok(ttl=1, note="NXDOMAIN for svc.example."), ok(A1, ttl=1))
    await h.clock.advance(2)
    states = h.listener.states
    assert [s.addresses for s in states] == [(A1,), (), (A1,)]
    assert states[1].note == "NXDOMAIN for svc.example."
    assert h.listener.errors == []


# -- failures ------------------------------------------------------------------------------


async def test_failure_reports_keeps_last_good_and_backs_off(make: Make) -> None:
    h = await make(
        ok(A1, ttl=1),
        TimeoutError("no answer"),
        initial_backoff=0.5,
        max_backoff=3.0,
    )
    await h.clock.advance(10)
    # ok at 0 (TTL 1); fails from 1 on, retried after 0.5, 1, 2, 3 (max), ...
    assert h.lookup.times == [0, 1, 1.5, 2.5, 4.5, 7.5]
    assert h.listener.states == [ResolverState((A1,))], "an error must never push a state"
    errors = h.listener.errors
    assert len(errors) == 5
    assert all(isinstance(e, ResolutionError) for e in errors)
    assert TARGET in str(errors[0]) and "no answer" in str(errors[0])
    assert isinstance(errors[0].__cause__, TimeoutError)


async def test_backoff_resets_after_success(make: Make) -> None:
    boom = ResolutionError(TARGET, "SERVFAIL")
    h = await make(
        ok(A1, ttl=5), boom, boom, boom, ok(A1, ttl=5), boom, initial_backoff=1, max_backoff=60
    )
    await h.clock.advance(20)
    # ok@0, fail@5, fail@6 (+1), fail@8 (+2), ok@12 (+4), fail@17, retry@18 (+1: reset)
    assert h.lookup.times[:7] == [0, 5, 6, 8, 12, 17, 18]
    assert h.listener.errors[0] is boom  # already a ResolutionError: passed through as is


async def test_success_after_error_is_pushed_even_if_identical(
    make: Make,
) -> None:
    h = await make(ok(A1, ttl=1), OSError("down"), ok(A1, ttl=1))
    await h.clock.advance(1.5)
    assert [type(e).__name__ for _, e in h.listener.events] == [
        "ResolverState",
        "ResolutionError",
        "ResolverState",
    ]
    await h.clock.advance(5)
    assert len(h.listener.states) == 2  # and then quiet again


async def test_unexpected_exceptions_are_reported_and_retried(
    make: Make,
) -> None:
    h = await make(KeyError("bug"), ok(A1), initial_backoff=0.5)
    await h.clock.advance(0.5)
    assert h.lookup.times == [0, 0.5]
    assert "KeyError" in str(h.listener.errors[0])
    assert h.listener.states == [ResolverState((A1,))]


async def test_error_before_any_success_pushes_nothing(make: Make) -> None:
    h = await make(OSError("down"))
    await h.clock.advance(100)
    assert h.listener.states == []
    assert len(h.listener.errors) >= 5


async def test_hints_do_not_shorten_a_backoff(make: Make) -> None:
    h = await make(OSError("down"), initial_backoff=5, max_backoff=5)
    await h.clock.advance(2)
    h.resolver.resolve_now()
    await h.clock.advance(2.75)
    assert h.lookup.times == [0]
    await h.clock.advance(0.25)
    assert h.lookup.times == [0, 5]


async def test_faulty_listener_does_not_stop_the_loop(make: Make) -> None:
    h = await make(ok(A1, ttl=1), ok(A2, ttl=1))

    def explode(state: ResolverState) -> None:
        raise RuntimeError("consumer bug")

    h.listener.update_state = explode  # type: ignore[method-assign]
    await h.clock.advance(3)
    assert len(h.lookup.calls) == 4


async def test_hung_lookup_is_timed_out_by_the_backstop(make: Make) -> None:
    # Real time here: the backstop uses the event loop's clock (lookup_timeout + 1 s).
    h = await make(ok(A1), lookup_timeout=0.05, initial_backoff=1)
    h.lookup.hold = True
    h.resolver.resolve_now()
    await h.clock.advance(1)
    assert len(h.lookup.calls) == 2
    deadline = asyncio.get_running_loop().time() + 10
    while not h.listener.errors:
        assert asyncio.get_running_loop().time() < deadline, "backstop never fired"
        await asyncio.sleep(0.02)
    error = h.listener.errors[0]
    assert isinstance(error, ResolutionError)
    assert (error.target, error.reason) == (TARGET, "lookup did not finish within 0.05s")
    assert str(error) == f"resolving {TARGET}: lookup did not finish within 0.05s"
    assert h.lookup.in_flight == 0  # the hung call was cancelled


# -- resolve_now ---------------------------------------------------------------------------


async def test_resolve_now_looks_up_at_once_when_allowed(make: Make) -> None:
    h = await make(ok(A1, ttl=100), resolve_now_min_interval=1)
    await h.clock.advance(5)
    h.resolver.resolve_now()
    await settle()
    assert h.lookup.times == [0, 5]


async def test_resolve_now_hints_coalesce_and_are_rate_limited(
    make: Make,
) -> None:
    h = await make(ok(A1, ttl=100), resolve_now_min_interval=2)
    for _ in range(5):
        await h.clock.advance(0.25)
        h.resolver.resolve_now()
    await h.clock.advance(0.5)
    assert h.lookup.times == [0]
    await h.clock.advance(0.125)
    assert h.lookup.times == [0], "hints within the interval must wait for it"
    await h.clock.advance(0.125)
    assert h.lookup.times == [0, 2.0], "five hints, one lookup"
    await h.clock.advance(10)
    assert h.lookup.times == [0, 2.0]  # and the regular refresh is still due at 102


async def test_refresh_due_before_the_rate_limit_is_not_delayed(
    make: Make,
) -> None:
    h = await make(ok(A1, ttl=1), resolve_now_min_interval=5)
    await h.clock.advance(0.5)
    h.resolver.resolve_now()
    await h.clock.advance(0.5)
    assert h.lookup.times == [0, 1.0]


async def test_never_more_than_one_lookup_in_flight(make: Make) -> None:
    h = await make(ok(A1, ttl=100), resolve_now_min_interval=1)
    h.lookup.hold = True
    await h.clock.advance(10)
    h.resolver.resolve_now()
    await settle()
    assert h.lookup.times == [0, 10]
    for _ in range(4):  # hints while a lookup is in flight
        h.resolver.resolve_now()
        await h.clock.advance(0.125)
    assert h.lookup.max_in_flight == 1
    h.lookup.hold = False
    h.lookup.calls[-1].gate.set()
    await settle()
    await h.clock.advance(0.375)
    assert h.lookup.times == [0, 10], "follow-up lookup must respect the interval"
    await h.clock.advance(0.125)
    assert h.lookup.times == [0, 10, 11.0], "hints during a lookup give one follow-up"
    await h.clock.advance(20)
    assert h.lookup.times == [0, 10, 11.0]
    assert h.lookup.max_in_flight == 1


# -- closing -------------------------------------------------------------------------------


async def test_aclose_is_idempotent_and_stops_the_loop(make: Make) -> None:
    h = await make(ok(A1, ttl=1))
    await h.resolver.aclose()
    await h.resolver.aclose()
    h.resolver.resolve_now()
    await h.clock.advance(10)
    assert h.lookup.times == [0]


async def test_aclose_cancels_a_lookup_in_flight(make: Make) -> None:
    h = await make(ok(A1, ttl=1))
    h.lookup.hold = True
    await h.clock.advance(1)
    assert h.lookup.in_flight == 1
    await asyncio.wait_for(h.resolver.aclose(), 5)
    assert h.lookup.in_flight == 0
    assert h.listener.errors == []  # being closed is not a resolution error


async def test_aclose_does_not_swallow_the_callers_cancellation() -> None:
    clock = FakeClock()
    entered, release = asyncio.Event(), asyncio.Event()

    async def stubborn() -> LookupResult:
        # Keeps the loop task alive after cancel(), so aclose() is still waiting for it.
        try:
            entered.set()
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()
            raise
        raise AssertionError("unreachable")

    resolver = PollingResolver(
        TARGET,
        stubborn,
        RecordingListener(clock),
        ResolverOptions(),
        clock=clock,
        sleep=clock.sleep,
    )
    await asyncio.wait_for(entered.wait(), 5)
    closer = asyncio.ensure_future(resolver.aclose())
    await settle()
    assert not closer.done()
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    release.set()
    await asyncio.wait_for(resolver.aclose(), 5)  # a second close finishes the job


async def test_build_requires_a_running_loop() -> None:
    clock = FakeClock()

    def build() -> None:
        lookup = ScriptedLookup(clock, ok(A1))
        PollingResolver(TARGET, lookup, RecordingListener(clock), ResolverOptions())

    # Off the loop's thread there is no running loop: building must fail loudly.
    with pytest.raises(RuntimeError):
        await asyncio.get_running_loop().run_in_executor(None, build)


# -- edges: attribute-only changes, the hint rate limit without TTL, the backstop's patience ------


async def test_an_attribute_only_change_is_pushed(make: Make) -> None:
    # The same endpoint each time (equal addresses): only its attributes change.
    attributes: list[dict[str, object]] = [
        {"weight": 1},
        {"weight": 5},
        {"zone": "a"},
        {"region": "a"},
    ]
    h = await make(*(ok(Address("10.0.0.1", 50051, a), ttl=1) for a in attributes))
    await h.clock.advance(3.5)
    assert [dict(s.addresses[0].attributes) for s in h.listener.states] == attributes


async def test_hints_for_answers_without_ttl_are_rate_limited(make: Make) -> None:
    h = await make(ok(A1, ttl=None), resolve_now_min_interval=2)
    await h.clock.advance(0.5)
    h.resolver.resolve_now()
    await h.clock.advance(1.375)
    assert h.lookup.times == [0], "a hint within the interval waits for it"
    await h.clock.advance(0.125)
    assert h.lookup.times == [0, 2.0]
    await h.clock.advance_to(4.0)  # exactly one interval after the last lookup: no wait
    h.resolver.resolve_now()
    await settle()
    assert h.lookup.times == [0, 2.0, 4.0]


async def test_the_backstop_leaves_the_lookup_its_own_timeout() -> None:
    # Real time, as the backstop uses the event loop's clock: a lookup that gives up at exactly
    # lookup_timeout must report its own error, not be cut short by the backstop.
    timeout = 0.05
    reported = asyncio.Event()
    errors: list[Exception] = []

    async def lookup_with_a_lifetime() -> LookupResult:
        try:
            await asyncio.wait_for(asyncio.Event().wait(), timeout)
        except asyncio.TimeoutError:
            raise TimeoutError(f"the lifetime of {timeout}s expired") from None
        raise AssertionError("unreachable")

    class Listener(RecordingListener):
        def report_error(self, error: Exception) -> None:
            errors.append(error)
            reported.set()

    clock = FakeClock()
    resolver = PollingResolver(
        TARGET,
        lookup_with_a_lifetime,
        Listener(clock),
        ResolverOptions(lookup_timeout=timeout),
        clock=clock,
        sleep=clock.sleep,
    )
    try:
        await asyncio.wait_for(reported.wait(), 10)
    finally:
        await asyncio.wait_for(resolver.aclose(), 5)
    assert str(errors[0]) == f"resolving {TARGET}: TimeoutError: the lifetime of 0.05s expired"


async def test_a_lookup_cancelled_from_inside_is_a_failure_to_retry(make: Make) -> None:
    h = await make(asyncio.CancelledError(), ok(A1), initial_backoff=0.5)
    error = h.listener.errors[0]
    assert isinstance(error, ResolutionError)
    assert (error.target, error.reason) == (TARGET, "lookup was cancelled")
    assert str(error) == f"resolving {TARGET}: lookup was cancelled"
    await h.clock.advance(0.5)
    assert h.lookup.times == [0, 0.5]
    assert h.listener.states == [ResolverState((A1,))]


async def test_a_listener_that_raises_is_logged_with_the_target(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    h = await make(ok(A1, ttl=1), OSError("down"), ok(A2, ttl=1), initial_backoff=0.5)

    def broken_update(state: ResolverState) -> None:
        raise RuntimeError("consumer bug")

    def broken_report(error: Exception) -> None:
        raise RuntimeError("consumer bug")

    h.listener.update_state = broken_update  # type: ignore[method-assign]
    h.listener.report_error = broken_report  # type: ignore[method-assign]
    with caplog.at_level("ERROR", logger="resolvers._polling"):
        await h.clock.advance(1.5)
    assert h.lookup.times == [0, 1, 1.5]  # neither failure stopped the loop
    logged = [(r.getMessage(), r.exc_info and r.exc_info[0]) for r in caplog.records]
    assert logged == [
        (f"{TARGET}: listener.report_error raised", RuntimeError),
        (f"{TARGET}: listener.update_state raised", RuntimeError),
    ]


class Fatal(BaseException):
    """Not an ``Exception``: the loop does not catch it."""


async def test_a_loop_stopped_by_a_base_exception_is_logged(
    make: Make, caplog: pytest.LogCaptureFixture
) -> None:
    fatal = Fatal("out of memory")
    with caplog.at_level("ERROR"):
        await make(fatal)
        await settle()
    records = [r for r in caplog.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in records] == [f"{TARGET}: resolver loop stopped unexpectedly"]
    assert records[0].exc_info is not None and records[0].exc_info[1] is fatal


def test_a_resolver_left_open_at_loop_shutdown_stops_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def main() -> PollingResolver:
        clock = FakeClock()
        resolver = PollingResolver(
            TARGET,
            ScriptedLookup(clock, ok(A1, ttl=None)),
            RecordingListener(clock),
            ResolverOptions(),
            clock=clock,
            sleep=clock.sleep,
        )
        await settle()
        return resolver  # not closed: asyncio.run cancels its task on the way out

    with caplog.at_level("DEBUG"):
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


async def test_the_resolver_names_its_target(make: Make) -> None:
    h = await make(ok(A1))
    assert repr(h.resolver) == f"<PollingResolver {TARGET}>"
    names = {task.get_name() for task in asyncio.all_tasks()}
    assert f"resolver {TARGET}" in names  # shows in task dumps and asyncio debug logs


def test_resolution_errors_keep_target_and_reason() -> None:
    error = ResolutionError("dns:///x:1", "SERVFAIL")
    assert (error.target, error.reason, str(error)) == (
        "dns:///x:1",
        "SERVFAIL",
        "resolving dns:///x:1: SERVFAIL",
    )
    with pytest.raises(ValueError, match=r"^failures must be >= 1, got 0$"):
        backoff_delay(0, ResolverOptions(), 0.0)
