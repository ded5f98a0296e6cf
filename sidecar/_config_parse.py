"""How the sidecar config is read: YAML loading, ``MESHKIT_*`` overrides, typed parsing.

Generic machinery behind :func:`sidecar.config.load_config`; the model itself (and the only
read of the process environment) lives in :mod:`sidecar.config`.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import types
from collections.abc import Mapping, Sequence
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from sidecar._config_values import (
    ConfigError,
    Duration,
    FieldError,
    HostPort,
    join_path,
    show,
)

ENV_PREFIX = "MESHKIT_"
CONFIG_PATH_VARIABLE = "MESHKIT_CONFIG"


# --------------------------------------------------------------------------- parsing


class _Invalid:
    """Marks a value that failed to convert (its error is already recorded)."""


_INVALID = _Invalid()


class Parser:
    """Raw YAML data -> the typed sections, collecting every error with its full path."""

    def __init__(self, base_dir: str, check_files: bool) -> None:
        self.base_dir = base_dir
        self.check_files = check_files
        self.errors: list[FieldError] = []

    def fail(self, path: str, message: str) -> _Invalid:
        self.errors.append(FieldError(path, message))
        return _INVALID

    def section(self, cls: type[Any], raw: object, path: str) -> Any:
        """Build dataclass ``cls`` from mapping ``raw``; ``_INVALID`` when it cannot be."""
        if not isinstance(raw, Mapping):
            return self.fail(path, f"must be a mapping (got {show(raw)})")
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        for key in raw:
            if not isinstance(key, str):
                self.fail(join_path(path, show(key)), "keys must be strings")
            elif key not in fields:
                close = difflib.get_close_matches(key, fields, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(fields)}"
                self.fail(join_path(path, key), f"unknown key ({hint})")
        values: dict[str, Any] = {}
        broken = False
        for name, f in fields.items():
            value = self.field(f, hints[name], raw.get(name), join_path(path, name))
            if value is _INVALID:
                broken = True
                value = _placeholder(f, hints[name])
            values[name] = value
        if broken:
            # Already wrong: skip its own range checks (placeholders would only add noise),
            # but keep an object so the checks of the sections around it still run.
            return _unchecked(cls, values)
        try:
            return cls(**values)
        except ConfigError as exc:
            self.errors.extend(e.under(path) for e in exc.errors)
            return _unchecked(cls, values)

    def field(self, f: dataclasses.Field[Any], hint: Any, raw: object, path: str) -> Any:
        if raw is None:
            if _optional(hint):
                return None
            default = _default(f)
            return self.fail(path, "required") if default is dataclasses.MISSING else default
        value = self.value(_strip_optional(hint), raw, path)
        if f.metadata.get("file") and isinstance(value, str):
            return self.file(value, path)
        return value

    def value(self, hint: Any, raw: object, path: str) -> Any:
        origin = get_origin(hint)
        if origin is tuple:
            if not isinstance(raw, list):
                return self.fail(path, f"must be a list (got {show(raw)})")
            items = [self.value(get_args(hint)[0], v, f"{path}[{i}]") for i, v in enumerate(raw)]
            return _INVALID if _INVALID in items else tuple(items)
        if origin is Mapping:
            if not isinstance(raw, Mapping):
                return self.fail(path, f"must be a mapping of names (got {show(raw)})")
            entries = {}
            for key, v in raw.items():
                if not isinstance(key, str):
                    entries[key] = self.fail(join_path(path, show(key)), "names must be strings")
                else:
                    entries[key] = self.value(get_args(hint)[1], v, join_path(path, key))
            if _INVALID in entries.values():
                return _INVALID
            return types.MappingProxyType(entries)
        if isinstance(hint, type) and issubclass(hint, HostPort):
            try:
                return hint.parse(raw)
            except ValueError as exc:
                return self.fail(path, str(exc))
        if hint is Duration:
            try:
                return Duration.parse(raw)
            except ValueError as exc:
                return self.fail(path, str(exc))
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            return self.section(hint, raw, path)
        if hint is bool:
            if not isinstance(raw, bool):
                return self.fail(path, f"must be true or false (got {show(raw)})")
            return raw
        if hint is int:
            if isinstance(raw, bool) or not isinstance(raw, int):
                return self.fail(path, f"must be an integer (got {show(raw)})")
            return raw
        if hint is float:
            if isinstance(raw, bool) or not isinstance(raw, (int, float)):
                return self.fail(path, f"must be a number (got {show(raw)})")
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                return self.fail(path, f"must be a string (got {show(raw)}); quote it")
            return raw
        raise TypeError(f"no parser for {hint!r} at {path}")  # pragma: no cover - model bug

    def file(self, value: str, path: str) -> Any:
        # A missing file is recorded but the path is still a well-typed value, so the
        # section's other checks run too.
        if not value.strip():
            return self.fail(path, "must be a file path")
        full = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(value)))
        if self.check_files and not os.path.isfile(full):
            self.fail(path, f"no such file: {full}")
        elif self.check_files and not os.access(full, os.R_OK):
            self.fail(path, f"not readable: {full}")
        return full


def _optional(hint: Any) -> bool:
    return get_origin(hint) in (Union, types.UnionType) and type(None) in get_args(hint)


def _strip_optional(hint: Any) -> Any:
    if not _optional(hint):
        return hint
    (inner,) = [a for a in get_args(hint) if a is not type(None)]
    return inner


def _default(f: dataclasses.Field[Any]) -> Any:
    """The field's default value, or ``dataclasses.MISSING`` when it is required."""
    if f.default_factory is not dataclasses.MISSING:
        factory: Any = f.default_factory
        return factory()
    return f.default


