"""Value types of the sidecar config: errors naming a field, durations, host:port addresses.

Public through :mod:`sidecar.config`; kept apart so the model there reads as the config's shape.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

#: Errors a :class:`ConfigError` lists; past that one line says how many more there were.
MAX_ERRORS = 100
#: Characters of a value that an error message shows.
SHOW_WIDTH = 80
#: What a redacted secret reads as.
REDACTED = "<redacted>"

# C0 and C1 control characters and DEL: no config value needs one, and in a target, a path or
# a log line they only hide what the value really is.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def show(value: object) -> str:
    """``value`` as error messages show it: ``'text'``, ``7``, ``50ms``, ``127.0.0.1:80``.

    At most :data:`SHOW_WIDTH` characters, and the work is bounded too: only the part that is
    shown is ever rendered, so a huge or self-referencing value costs nothing.
    """
    rendering = _Rendering(SHOW_WIDTH + 1)
    rendering.add(value)
    text = "".join(rendering.parts)
    return text if len(text) <= SHOW_WIDTH else text[: SHOW_WIDTH - 3] + "..."


class _Rendering:
    """A ``repr``-like rendering that stops once ``budget`` characters are written."""

    def __init__(self, budget: int) -> None:
        self.parts: list[str] = []
        self.left = budget

    def emit(self, text: str) -> None:
        self.parts.append(text[: max(self.left, 0)])
        self.left -= len(text)

    def add(self, value: object) -> None:
        if self.left <= 0:
            return
        if isinstance(value, (str, bytes)):
            # Cut before repr(): only what can be shown is escaped.
            self.emit(repr(value[: self.left + 1]))
        elif isinstance(value, Duration):
            self.emit(str(value))
        elif isinstance(value, HostPort):
            self.add_host_port(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            # Printing a huge int is quadratic (and refused past 4300 digits).
            digits = value.bit_length() * 0.30103
            self.emit(
                repr(value) if digits < SHOW_WIDTH else f"<an integer of ~{digits:.0f} digits>"
            )
        elif value is None or isinstance(value, (bool, float, complex)):
            self.emit(repr(value))
        elif isinstance(value, Mapping):
            self.add_items("{", "}", value.items(), pairs=True)
        elif isinstance(value, (list, tuple, set, frozenset)):
            opening, closing = ("(", ")") if isinstance(value, tuple) else ("[", "]")
            if isinstance(value, (set, frozenset)):
                opening, closing = "{", "}"
            self.add_items(opening, closing, value, pairs=False)
            if isinstance(value, tuple) and len(value) == 1 and self.left > 0:
                self.parts.insert(-1, ",")
        else:
            # Dates and the like from YAML; anything else by type name, never a blind repr().
            text = repr(value) if type(value).__module__ == "datetime" else None
            self.emit(text or f"<{type(value).__name__}>")

    def add_host_port(self, value: HostPort) -> None:
        host = value.host[: self.left + 1]
        self.emit(f"[{host}]:{value.port}" if ":" in host else f"{host}:{value.port}")

    def add_items(self, opening: str, closing: str, items: Iterable[Any], *, pairs: bool) -> None:
        self.emit(opening)
        for i, item in enumerate(items):
            if self.left <= 0:
                return
            if i:
                self.emit(", ")
            if pairs:
                key, inner = item
                self.add(key)
                self.emit(": ")
                self.add(inner)
            else:
                self.add(item)
        self.emit(closing)


def control_problem(text: str) -> str | None:
    """What is wrong with ``text`` holding a control character, or ``None``. Says which and
    where rather than quoting the value: it may be a credential."""
    found = _CONTROL.search(text)
    if found is None:
        return None
    return f"must not contain control characters (got {found.group()!r} at {found.start()})"


def control_characters(text: str) -> bool:
    """True when ``text`` holds a control character (C0, DEL or C1: ``\\0``, ``\\n``...)."""
    return _CONTROL.search(text) is not None


def redact_url(url: str) -> str:
    """``url`` with its userinfo and the values of its query replaced by ``<redacted>``;
    everything else (scheme, host, port, path, query keys, fragment) as written.

    ``http://user:pw@collector:4318/v1/traces?api_key=k`` ->
    ``http://<redacted>@collector:4318/v1/traces?api_key=<redacted>``. A string that is not a
    URL with ``://`` comes back unchanged.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    # Split by hand rather than rebuild with urlunsplit, which normalizes what it keeps.
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        netloc = f"{REDACTED}@{hostport}" if userinfo else netloc
    before_fragment, hash_, fragment = tail.partition("#")
    path, question, query = before_fragment.partition("?")
    if question:
        query = "&".join(_redact_parameter(p) for p in query.split("&"))
    return f"{scheme}{sep}{netloc}{path}{question}{query}{hash_}{fragment}"


