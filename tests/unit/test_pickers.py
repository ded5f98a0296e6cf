"""Pickers, the aggregation rule, and the subchannel-set balancer, against fake subchannels."""

from __future__ import annotations

import collections
import gc
import weakref
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import balancers

# Reaches inside: the policy contract (pickers, states) is unit-tested without a channel.
from balancers._base import (
    CONNECTING,
    IDLE,
    READY,
    TRANSIENT_FAILURE,
    ErrorPicker,
    NoSubchannelAvailable,
    Picker,
    PickFailed,
    PickInfo,
    QueuePicker,
    SubchannelState,
    aggregate,
)
from balancers.pick_first import FirstReadyPicker
from balancers.round_robin import RoundRobinPicker
from resolvers import Address, ResolverState

INFO = PickInfo("/svc/M")


class FakeSubchannel:
    """Stands in for a real subchannel: an address, a state, a connect flag."""

    def __init__(self, address: Address, listener: Any) -> None:
        self.address = address
        self.listener = listener
        self.state = SubchannelState(IDLE)
        self.connected = False

    def connect(self) -> None:
        self.connected = True

    def update_address(self, address: Address) -> None:
        self.address = address

    def set(self, connectivity: grpc.ChannelConnectivity) -> None:
        self.state = SubchannelState(connectivity, f"{self.address} {connectivity.name}")
        self.listener(self, self.state)


class FakeController:
    """Records what a policy asks of the channel."""

    def __init__(self) -> None:
        self.subchannels: dict[Address, FakeSubchannel] = {}
        self.removed: list[FakeSubchannel] = []
        self.published: list[tuple[grpc.ChannelConnectivity, Picker]] = []
        self.resolve_now_calls = 0

    def new_subchannel(self, address: Address, listener: Any) -> Any:
        sc = FakeSubchannel(address, listener)
        self.subchannels[address] = sc
        return sc

    def remove_subchannel(self, sc: Any) -> None:
        self.removed.append(sc)
        self.subchannels.pop(sc.address, None)

    def update_state(self, connectivity: grpc.ChannelConnectivity, picker: Picker) -> None:
        self.published.append((connectivity, picker))

    def resolve_now(self) -> None:
        self.resolve_now_calls += 1

    @property
    def state(self) -> grpc.ChannelConnectivity:
        return self.published[-1][0]

    @property
    def picker(self) -> Picker:
        return self.published[-1][1]


def addrs(*ports: int) -> tuple[Address, ...]:
    return tuple(Address("10.0.0.1", p) for p in ports)


def build(policy: str = "round_robin") -> tuple[FakeController, Any]:
    controller = FakeController()
    balancer = balancers.get(policy).build(controller, balancers.BalancerOptions("static:///x"))
    return controller, balancer


def test_round_robin_cycles_in_order_from_the_start_index() -> None:
    scs = [FakeSubchannel(a, None) for a in addrs(1, 2, 3)]
    picker = RoundRobinPicker(scs, start=1)  # type: ignore[arg-type]
    picked = [picker.pick(INFO).subchannel for _ in range(7)]
    assert picked == [scs[1], scs[2], scs[0], scs[1], scs[2], scs[0], scs[1]]


def test_round_robin_start_is_random() -> None:
    scs = [FakeSubchannel(a, None) for a in addrs(1, 2, 3, 4)]
    firsts = {RoundRobinPicker(scs).pick(INFO).subchannel for _ in range(200)}  # type: ignore[arg-type]
    assert len(firsts) == 4


def test_round_robin_is_even() -> None:
    scs = [FakeSubchannel(a, None) for a in addrs(1, 2, 3)]
    picker = RoundRobinPicker(scs)  # type: ignore[arg-type]
    counts = collections.Counter(picker.pick(INFO).subchannel for _ in range(300))
    assert sorted(counts.values()) == [100, 100, 100]


def test_first_ready_picker() -> None:
    scs = [FakeSubchannel(a, None) for a in addrs(5, 6)]
    assert FirstReadyPicker(scs).pick(INFO).subchannel is scs[0]  # type: ignore[arg-type]


def test_queue_and_error_pickers() -> None:
    with pytest.raises(NoSubchannelAvailable):
        QueuePicker().pick(INFO)
    with pytest.raises(PickFailed) as failed:
        ErrorPicker(grpc.StatusCode.UNAVAILABLE, "why").pick(INFO)
    assert failed.value.code is grpc.StatusCode.UNAVAILABLE and failed.value.details == "why"


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        ([READY, TRANSIENT_FAILURE], READY),
        ([CONNECTING, TRANSIENT_FAILURE, IDLE], CONNECTING),
        ([IDLE, TRANSIENT_FAILURE], IDLE),
        ([TRANSIENT_FAILURE, TRANSIENT_FAILURE], TRANSIENT_FAILURE),
        ([], TRANSIENT_FAILURE),
    ],
)
def test_aggregation_rule(states: list[Any], expected: Any) -> None:
    assert aggregate(states) is expected


