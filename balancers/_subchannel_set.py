"""The shared machinery of policies that keep one subchannel per address.

grpc-go's ``balancer/base``: it diffs address snapshots into subchannel adds and removals,
tracks states, aggregates connectivity, and asks a *picker builder* for a picker over the
READY subchannels. Policies are composed from it (a picker builder), not inherited.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import grpc

from balancers._base import (
    CONNECTING,
    IDLE,
    READY,
    TRANSIENT_FAILURE,
    Balancer,
    BalancerController,
    BalancerOptions,
    ErrorPicker,
    Picker,
    QueuePicker,
    Subchannel,
    SubchannelState,
    aggregate,
)
from resolvers import Address, ResolverState

PickerBuilder = Callable[[Sequence[Subchannel]], Picker]
"""Builds a picker from the READY subchannels (never empty), in address order."""


class SubchannelSetBalancer(Balancer):
    """One subchannel per resolved address; a picker over the READY ones."""

    def __init__(
        self,
        controller: BalancerController,
        options: BalancerOptions,
        picker_builder: PickerBuilder,
        *,
        order: Callable[[Sequence[Address]], Sequence[Address]] | None = None,
    ) -> None:
        """``order``: rearranges each new address list before the subchannels take its order
        (pick_first's shuffle); ``None`` keeps the resolver's order."""
        self._controller = controller
        self._options = options
        self._build_picker = picker_builder
        self._order = order
        self._subchannels: dict[Address, Subchannel] = {}
        self._states: dict[Subchannel, SubchannelState] = {}
        # gRPC's "sticky TRANSIENT_FAILURE": a failed endpoint counts as failed while it retries
        # (CONNECTING), so the channel does not flap between CONNECTING and TRANSIENT_FAILURE.
        self._failed: set[Subchannel] = set()
        self._resolver_note = ""
        self._resolver_error: Exception | None = None
        self._last_reason = ""
        self._closed = False

    @property
    def subchannels(self) -> list[Subchannel]:
        """Current subchannels in address order."""
        return list(self._subchannels.values())

    def update_resolver_state(self, state: ResolverState) -> None:
        if self._closed:
            return
        self._resolver_error = None
        self._resolver_note = state.note
        wanted = {a: a for a in state.addresses}
        for address, sc in list(self._subchannels.items()):
            if address not in wanted:
                del self._subchannels[address]
                self._states.pop(sc, None)
                self._failed.discard(sc)
                self._controller.remove_subchannel(sc)
        ordered: dict[Address, Subchannel] = {}
        addresses = state.addresses if self._order is None else self._order(state.addresses)
        for address in addresses:
            existing = self._subchannels.get(address)
            if existing is None:
                sc = self._controller.new_subchannel(address, self._on_state)
                self._states[sc] = sc.state
                sc.connect()
            else:
                sc = existing
                sc.update_address(address)  # new attributes (e.g. SRV weight), same endpoint
            ordered[address] = sc
        self._subchannels = ordered
        self._regenerate()

    def resolver_error(self, error: Exception) -> None:
        if self._closed:
            return
        self._resolver_error = error
        if not self._subchannels:
            self._regenerate()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sc in self._subchannels.values():
            self._controller.remove_subchannel(sc)
        self._subchannels.clear()
        self._states.clear()

    def _on_state(self, sc: Subchannel, state: SubchannelState) -> None:
        if self._closed or sc not in self._states:
            return
        previous = self._states[sc].connectivity
        self._states[sc] = state
        if state.connectivity is TRANSIENT_FAILURE:
            self._failed.add(sc)
            self._last_reason = state.reason
        elif state.connectivity is READY:
            self._failed.discard(sc)
        if state.connectivity in (TRANSIENT_FAILURE, IDLE) and previous in (READY, CONNECTING):
            # The endpoint may be gone for good: ask for fresh addresses (rate-limited there).
            self._controller.resolve_now()
        self._regenerate()

    def _effective(self, sc: Subchannel) -> grpc.ChannelConnectivity:
        state = self._states[sc].connectivity
        if sc in self._failed and state is not READY:
            return TRANSIENT_FAILURE
        return state

    def _regenerate(self) -> None:
        subchannels = list(self._subchannels.values())
        target = self._options.target
        if not subchannels:
            if self._resolver_error is not None:
                reason = f"name resolution failed for {target}: {self._resolver_error}"
            else:
                note = f": {self._resolver_note}" if self._resolver_note else ""
                reason = f"no addresses resolved for {target}{note}"
            self._controller.update_state(
                TRANSIENT_FAILURE, ErrorPicker(grpc.StatusCode.UNAVAILABLE, reason)
            )
            return
        effective = [self._effective(sc) for sc in subchannels]
        connectivity = aggregate(effective)
        if connectivity is READY:
            ready = [sc for sc, st in zip(subchannels, effective, strict=True) if st is READY]
            self._controller.update_state(READY, self._build_picker(ready))
        elif connectivity is TRANSIENT_FAILURE:
            reason = (
                f"all {len(subchannels)} endpoints of {target} failing; "
                f"last error: {self._last_reason or 'unknown'}"
            )
            self._controller.update_state(
                TRANSIENT_FAILURE, ErrorPicker(grpc.StatusCode.UNAVAILABLE, reason)
            )
        else:
            self._controller.update_state(connectivity, QueuePicker())
