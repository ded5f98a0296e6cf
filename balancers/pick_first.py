"""``pick_first``: all traffic to the first address (in resolver order) that is READY.

gRPC's pick_first holds one connection and walks the list on failure. Here every address keeps
a warm subchannel, so failing over to the next address costs no connection set-up: the price
is one idle connection per extra address, which for the short lists pick_first is used with
(a primary and its standbys) is the better trade.

Config (gRFC A62): ``{"shuffle_address_list": true}`` shuffles each new address list before
taking its order, so clients given the same list spread over its addresses instead of all
piling onto the first.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from balancers._base import (
    Balancer,
    BalancerController,
    BalancerOptions,
    Picker,
    PickInfo,
    PickResult,
    Subchannel,
)
from balancers._subchannel_set import SubchannelSetBalancer


class FirstReadyPicker(Picker):
    """Always the first READY subchannel."""

    __slots__ = ("_result",)

    def __init__(self, ready: Sequence[Subchannel]) -> None:
        self._result = PickResult(ready[0])

    def pick(self, info: PickInfo) -> PickResult:
        return self._result


@dataclass(frozen=True)
class PickFirstConfig:
    """``pick_first``'s config."""

    shuffle_address_list: bool = False


class PickFirstBuilder:
    """Builds the ``pick_first`` policy."""

    name = "pick_first"

    def parse_config(self, config: Mapping[str, Any]) -> PickFirstConfig:
        """``shuffle_address_list`` (bool) is the one key."""
        unknown = sorted(set(config) - {"shuffle_address_list"})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} (known: shuffle_address_list)")
        shuffle = config.get("shuffle_address_list", False)
        if not isinstance(shuffle, bool):
            raise ValueError(f"shuffle_address_list: must be true or false (got {shuffle!r})")
        return PickFirstConfig(shuffle)

    def build(self, controller: BalancerController, options: BalancerOptions) -> Balancer:
        config = options.config if isinstance(options.config, PickFirstConfig) else None
        order = _shuffled if config is not None and config.shuffle_address_list else None
        return SubchannelSetBalancer(controller, options, FirstReadyPicker, order=order)


def _shuffled(addresses: Sequence[Any]) -> list[Any]:
    return random.sample(list(addresses), len(addresses))