def test_picker_only_uses_ready_subchannels() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1, 2, 3)))
    assert all(sc.connected for sc in controller.subchannels.values())
    assert controller.state is IDLE  # until a subchannel reports CONNECTING
    for sc in controller.subchannels.values():
        sc.set(CONNECTING)
    assert controller.state is CONNECTING
    with pytest.raises(NoSubchannelAvailable):
        controller.picker.pick(INFO)
    a1, a2, a3 = (controller.subchannels[a] for a in addrs(1, 2, 3))
    a1.set(READY)
    a3.set(READY)
    a2.set(TRANSIENT_FAILURE)
    assert controller.state is READY
    picked = {controller.picker.pick(INFO).subchannel for _ in range(10)}
    assert picked == {a1, a3}


def test_resolver_update_adds_and_removes_subchannels() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1, 2)))
    first = dict(controller.subchannels)
    balancer.update_resolver_state(ResolverState(addrs(2, 3)))
    assert [sc.address for sc in controller.removed] == [addrs(1)[0]]
    assert controller.subchannels[addrs(2)[0]] is first[addrs(2)[0]]  # kept, not reconnected
    assert set(controller.subchannels) == set(addrs(2, 3))


def test_no_addresses_fails_with_reason() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState((), note="NXDOMAIN for svc.test."))
    assert controller.state is TRANSIENT_FAILURE
    with pytest.raises(PickFailed, match=r"no addresses resolved for static:///x: NXDOMAIN"):
        controller.picker.pick(INFO)


def test_resolver_error_before_any_address_fails_calls() -> None:
    controller, balancer = build()
    balancer.resolver_error(RuntimeError("timed out"))
    with pytest.raises(PickFailed, match=r"name resolution failed.*timed out"):
        controller.picker.pick(INFO)


def test_resolver_error_keeps_good_addresses() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1)))
    controller.subchannels[addrs(1)[0]].set(READY)
    balancer.resolver_error(RuntimeError("timed out"))
    assert controller.state is READY
    assert controller.picker.pick(INFO).subchannel.address == addrs(1)[0]


def test_all_failing_reports_last_error_and_resolves_again() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1, 2)))
    for sc in list(controller.subchannels.values()):
        sc.set(CONNECTING)
        sc.set(TRANSIENT_FAILURE)
    assert controller.state is TRANSIENT_FAILURE
    assert controller.resolve_now_calls == 2
    with pytest.raises(PickFailed, match="all 2 endpoints of static:///x failing"):
        controller.picker.pick(INFO)


def test_failed_endpoint_stays_failed_while_reconnecting() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1)))
    sc = controller.subchannels[addrs(1)[0]]
    sc.set(TRANSIENT_FAILURE)
    sc.set(CONNECTING)  # grpcio retrying: still failing for fail-fast calls
    assert controller.state is TRANSIENT_FAILURE
    sc.set(READY)
    assert controller.state is READY


def test_pick_first_prefers_first_address_and_fails_over() -> None:
    controller, balancer = build("pick_first")
    balancer.update_resolver_state(ResolverState(addrs(1, 2)))
    s1, s2 = (controller.subchannels[a] for a in addrs(1, 2))
    s2.set(READY)
    assert controller.picker.pick(INFO).subchannel is s2
    s1.set(READY)
    assert controller.picker.pick(INFO).subchannel is s1
    s1.set(TRANSIENT_FAILURE)
    assert controller.picker.pick(INFO).subchannel is s2


def test_close_removes_everything() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1, 2)))
    balancer.close()
    balancer.close()
    assert len(controller.removed) == 2


STATES = [IDLE, CONNECTING, READY, TRANSIENT_FAILURE]


