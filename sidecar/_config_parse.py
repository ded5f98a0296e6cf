"""How the sidecar config is read: YAML loading, ``MESHKIT_*`` overrides, typed parsing.

Generic machinery behind :func:`sidecar.config.load_config`; the model itself (and the only
read of the process environment) lives in :mod:`sidecar.config`.

Reading is bounded, so a hostile file or variable costs a fixed, small amount of time and
memory before it is refused (a ~700-byte YAML "billion laughs" would otherwise expand to
gigabytes): files up to :data:`MAX_FILE_BYTES`, variables up to :data:`MAX_VARIABLE_CHARS`,
strings up to :data:`MAX_STRING_CHARS`, nesting up to :data:`MAX_DEPTH`, :data:`MAX_ENTRIES` per
mapping or list and :data:`MAX_VALUES` in all, where an alias counts as a full copy of what it
names. The YAML limits are checked while the document is composed, before anything is built.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import re
import ssl
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode
from yaml.parser import Parser as EventParser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

from sidecar._config_values import (
    MAX_ERRORS,
    ConfigError,
    Duration,
    FieldError,
    HostPort,
    control_characters,
    control_problem,
    join_path,
    show,
)

ENV_PREFIX = "MESHKIT_"
CONFIG_PATH_VARIABLE = "MESHKIT_CONFIG"

#: Largest config file read (a real one is a few KiB).
MAX_FILE_BYTES = 1 << 20
#: Longest ``MESHKIT_*`` value.
MAX_VARIABLE_CHARS = 64 << 10
#: Longest string anywhere in the config (a static target of a thousand addresses fits).
MAX_STRING_CHARS = 64 << 10
#: Deepest nesting of mappings and lists (the config's own shape is 5 deep).
MAX_DEPTH = 64
#: Most entries in one mapping or list (clusters, routes...).
MAX_ENTRIES = 1000
#: Most values (keys included) in one document, an alias counting as a copy of what it names.
MAX_VALUES = 20_000
#: Largest TLS file (PEM certificate, key or CA bundle) checked.
MAX_PEM_BYTES = 1 << 20


# --------------------------------------------------------------------------- parsing


class _Invalid:
    """Marks a value that failed to convert (its error is already recorded)."""


_INVALID = _Invalid()


_FieldTable = tuple[dict[str, dataclasses.Field[Any]], dict[str, Any]]
_FIELD_TABLES: dict[type[Any], _FieldTable] = {}


def _fields(cls: type[Any]) -> _FieldTable:
    """``cls``'s init fields and resolved type hints (resolving them is the slow part)."""
    table = _FIELD_TABLES.get(cls)
    if table is None:
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        table = _FIELD_TABLES[cls] = (fields, get_type_hints(cls))
    return table


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
        fields, hints = _fields(cls)
        for key in raw:
            if not isinstance(key, str):
                self.fail(join_path(path, show(key)), "keys must be strings")
            elif key not in fields:
                self.fail(join_path(path, _key_text(key)), self._unknown_key(key, fields))
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

    def _unknown_key(self, key: str, fields: Mapping[str, object]) -> str:
        if len(self.errors) >= MAX_ERRORS:
            return "unknown key"  # past what is shown: skip the costly "did you mean"
        close = difflib.get_close_matches(key[:100], fields, n=1)
        return f"unknown key ({f'did you mean {close[0]!r}?' if close else _known(fields)})"

    def field(self, f: dataclasses.Field[Any], hint: Any, raw: object, path: str) -> Any:
        if raw is None:
            if _optional(hint):
                return None
            default = _default(f)
            return self.fail(path, "required") if default is dataclasses.MISSING else default
        value = self.value(_strip_optional(hint), raw, path)
        if f.metadata.get("file") and isinstance(value, str):
            return self.file(value, path)
        if f.metadata.get("file") and isinstance(value, tuple):
            return tuple(self.file(v, f"{path}[{i}]") for i, v in enumerate(value))
        return value

    def value(self, hint: Any, raw: object, path: str) -> Any:
        if hint is Any:
            # Free-form data another component checks (a policy's lb_config): kept as read,
            # within the document's size, depth and value bounds already enforced.
            return raw
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
                elif control_characters(key):
                    entries[key] = self.fail(
                        join_path(path, show(key)), "names must not contain control characters"
                    )
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
            if (isinstance(raw, int) and raw.bit_length() > 64) or not math.isfinite(raw):
                return self.fail(path, f"must be a finite number (got {show(raw)})")
            return float(raw)
        if hint is str:
            if not isinstance(raw, str):
                return self.fail(path, f"must be a string (got {show(raw)}); quote it")
            problem = control_problem(raw)
            if problem is not None:
                # Caught here, before any check hands the value to the OS or a resolver.
                return self.fail(path, problem)
            return raw
        raise TypeError(f"no parser for {hint!r} at {path}")  # pragma: no cover - model bug

    def file(self, value: str, path: str) -> Any:
        # A missing file is recorded but the path is still a well-typed value, so the
        # section's other checks run too.
        if not value.strip():
            return self.fail(path, "must be a file path")
        full = os.path.normpath(os.path.join(self.base_dir, os.path.expanduser(value)))
        if self.check_files and not os.path.isfile(full):
            self.fail(path, f"no such file: {show(full)[1:-1]}")
        elif self.check_files and not os.access(full, os.R_OK):
            self.fail(path, f"not readable: {show(full)[1:-1]}")
        return full