def _redact_parameter(parameter: str) -> str:
    if not parameter:
        return parameter
    key, equals, _ = parameter.partition("=")
    # A bare item (``?TOKEN``) may be the secret itself.
    return f"{key}={REDACTED}" if equals else REDACTED


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
    """The config is invalid; ``errors`` lists every problem found, each naming its field.

    At most :data:`MAX_ERRORS` of them: past that, a last line ``... and N more``.
    """

    def __init__(self, errors: Iterable[FieldError]) -> None:
        found = [_short(e) for e in errors]
        if len(found) > MAX_ERRORS:
            more = len(found) - MAX_ERRORS
            found = [*found[:MAX_ERRORS], FieldError("", f"... and {more} more")]
        self.errors: list[FieldError] = found
        super().__init__("\n".join(str(e) for e in self.errors) or "invalid config")


# Longest error line part kept: a message quoting a long value (a 64 KiB target) is cut.
_MAX_MESSAGE = 500


def _short(error: FieldError) -> FieldError:
    if len(error.path) <= _MAX_MESSAGE and len(error.message) <= _MAX_MESSAGE:
        return error
    cut = _MAX_MESSAGE - 3
    path = error.path if len(error.path) <= _MAX_MESSAGE else error.path[:cut] + "..."
    message = error.message if len(error.message) <= _MAX_MESSAGE else error.message[:cut] + "..."
    return FieldError(path, message)


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
# Longer than any duration anyone writes; checked before the patterns run.
_MAX_DURATION_TEXT = 64


class Duration(float):
    """A span of time as float seconds, written ``50ms``, ``1.5s``, ``2m``, ``1h``, ``1m30s`` or
    a plain number of seconds. Never negative; ``str()`` gives the short form back."""

    @classmethod
    def parse(cls, value: object) -> Duration:
        """Parse ``value``; ``ValueError`` saying what a duration looks like."""
        if isinstance(value, Duration):
            return value
        if isinstance(value, str) and len(value) > _MAX_DURATION_TEXT:
            raise ValueError(f'must be a duration like "1.5s", not {len(value)} characters')
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                seconds = float(value)
            except OverflowError:  # an int past float's range
                raise ValueError(f"must be a finite duration (got {show(value)})") from None
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
        if not math.isfinite(self) or abs(self) >= 1e12:
            # Out of any config's range (see the bounds in sidecar.config): as a plain number.
            return f"{float(self)!r}s"
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
_DOTTED_NUMBERS = re.compile(r"^[0-9.]+$")
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
        problem = control_problem(text)
        if problem is not None:
            raise ValueError(problem)
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or not rest.startswith(":"):
                raise ValueError(f'must be "[ipv6]:port" (got {show(value)})')
            port_text = rest[1:]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(
                    f"{show(host)} is not an IPv6 address (got {show(value)})"
                ) from None
        else:
            host, colon, port_text = text.rpartition(":")
            if not colon:
                raise ValueError(f'must be "host:port", the port is missing (got {show(value)})')
            if ":" in host:
                raise ValueError(f"IPv6 addresses need brackets: [ipv6]:port (got {show(value)})")
            if not _HOSTNAME.match(host):
                raise ValueError(f"invalid host {show(host)} (got {show(value)})")
            if _DOTTED_NUMBERS.match(host):
                # All digits and dots is never a DNS name: an IPv4 address or a mistake.
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    raise ValueError(
                        f"{show(host)} is not an IPv4 address: four numbers 0..255"
                        f" (got {show(value)})"
                    ) from None
        # str.isdigit() takes any script's digits (Arabic-Indic "٨٠" is 80): ASCII only.
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError(f"port must be a number, ASCII digits (got {show(value)})")
        if len(port_text) > 5:
            lowest = 0 if cls.allow_any_port else 1
            raise ValueError(f"port must be {lowest}..65535 (got {show(value)})")
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