@settings(max_examples=300, deadline=None)
@given(
    policy=st.sampled_from(["round_robin", "pick_first"]),
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("state"), st.integers(0, 3), st.sampled_from(STATES)),
            st.tuples(st.just("resolve"), st.sets(st.integers(0, 3)), st.just(None)),
        ),
        max_size=40,
    ),
)
def test_published_state_always_matches_subchannels(policy: str, steps: list[Any]) -> None:
    """Whatever the transitions: a READY channel's picker picks only READY subchannels it
    owns; a channel with no READY subchannel never hands one out; state follows the rule."""
    controller, balancer = build(policy)
    balancer.update_resolver_state(ResolverState(addrs(10, 11, 12, 13)))
    failed: set[Address] = set()
    for kind, arg, state in steps:
        if kind == "state":
            live = list(controller.subchannels.values())
            if not live:
                continue
            sc = live[arg % len(live)]
            sc.set(state)
            if state is TRANSIENT_FAILURE:
                failed.add(sc.address)
            elif state is READY:
                failed.discard(sc.address)
        else:
            wanted = addrs(*(10 + i for i in sorted(arg)))
            balancer.update_resolver_state(ResolverState(wanted))
            failed &= set(wanted)
        live = list(controller.subchannels.values())
        effective = [
            TRANSIENT_FAILURE
            if sc.address in failed and sc.state.connectivity is not READY
            else sc.state.connectivity
            for sc in live
        ]
        assert controller.state is aggregate(effective)
        if controller.state is READY:
            for _ in range(len(live) + 1):
                chosen = controller.picker.pick(INFO).subchannel
                assert chosen in live and chosen.state.connectivity is READY
        else:
            with pytest.raises((NoSubchannelAvailable, PickFailed)):
                controller.picker.pick(INFO)


def test_smooth_weighted_schedule_is_proportional_and_interleaved() -> None:
    from balancers.weighted_round_robin import smooth_schedule

    assert smooth_schedule([5, 1, 1]) == [0, 0, 1, 0, 2, 0, 0]
    assert collections.Counter(smooth_schedule([30, 10])) == {0: 3, 1: 1}  # gcd-reduced
    assert smooth_schedule([0, 0]) == [0, 1]  # SRV weight 0 counts as 1
    big = smooth_schedule([65535, 1, 30000])
    assert len(big) <= 1001 and collections.Counter(big)[1] >= 1


def test_weighted_round_robin_uses_address_weights() -> None:
    controller, balancer = build("weighted_round_robin")
    heavy, light = Address("10.0.0.1", 1, {"weight": 3}), Address("10.0.0.2", 1, {"weight": 1})
    balancer.update_resolver_state(ResolverState((heavy, light)))
    for sc in controller.subchannels.values():
        sc.set(READY)
    counts = collections.Counter(
        controller.picker.pick(INFO).subchannel.address for _ in range(400)
    )
    assert counts == {heavy: 300, light: 100}


def test_builtin_plugins_load_through_their_entry_point_groups() -> None:
    """The installed distribution's entry points name every built-in plugin."""
    from resolvers.plugins import PluginRegistry

    fresh_resolvers: PluginRegistry[Any] = PluginRegistry("meshkit.resolvers", "scheme", "r")
    assert {"static", "dns", "dns+srv"} <= set(fresh_resolvers.names())
    assert fresh_resolvers.get("dns+srv").scheme == "dns+srv"
    fresh_policies: PluginRegistry[Any] = PluginRegistry("meshkit.balancers", "name", "p")
    assert {"round_robin", "pick_first", "weighted_round_robin"} <= set(fresh_policies.names())


def test_registry_rejects_nameless_plugins_and_names_known_ones() -> None:
    from resolvers.plugins import PluginRegistry

    registry: PluginRegistry[Any] = PluginRegistry("meshkit.none", "scheme", "resolver")
    with pytest.raises(ValueError, match="non-empty 'scheme'"):
        registry.register(object())
    registry.register(type("B", (), {"scheme": "x"})())
    with pytest.raises(LookupError, match="no resolver 'y'; known: x"):
        registry.get("y")


def test_subchannel_options_force_pick_first_and_keep_the_service_authority() -> None:
    from balancers._core import channel_options
    from resolvers import Target

    opts = dict(
        channel_options(
            [("grpc.lb_policy_name", "round_robin"), ("a", 1)], Target.parse("dns:///svc.ns:50051")
        )
    )
    assert opts == {
        "a": 1,
        "grpc.lb_policy_name": "pick_first",
        "grpc.default_authority": "svc.ns:50051",
    }
    srv = dict(channel_options(None, Target.parse("dns+srv:///_grpc._tcp.svc.ns")))
    assert srv["grpc.default_authority"] == "svc.ns"
    mine = dict(channel_options([("grpc.default_authority", "x")], Target.parse("dns:///y:1")))
    assert mine["grpc.default_authority"] == "x"


def test_aggressive_keepalive_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from balancers._core import channel_options
    from resolvers import Target

    channel_options([("grpc.keepalive_time_ms", 10_000)], Target.parse("dns:///y:1"))
    assert "too_many_pings" in caplog.text
    caplog.clear()
    channel_options([("grpc.keepalive_time_ms", 300_000)], Target.parse("dns:///y:1"))
    assert caplog.text == ""