def _placeholder(f: dataclasses.Field[Any], hint: Any) -> Any:
    default = _default(f)
    if default is not dataclasses.MISSING:
        return default
    hint = _strip_optional(hint)
    origin = get_origin(hint)
    if hint is str:
        return ""
    if origin is tuple:
        return ()
    if origin is Mapping:
        return types.MappingProxyType({})
    return None


def _unchecked(cls: type[Any], values: Mapping[str, Any]) -> Any:
    """An instance of ``cls`` holding ``values`` without running its validation."""
    obj = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(obj, name, value)
    return obj


# --------------------------------------------------------------------------- environment


def env_overrides(
    raw: Mapping[str, Any], environ: Mapping[str, str], sections: Sequence[str]
) -> tuple[dict[str, Any], dict[str, str], list[FieldError]]:
    """Apply ``MESHKIT_*`` variables to a copy of ``raw``.

    Returns the new mapping, field path -> variable for what was overridden, and the errors
    of variables that could not be applied (each naming the variable).
    """
    data: dict[str, Any] = copy.deepcopy(dict(raw))
    sources: dict[str, str] = {}
    errors: list[FieldError] = []
    wanted: list[tuple[int, str, list[str], str]] = []
    for name, text in environ.items():
        if not name.upper().startswith(ENV_PREFIX) or name.upper() == CONFIG_PATH_VARIABLE:
            continue
        segments = name[len(ENV_PREFIX) :].split("__")
        section = segments[0].lower()
        if section not in sections:
            # Not config: the MESHKIT_ namespace is shared with tooling. A near miss of a
            # section name is a typo, though, and must not be silently ignored.
            close = difflib.get_close_matches(section, sections, n=1, cutoff=0.75)
            if close:
                errors.append(FieldError(name, f"no config section {section!r}; {close[0]!r}?"))
            continue
        if not all(segments):
            errors.append(FieldError(name, "expected MESHKIT_SECTION__FIELD with non-empty parts"))
            continue
        wanted.append((len(segments), name, segments, text))
    # Shallow paths first, so MESHKIT_ADMIN={...} and MESHKIT_ADMIN__LISTEN=... compose.
    for _, name, segments, text in sorted(wanted):
        try:
            value = yaml.load(text, Loader=Loader)
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or str(exc)
            errors.append(FieldError(name, f"not a valid YAML value: {problem}"))
            continue
        node: Any = data
        path = ""
        for depth, segment in enumerate(segments):
            key: Any
            if isinstance(node, list):
                if not segment.isdigit() or int(segment) >= len(node):
                    errors.append(
                        FieldError(name, f"{path} has {len(node)} items; no index {segment!r}")
                    )
                    break
                key = int(segment)
                path = f"{path}[{key}]"
            elif isinstance(node, dict):
                key = next(
                    (k for k in node if isinstance(k, str) and k.lower() == segment.lower()),
                    segment.lower(),
                )
                path = join_path(path, key)
            else:
                errors.append(FieldError(name, f"{path} is {show(node)}, not a mapping"))
                break
            if depth == len(segments) - 1:
                node[key] = value
                sources[path] = name
            else:
                child = node[key] if isinstance(node, list) else node.get(key)
                if child is None:
                    child = node[key] = {}
                node = child
    return data, sources, errors


def blame(error: FieldError, sources: Mapping[str, str]) -> FieldError:
    """Name the environment variable behind ``error``: one that set its field or a field
    inside it (``MESHKIT_WORKERS__X`` turns ``workers`` into a mapping)."""

    def inside(path: str, outer: str) -> bool:
        return path == outer or path.startswith((outer + ".", outer + "["))

    by_depth = sorted(sources.items(), key=lambda item: -len(item[0]))
    for path, variable in by_depth:
        if inside(error.path, path) or (error.path and inside(path, error.path)):
            return FieldError(error.path, f"{error.message} (set by {variable})")
    return error


# --------------------------------------------------------------------------- loading


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys instead of keeping the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key_node.value!r}",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def yaml_error(path: str, exc: yaml.YAMLError) -> FieldError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return FieldError(where, f"YAML syntax error: {detail}")
