"""A name -> plugin registry filled by ``register()`` and, lazily, an entry-point group.

Resolvers (by scheme) and balancers (by policy name) share it, and a third-party package can
build its own on it. It is public API (``resolvers.plugins``), not a private module reached
into from another package: resolvers is the bottom layer every other package may import, so the
one copy lives here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from importlib import metadata
from typing import Generic, TypeVar

__all__ = ["PluginRegistry"]

T = TypeVar("T")

log = logging.getLogger("meshkit.plugins")


class PluginRegistry(Generic[T]):
    """Plugins keyed by their ``key_attr`` (e.g. ``scheme``), case folded by ``normalize``."""

    def __init__(
        self,
        group: str,
        key_attr: str,
        what: str,
        normalize: Callable[[str], str] = str,
    ) -> None:
        self.group = group
        self._key_attr = key_attr
        self._what = what
        self._normalize = normalize
        self._plugins: dict[str, T] = {}
        self._lock = threading.Lock()
        self._entry_points_loaded = False

    def register(self, plugin: T) -> None:
        """Register ``plugin`` under its key attribute, replacing any earlier one."""
        key = getattr(plugin, self._key_attr, None)
        if not isinstance(key, str) or not key:
            raise ValueError(f"a {self._what} needs a non-empty {self._key_attr!r} attribute")
        with self._lock:
            self._plugins[self._normalize(key)] = plugin

    def get(self, name: str) -> T:
        """The plugin registered as ``name``; ``LookupError`` listing the known names."""
        key = self._normalize(name)
        with self._lock:
            found = self._plugins.get(key)
        if found is None:
            self._load_entry_points()
            with self._lock:
                found = self._plugins.get(key)
        if found is None:
            raise LookupError(f"no {self._what} {name!r}; known: {', '.join(self.names())}")
        return found

    def names(self) -> list[str]:
        """Registered names (entry points included), sorted."""
        self._load_entry_points()
        with self._lock:
            return sorted(self._plugins)

    def _load_entry_points(self) -> None:
        with self._lock:
            if self._entry_points_loaded:
                return
            self._entry_points_loaded = True
        for ep in metadata.entry_points(group=self.group):
            key = self._normalize(ep.name)
            with self._lock:
                if key in self._plugins:
                    continue
            try:
                loaded = ep.load()
                plugin = loaded() if isinstance(loaded, type) else loaded
            except Exception as error:  # a broken plugin must not break the rest
                log.warning("%s plugin %r failed to load: %s", self.group, ep.name, error)
                continue
            with self._lock:
                self._plugins.setdefault(key, plugin)