# -- the subchannel set's edges: removal, close, failure details, resolve_now -------------------


def report(sc: FakeSubchannel, connectivity: grpc.ChannelConnectivity, reason: str) -> None:
    """Report a state with exactly ``reason`` (``FakeSubchannel.set`` makes one up)."""
    sc.state = SubchannelState(connectivity, reason)
    sc.listener(sc, sc.state)


def pick_failure(controller: FakeController) -> PickFailed:
    with pytest.raises(PickFailed) as failed:
        controller.picker.pick(INFO)
    return failed.value


def test_a_removed_subchannels_late_state_changes_are_ignored() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1, 2)))
    gone, kept = (controller.subchannels[a] for a in addrs(1, 2))
    gone.set(READY)
    kept.set(READY)
    balancer.update_resolver_state(ResolverState(addrs(2)))
    published, resolves = len(controller.published), controller.resolve_now_calls
    gone.set(TRANSIENT_FAILURE)  # a callback already on its way when it was removed
    gone.set(IDLE)
    assert len(controller.published) == published
    assert controller.resolve_now_calls == resolves
    assert {controller.picker.pick(INFO).subchannel.address for _ in range(4)} == {kept.address}


def test_a_removed_subchannel_is_not_kept_alive() -> None:
    # A long-lived channel sees endpoints come and go: a failed one, once removed, is freed.
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1, 2)))
    gone = controller.subchannels[addrs(1)[0]]
    gone.set(CONNECTING)
    gone.set(TRANSIENT_FAILURE)
    ref = weakref.ref(gone)
    balancer.update_resolver_state(ResolverState(addrs(2)))
    assert controller.removed == [gone]
    controller.removed.clear()
    del gone
    gc.collect()
    assert ref() is None


def test_a_closed_balancer_ignores_everything() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1)))
    sc = controller.subchannels[addrs(1)[0]]
    balancer.close()
    published = len(controller.published)
    sc.set(READY)
    balancer.update_resolver_state(ResolverState(addrs(2, 3)))
    balancer.resolver_error(RuntimeError("late"))
    assert len(controller.published) == published
    assert controller.subchannels == {}  # nothing created after close
    assert controller.resolve_now_calls == 0


def test_failed_picks_are_unavailable_and_say_why() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(()))
    failure = pick_failure(controller)
    assert failure.code is grpc.StatusCode.UNAVAILABLE
    assert failure.details == "no addresses resolved for static:///x"  # no note, no colon

    balancer.update_resolver_state(ResolverState(addrs(1, 2)))
    s1, s2 = (controller.subchannels[a] for a in addrs(1, 2))
    report(s1, TRANSIENT_FAILURE, "connection refused")
    report(s2, TRANSIENT_FAILURE, "handshake timed out")
    failure = pick_failure(controller)
    assert failure.code is grpc.StatusCode.UNAVAILABLE
    assert failure.details == (
        "all 2 endpoints of static:///x failing; last error: handshake timed out"
    )


def test_a_failure_without_a_reason_reads_unknown() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1)))
    report(controller.subchannels[addrs(1)[0]], TRANSIENT_FAILURE, "")
    assert pick_failure(controller).details.endswith("; last error: unknown")


def test_a_subchannel_failing_from_the_start_reads_unknown() -> None:
    class FailingFromTheStart(FakeController):
        def new_subchannel(self, address: Address, listener: Any) -> Any:
            sc = super().new_subchannel(address, listener)
            sc.state = SubchannelState(TRANSIENT_FAILURE)
            return sc

    controller = FailingFromTheStart()
    balancer = balancers.get("round_robin").build(
        controller, balancers.BalancerOptions("static:///x")
    )
    balancer.update_resolver_state(ResolverState(addrs(1)))
    assert controller.state is TRANSIENT_FAILURE
    assert pick_failure(controller).details.endswith("; last error: unknown")


def test_ready_clears_the_failure_mark() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1)))
    sc = controller.subchannels[addrs(1)[0]]
    sc.set(TRANSIENT_FAILURE)
    sc.set(READY)
    sc.set(IDLE)  # went idle after working: not failing
    assert controller.state is IDLE
    sc.set(CONNECTING)
    assert controller.state is CONNECTING


