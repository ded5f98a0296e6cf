"""Value types of the sidecar config: errors naming a field, durations, host:port addresses.

Public through :mod:`sidecar.config`; kept apart so the model there reads as the config's shape.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, TypeVar


def show(value: object) -> str:
    """``value`` as error messages show it: ``'text'``, ``7``, ``50ms``, ``127.0.0.1:80``."""
    text = str(value) if isinstance(value, (Duration, HostPort)) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


@dataclass(frozen=True)
class FieldError:
    """One problem in the config: the full field path and what is wrong with it.

    ``path`` is dotted with list indexes (``outbound.routes[1].cluster``); it is the variable
    name for a bad environment override and ``file:line:column`` for a YAML syntax error.
    """

    path: str
    message: str

    def under(self, prefix: str) -> FieldError:
        """The same error with ``prefix`` in front of its path."""
        return FieldError(join_path(prefix, self.path), self.message)

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class ConfigError(ValueError):
    """The config is invalid; ``errors`` lists every problem found, each naming its field."""

    def __init__(self, errors: Iterable[FieldError]) -> None:
        self.errors: list[FieldError] = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors) or "invalid config")


def join_path(prefix: str, key: str) -> str:
    """``join_path("a.b", "c") == "a.b.c"``; ``join_path("a", "[0]") == "a[0]"``."""
    if not prefix:
        return key
    if not key:
        return prefix
    return prefix + key if key.startswith("[") else f"{prefix}.{key}"


_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h))+")
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_PLAIN_NUMBER = re.compile(_NUMBER)
_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0}


class Duration(float):
    """A span of time as float seconds, written ``50ms``, ``1.5s``, ``2m``, ``1h``, ``1m30s`` or
    a plain number of seconds. Never negative; ``str()`` gives the short form back."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        """Parse ``value``; ``ValueError`` saying what a duration looks like."""
        if isinstance(value, Duration):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        elif isinstance(value, str) and _PLAIN_NUMBER.fullmatch(value.strip()):
            seconds = float(value.strip())
        elif isinstance(value, str) and _DURATION.fullmatch(value.strip()):
            seconds = 0.0
            for number, unit in _DURATION_PART.findall(value.strip()):
                if unit == "ms":
                    seconds += float(number) / 1000
                else:
                    seconds += float(number) * _UNIT_SECONDS[unit]
        elif isinstance(value, str) and value.strip().startswith("-"):
            raise ValueError(f"must not be negative (got {show(value)})")
        else:
            raise ValueError(
                'must be a duration like "50ms", "1.5s", "2m", "1h" or a number of seconds'
                f" (got {show(value)})"
            )
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"must be a finite, non-negative duration (got {show(value)})")
        return cls(seconds)

    @property
    def ms(self) -> int:
        """Whole milliseconds (rounded), the unit of grpc channel arguments."""
        return round(float(self) * 1000)

    def __str__(self) -> str:
        millis = round(float(self) * 1000)
        if millis % 3_600_000 == 0 and millis:
            text = f"{millis // 3_600_000}h"
        elif millis % 60_000 == 0 and millis:
            text = f"{millis // 60_000}m"
        elif millis % 1000 == 0:
            text = f"{millis // 1000}s"
        elif millis < 1000:
            text = f"{millis}ms"
        else:
            text = f"{millis / 1000!r}s"
        if Duration.parse(text) == float(self):
            return text
        return f"{float(self)!r}s"

    def __repr__(self) -> str:
        return f"Duration({str(self)!r})"


_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_HP = TypeVar("_HP", bound="HostPort")


@dataclass(frozen=True)
class HostPort:
    """``host:port`` (``[v6]:port`` for IPv6) of something we connect to; port 1..65535."""

    host: str
    port: int

    allow_any_port: ClassVar[bool] = False

    @classmethod
    def parse(cls: type[_HP], value: object) -> _HP:
        """Parse ``host:port`` or ``[v6]:port``; ``ValueError`` saying what is wrong."""
        if not isinstance(value, str):
            raise ValueError(f'must be a "host:port" string (got {show(value)})')
        text = value.strip()
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or not rest.startswith(":"):
                raise ValueError(f'must be "[ipv6]:port" (got {show(value)})')
            port_text = rest[1:]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv6 address (got {show(value)})") from None
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon:
                raise ValueError(f'must be "host:port", the port is missing (got {show(value)})')
            if ":" in host:
                raise ValueError(f'IPv6 addresses need brackets: "[{host}]:port"')
            if not _HOSTNAME.match(host):
                raise ValueError(f"invalid host {host!r} (got {show(value)})")
        if not port_text.isdigit():
            raise ValueError(f"port must be a number (got {show(value)})")
        return cls(host, int(port_text))

    def __post_init__(self) -> None:
        lowest = 0 if self.allow_any_port else 1
        if not self.host:
            raise ValueError("host is empty")
        if not lowest <= self.port <= 65535:
            raise ValueError(f"port must be {lowest}..65535 (got {self.port})")

    @property
    def is_wildcard(self) -> bool:
        """True for ``0.0.0.0`` and ``::`` (every interface)."""
        return self.host in ("0.0.0.0", "::")

    def overlaps(self, other: HostPort) -> bool:
        """True when binding both would collide (same port; same host or a wildcard)."""
        if self.port == 0 or self.port != other.port:
            return False
        return self.host == other.host or self.is_wildcard or other.is_wildcard

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ListenAddress(HostPort):
    """A listener's ``host:port``; port ``0`` means "any free port" (tests)."""

    allow_any_port: ClassVar[bool] = True
