"""Former public names kept importable for one release, each with a ``DeprecationWarning``."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

Loader = Callable[[], Any]
"""Returns the object a former name stands for (imported late: no import cycles)."""


def former_names(module: str, names: Mapping[str, tuple[str, Loader]]) -> Callable[[str], Any]:
    """A module ``__getattr__`` answering ``names`` (former name -> (new name, loader)).

    Each access warns with the new name, from the line that used the former one.
    """

    def __getattr__(name: str) -> Any:
        try:
            new, load = names[name]
        except KeyError:
            raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
        warnings.warn(f"{module}.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return load()

    return __getattr__