def _known(fields: Mapping[str, object]) -> str:
    return f"known: {', '.join(fields)}"


def _key_text(key: str) -> str:
    """A key as an error path shows it: itself, cut when long or strange."""
    if len(key) <= 64 and not control_characters(key):
        return key
    return show(key)


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


# --------------------------------------------------------------------------- shape limits


def shape_problem(data: object, path: str = "") -> FieldError | None:
    """The first way ``data`` (parsed YAML, or a mapping handed to ``parse_config``) breaks
    the reading limits, or ``None``: nesting, entries, values in all, string length.

    The walk stops at the first problem, so its cost is bounded by :data:`MAX_VALUES` however
    large (or self-referencing) ``data`` is.
    """
    stack: list[tuple[object, str, int]] = [(data, path, 0)]
    seen = 0
    while stack:
        value, where, depth = stack.pop()
        seen += 1
        if seen > MAX_VALUES:
            return FieldError(where, f"more than {MAX_VALUES} values in all")
        if isinstance(value, (str, bytes)):
            if len(value) > MAX_STRING_CHARS:
                return FieldError(
                    where, f"a value of {len(value)} characters; at most {MAX_STRING_CHARS}"
                )
        elif isinstance(value, (Mapping, list, tuple, set, frozenset)):
            if depth >= MAX_DEPTH:
                return FieldError(where, f"nesting deeper than {MAX_DEPTH} levels")
            if len(value) > MAX_ENTRIES:
                return FieldError(
                    where, f"{len(value)} entries; at most {MAX_ENTRIES} in one mapping or list"
                )
            if isinstance(value, Mapping):
                for key, item in value.items():
                    seen += 1
                    if isinstance(key, str) and len(key) > MAX_STRING_CHARS:
                        return FieldError(where, f"a key of {len(key)} characters")
                    label = _key_text(key) if isinstance(key, str) else show(key)
                    stack.append((item, join_path(where, label), depth + 1))
            else:
                stack.extend((item, f"{where}[{i}]", depth + 1) for i, item in enumerate(value))
    return None


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
            close = difflib.get_close_matches(section[:100], sections, n=1, cutoff=0.75)
            if close:
                errors.append(FieldError(name, f"no config section {section!r}; {close[0]!r}?"))
            continue
        if not all(segments):
            errors.append(FieldError(name, "expected MESHKIT_SECTION__FIELD with non-empty parts"))
            continue
        if len(text) > MAX_VARIABLE_CHARS:
            errors.append(
                FieldError(name, f"{len(text)} characters long; at most {MAX_VARIABLE_CHARS}")
            )
            continue
        wanted.append((len(segments), name, segments, text))
    # Shallow paths first, so MESHKIT_ADMIN={...} and MESHKIT_ADMIN__LISTEN=... compose.
    for _, name, segments, text in sorted(wanted):
        try:
            value = load_yaml(text)
        except yaml.YAMLError as exc:
            errors.append(FieldError(name, _yaml_problem(exc, "not a valid YAML value")))
            continue
        node: Any = data
        path = ""
        for depth, segment in enumerate(segments):
            key: Any
            if isinstance(node, list):
                index = segment.isascii() and segment.isdigit() and len(segment) <= 9
                if not index or int(segment) >= len(node):
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