def test_resolve_now_only_when_a_working_endpoint_is_lost() -> None:
    controller, balancer = build()
    balancer.update_resolver_state(ResolverState(addrs(1)))
    sc = controller.subchannels[addrs(1)[0]]
    for connectivity in (CONNECTING, READY):
        sc.set(connectivity)
    assert controller.resolve_now_calls == 0  # connecting and getting ready lose nothing
    sc.set(IDLE)  # READY -> IDLE: the endpoint may be gone
    assert controller.resolve_now_calls == 1
    sc.set(CONNECTING)
    sc.set(TRANSIENT_FAILURE)  # CONNECTING -> TRANSIENT_FAILURE
    assert controller.resolve_now_calls == 2
    sc.set(TRANSIENT_FAILURE)
    sc.set(IDLE)  # still the same failure: already asked
    assert controller.resolve_now_calls == 2


@pytest.mark.parametrize(
    "weights",
    [[2999, 1000], [7001, 2999, 1], [100_000, 1], [65535, 30000, 1]],
)
def test_scaled_down_schedules_stay_proportional(weights: list[int]) -> None:
    """Totals over the schedule's limit are scaled down; shares stay within rounding."""
    from balancers.weighted_round_robin import MAX_SCHEDULE, smooth_schedule

    schedule = smooth_schedule(weights)
    assert len(schedule) <= MAX_SCHEDULE + len(weights)  # rounding up may add one each
    counts = collections.Counter(schedule)
    total = sum(weights)
    for index, weight in enumerate(weights):
        assert counts[index] >= 1  # scaling never drops an endpoint
        assert counts[index] / len(schedule) == pytest.approx(weight / total, abs=0.002)


def test_pick_first_parses_its_own_config() -> None:
    builder = balancers.get("pick_first")
    assert isinstance(builder, balancers.ConfigParser)
    assert not balancers.parse_policy_config(builder, {}).shuffle_address_list
    assert balancers.parse_policy_config(
        builder, {"shuffle_address_list": True}
    ).shuffle_address_list
    with pytest.raises(ValueError, match="unknown key 'shuffle'"):
        balancers.parse_policy_config(builder, {"shuffle": True})
    with pytest.raises(ValueError, match="true or false"):
        balancers.parse_policy_config(builder, {"shuffle_address_list": 1})


@pytest.mark.parametrize("policy", ["round_robin", "weighted_round_robin"])
def test_policies_without_config_refuse_one(policy: str) -> None:
    builder = balancers.get(policy)
    assert balancers.parse_policy_config(builder, None) is None
    assert balancers.parse_policy_config(builder, {}) is None
    with pytest.raises(ValueError, match=f"policy {policy} takes no config"):
        balancers.parse_policy_config(builder, {"x": 1})


def test_pick_first_shuffles_each_new_address_list() -> None:
    builder = balancers.get("pick_first")
    orders = set()
    for _ in range(40):
        controller = FakeController()
        config = balancers.parse_policy_config(builder, {"shuffle_address_list": True})
        balancer = builder.build(controller, balancers.BalancerOptions("static:///x", config))
        balancer.update_resolver_state(ResolverState(addrs(1, 2, 3)))
        for sc in controller.subchannels.values():
            sc.set(READY)
        first = controller.picker.pick(INFO).subchannel.address.port
        orders.add(first)
    assert orders == {1, 2, 3}  # 40 shuffles of 3: each address first at least once
    # unshuffled: always the resolver's first
    controller, balancer = build("pick_first")
    balancer.update_resolver_state(ResolverState(addrs(1, 2, 3)))
    for sc in controller.subchannels.values():
        sc.set(READY)
    assert controller.picker.pick(INFO).subchannel.address.port == 1


def test_a_channel_with_a_bad_policy_config_fails_where_it_is_made() -> None:
    with pytest.raises(ValueError, match="takes no config"):
        balancers.aio.insecure_channel("static:///127.0.0.1:1", lb_config={"x": 1})
    with pytest.raises(ValueError, match=r"must be a health\.OutlierConfig"):
        balancers.aio.insecure_channel("static:///127.0.0.1:1", outlier_detection={"x": 1})  # type: ignore[arg-type]


def test_a_plugin_failing_to_load_or_build_leaves_the_others(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from importlib import metadata

    from resolvers import plugins
    from resolvers.plugins import PluginRegistry

    class Good:
        name = "good"

    class Exploding:
        name = "exploding"

        def __init__(self) -> None:
            raise RuntimeError("cannot build")

    targets: dict[str, object] = {"good": Good, "exploding": Exploding}
    monkeypatch.setattr(metadata.EntryPoint, "load", lambda self: targets[self.name])
    points = [metadata.EntryPoint(name, f"x:{name}", "meshkit.test") for name in targets]
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: points)
    registry: PluginRegistry[Any] = PluginRegistry("meshkit.test", "name", "test plugin")
    assert registry.names() == ["good"]
    assert "'exploding' failed to load: cannot build" in caplog.text