class LimitError(ComposerError):
    """A YAML document beyond the reading limits (nesting, entries, values, aliases)."""


class _Bounded(Composer, SafeConstructor):
    """PyYAML's composer and safe constructor, bounded (see the module's doc), rejecting
    duplicate keys instead of keeping the last one."""

    peek_event: Callable[[], Any]  # from the event parser it is mixed with

    def _start_bounds(self) -> None:
        self._depth = 0  # nodes being composed around the current one
        self._values = 0  # values composed so far, aliases counted in full
        self._sizes: dict[str, int] = {}  # anchor -> values its node stands for

    def _count(self, values: int, mark: Any) -> None:
        self._values += values
        if self._values > MAX_VALUES:
            raise LimitError(
                None,
                None,
                f"more than {MAX_VALUES} values in all (an alias counts as a full"
                " copy of what it names)",
                mark,
            )

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        mark: Any = event.start_mark
        if parent is not None and len(parent.value) >= MAX_ENTRIES:
            raise LimitError(
                None,
                None,
                f"more than {MAX_ENTRIES} entries in one mapping or list",
                mark,
            )
        if isinstance(event, yaml.AliasEvent):
            size = self._sizes.get(event.anchor or "")
            if size is None and event.anchor in self.anchors:
                raise LimitError(
                    None,
                    None,
                    f"alias *{event.anchor} is inside the node it names (a recursive structure)",
                    mark,
                )
            self._count(size or 0, mark)  # an undefined alias: super() says so
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise LimitError(None, None, f"nesting deeper than {MAX_DEPTH} levels", mark)
        before = self._values
        self._count(1, mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self._sizes[anchor] = self._values - before
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as exc:
            # A date like 2020-13-45, an integer past 4300 digits: name where it is.
            raise ConstructorError(
                None, None, f"cannot read this value: {exc}", node.start_mark
            ) from None

    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(node.value) > 100:  # int() of 5,000 digits is refused, of 4,000 slow
            raise ConstructorError(
                None, None, f"an integer of {len(node.value)} characters", node.start_mark
            )
        return super().construct_yaml_int(node)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {show(key_node.value)}",
                        key_node.start_mark,
                    )
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


# The constructors are looked up by tag in a table, not as methods: register the bounded one.
_Bounded.add_constructor(  # type: ignore[type-var]  # the stub only knows PyYAML's loaders
    "tag:yaml.org,2002:int", _Bounded.construct_yaml_int
)


class PureLoader(Reader, Scanner, EventParser, _Bounded, Resolver):
    """The config's YAML loader, all in Python: the one used where PyYAML has no libyaml."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        EventParser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self._start_bounds()

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        # The scanner reads a flow collection's nested starts ahead of the composer (each
        # may begin a key), in quadratic time: the depth limit must stop it here already.
        if self.flow_level >= MAX_DEPTH:
            raise LimitError(None, None, f"nesting deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)


Loader: Callable[[str], _Bounded] = PureLoader

if yaml.__with_libyaml__:
    from yaml._yaml import CParser

    class FastLoader(_Bounded, CParser, Resolver):
        """The config's YAML loader: libyaml scans and parses (a 1 MiB string takes
        milliseconds, not seconds), the bounded composer above builds the nodes."""

        def __init__(self, stream: str) -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._start_bounds()

    Loader = FastLoader


def load_yaml(text: str, loader: Callable[[str], _Bounded] | None = None) -> Any:
    """One YAML document, within the limits; ``yaml.YAMLError`` (a :class:`LimitError` for
    the limits) otherwise. ``loader``: the class to use (default :data:`Loader`)."""
    reader: Any = (loader or Loader)(text)
    try:
        return reader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        # libyaml's scanner reads ahead and has a nesting limit of its own (1000): one message.
        if "nesting depth" in str(exc.problem):
            raise LimitError(
                None, None, f"nesting deeper than {MAX_DEPTH} levels", exc.problem_mark
            ) from None
        raise
    except RecursionError:  # pragma: no cover - the depth limit comes first
        raise LimitError(None, None, f"nesting deeper than {MAX_DEPTH} levels", None) from None
    except (ArithmeticError, LookupError, AttributeError, TypeError, ValueError) as exc:
        # PyYAML's own constructors fail this way on some tagged scalars (``!!float ""`` is an
        # IndexError, ``!!bool`` with no value a KeyError, ``!!timestamp ""`` an
        # AttributeError): bad input, to be told as such, not a traceback.
        raise ConstructorError(
            None, None, f"a value YAML cannot build ({type(exc).__name__}: {exc})", None
        ) from None
    finally:
        reader.dispose()


def load_file(path: str) -> Any:
    """The YAML document in the file at ``path``; :class:`ConfigError` naming the file (and
    line:column) when it cannot be read, is too large, or is not YAML within the limits."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError([FieldError(path, f"cannot read: {exc.strerror or exc}")]) from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigError(
            [FieldError(path, f"larger than {MAX_FILE_BYTES} bytes; a sidecar config is a few KiB")]
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([FieldError(path, f"not UTF-8 text ({exc.reason})")]) from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError([yaml_error(path, exc)]) from None


def yaml_error(path: str, exc: yaml.YAMLError) -> FieldError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    return FieldError(where, _yaml_problem(exc, "YAML syntax error"))


def _yaml_problem(exc: yaml.YAMLError, kind: str) -> str:
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if isinstance(exc, LimitError):
        return f"refused: {problem}"
    context = getattr(exc, "context", None)
    return f"{kind}: {problem} ({context})" if context else f"{kind}: {problem}"


# --------------------------------------------------------------------------- TLS files

_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.S)
_PRIVATE_KEY = re.compile(rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----")


def tls_problems(
    path: str, *, cert: str | None, key: str | None, ca: str | None, ca_field: str
) -> list[FieldError]:
    """Problems of the TLS files of section ``path``: each must be PEM (certificates for
    ``cert`` and the CA, an unencrypted private key for ``key``) and ``key`` must belong to
    ``cert``. Files that do not exist are skipped (the loader reports them)."""
    errors: list[FieldError] = []
    chain = _certificates(path, "cert", cert, errors)
    _certificates(path, ca_field, ca, errors)
    key_ok = _private_key(path, key, errors)
    if chain is not None and key_ok and cert is not None and key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            # Never prompts: an encrypted key was refused above, and the callback says "".
            context.load_cert_chain(cert, key, password=lambda: b"")
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                problem = f"does not belong to the certificate in cert ({cert})"
            else:
                problem = f"not a usable private key ({exc.reason or exc})"
            errors.append(FieldError(join_path(path, "key"), problem))
    return errors


def _read_pem(path: str, field: str, file: str | None, errors: list[FieldError]) -> bytes | None:
    if file is None or not os.path.isfile(file):
        return None
    try:
        with open(file, "rb") as stream:
            data = stream.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        errors.append(FieldError(join_path(path, field), f"cannot read: {exc.strerror or exc}"))
        return None
    if len(data) > MAX_PEM_BYTES:
        errors.append(
            FieldError(join_path(path, field), f"{file}: larger than {MAX_PEM_BYTES} bytes")
        )
        return None
    return data


def _certificates(
    path: str, field: str, file: str | None, errors: list[FieldError]
) -> bytes | None:
    data = _read_pem(path, field, file, errors)
    if data is None:
        return None
    blocks = _CERTIFICATE.findall(data)
    if not blocks:
        errors.append(
            FieldError(
                join_path(path, field), f"{file}: not a PEM certificate (no BEGIN CERTIFICATE)"
            )
        )
        return None
    try:
        text = b"\n".join(blocks).decode("ascii")
    except UnicodeDecodeError:  # PEM is ASCII; ssl's cadata refuses anything else
        errors.append(
            FieldError(join_path(path, field), f"{file}: a broken PEM certificate (not ASCII)")
        )
        return None
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=text)
    except ssl.SSLError as exc:
        errors.append(
            FieldError(join_path(path, field), f"{file}: a broken PEM certificate ({exc.reason})")
        )
        return None
    return data


def _private_key(path: str, file: str | None, errors: list[FieldError]) -> bool:
    data = _read_pem(path, "key", file, errors)
    if data is None:
        return False
    found = _PRIVATE_KEY.search(data)
    if found is None:
        errors.append(
            FieldError(
                join_path(path, "key"), f"{file}: not a PEM private key (no BEGIN PRIVATE KEY)"
            )
        )
        return False
    if found.group(1).startswith(b"ENCRYPTED"):
        errors.append(
            FieldError(
                join_path(path, "key"),
                f"{file}: an encrypted private key; the sidecar needs it unencrypted",
            )
        )
        return False
    return True
