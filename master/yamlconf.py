"""Typed YAML loading with ``file:line: field: reason`` errors, all reported at once.

Settings and the lab inventory are YAML files written by people. They are parsed once, at
the edge, into dataclasses; every problem is collected (not just the first) and nothing is
returned unless the whole file is valid, so nothing is ever half-loaded.

Schema = a dataclass whose fields carry types (``str``, ``int``, ``bool``, ``float``,
``list[X]``, ``dict[str, X]``, ``X | None``, nested dataclasses) and optional checks in
``field(metadata={"check": fn})`` where ``fn(value) -> str | None`` returns a reason.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

# Keys that look like an inline credential. Credentials live in the secrets provider; the
# files name the secret (``*_secret``) instead.
INLINE_SECRET_KEYS = re.compile(r"^(password|passwd|pass|token|secret|api_key|apikey)$", re.I)


MAX_TEXT = 400  # a problem stays one readable line, however large the offending value


def _shorten(text: str, limit: int = MAX_TEXT) -> str:
    """Cut the middle out of an overlong text (a huge value quoted in a message), keeping both ends."""
    if len(text) <= limit:
        return text
    head, tail = limit * 2 // 3, limit // 4
    return f"{text[:head]}...[{len(text) - head - tail} characters cut]...{text[-tail:]}"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    field: str
    message: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "field", _shorten(self.field, 200))
        object.__setattr__(self, "message", _shorten(self.message))

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class ConfigError(Exception):
    """One or more problems in a settings or inventory file."""

    def __init__(self, problems: list[Problem]):
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.field))
        super().__init__("\n".join(str(p) for p in self.problems))


def check(fn: Callable[[Any], str | None], default: Any = dataclasses.MISSING, **kw: Any) -> Any:
    """A dataclass field with a value check (``fn`` returns a reason or None)."""
    meta = {"check": fn}
    if default is dataclasses.MISSING and "default_factory" not in kw:
        return dataclasses.field(metadata=meta, **kw)
    return dataclasses.field(default=default, metadata=meta, **kw)


class Located:
    """Mixin for parsed objects: remembers the line of the object and of each key."""

    _file: str = ""
    _line: int = 0
    _lines: dict[str, int]

    def line_of(self, name: str | None = None) -> int:
        if name is None:
            return self._line
        return getattr(self, "_lines", {}).get(name, self._line)

    def where(self, name: str | None = None) -> str:
        return f"{self._file}:{self.line_of(name)}"


def _set_location(obj: Any, file: str, line: int, lines: dict[str, int]) -> None:
    object.__setattr__(obj, "_file", file)
    object.__setattr__(obj, "_line", line)
    object.__setattr__(obj, "_lines", lines)


class _Invalid:
    def __repr__(self) -> str:
        return "<invalid>"


INVALID: Any = _Invalid()


class Reader:
    """Walks a composed YAML node tree against a schema, collecting problems."""

    def __init__(self, file: str):
        self.file = file
        self.problems: list[Problem] = []
        self._constructor = yaml.SafeLoader(stream="")

    def error(self, node: yaml.Node | None, field: str, message: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 0
        self.problems.append(Problem(self.file, line, field, message))

    def scalar(self, node: yaml.Node, field: str = "") -> Any:
        """The Python value of ``node``; INVALID (with a problem) when YAML cannot construct it.

        PyYAML's constructors fail in odd ways on odd input (``!!timestamp nope`` raises
        AttributeError, a malformed date ValueError): every such failure is the file's fault.
        """
        try:
            return self._constructor.construct_object(node, deep=True)
        except RecursionError:
            self.error(node, field, "invalid value: nested too deeply")
        except Exception as e:
            reason = getattr(e, "problem", None) or str(e) or type(e).__name__
            tag = node.tag.rsplit(":", 1)[-1]
            self.error(node, field, f"cannot read {_describe(node)} as {tag}: {reason}")
        return INVALID

    def parse(self, tp: Any, node: yaml.Node, field: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
                return None
            return self.parse(inner[0], node, field)
        if dataclasses.is_dataclass(tp):
            return self.parse_dataclass(tp, node, field)
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                self.error(node, field, f"expected a list, got {_describe(node)}")
                return INVALID
            return [self.parse(args[0], item, f"{field}[{i}]") for i, item in enumerate(node.value)]
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                self.error(node, field, f"expected a mapping, got {_describe(node)}")
                return INVALID
            out = {}
            for knode, vnode in node.value:
                key = str(self.scalar(knode, field))
                out[key] = self.parse(args[1], vnode, f"{field}.{key}" if field else key)
            return out
        if tp is Any:
            return self.scalar(node, field)
        # plain scalar types
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, field, f"expected {_tname(tp)}, got {_describe(node)}")
            return INVALID
        value = self.scalar(node, field)
        if value is INVALID:
            return INVALID
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
            # e.g. a VLAN range "100" or a version "4.20": accept numbers where text is wanted
            value = node.value
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            self.error(node, field, f"expected {_tname(tp)}, got {_describe(node, value)}")
            return INVALID
        return value

    def parse_dataclass(self, cls: type[T], node: yaml.Node, field: str) -> T:
        if not isinstance(node, yaml.MappingNode):
            self.error(node, field or cls.__name__, f"expected a mapping, got {_describe(node)}")
            return INVALID
        hints = typing.get_type_hints(cls)
        # YAML key -> field; metadata "key" renames (e.g. the YAML key "try" is field try_)
        fields = {
            f.metadata.get("key", f.name): f
            for f in dataclasses.fields(cls)
            if f.init and not f.name.startswith("_")
        }
        values: dict[str, Any] = {}
        lines: dict[str, int] = {}
        seen: set[str] = set()
        for knode, vnode in node.value:
            kvalue = self.scalar(knode, field or cls.__name__)
            if kvalue is INVALID:
                continue
            key = str(kvalue)
            path = f"{field}.{key}" if field else key
            if key in seen:
                self.error(knode, path, "key given twice")
                continue
            seen.add(key)
            if key not in fields:
                if INLINE_SECRET_KEYS.match(key):
                    self.error(
                        knode,
                        path,
                        "credentials must not be written inline; store the value in the secrets "
                        f"directory and name it with '{key}_secret'"
                        if f"{key}_secret" in fields
                        else "credentials must not be written inline; use a secret name",
                    )
                else:
                    self.error(knode, path, f"unknown key (allowed: {', '.join(sorted(fields))})")
                continue
            f = fields[key]
            lines[f.name] = knode.start_mark.line + 1
            value = self.parse(hints[f.name], vnode, path)
            checker = f.metadata.get("check")
            if value is not INVALID and value is not None and checker is not None:
                reason = checker(value)
                if reason:
                    self.error(vnode, path, reason)
                    value = INVALID
            values[f.name] = value
        for key, f in fields.items():
            if f.name not in values:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    self.error(node, f"{field}.{key}" if field else key, "required key is missing")
                    values[f.name] = INVALID
        # Build the object even when some fields are INVALID, so lab-wide checks can still
        # look at the valid parts and every problem is reported in one go; load() never
        # returns such a partial object.
        obj = cls(**values)
        if isinstance(obj, Located):
            _set_location(obj, self.file, node.start_mark.line + 1, lines)
        return obj


def ok(*values: Any) -> bool:
    """True when none of ``values`` is INVALID (for checks over partially valid objects)."""
    return all(v is not INVALID for v in values)


def _tname(tp: Any) -> str:
    return {str: "a string", int: "an integer", bool: "true/false", float: "a number"}.get(tp, str(tp))


def _describe(node: yaml.Node, value: Any = None) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing (null)"
    shown = node.value if len(node.value) <= 40 else node.value[:37] + "..."
    kind = type(value).__name__ if value is not None else "text"
    return f"{kind} {shown!r}"


MAX_DEPTH = 64  # settings and inventories nest a handful of levels; deeper is garbage


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses absurd nesting with a line number.

    PyYAML's composer recurses per level: without a bound, deep garbage ends in a slow
    RecursionError with no line.
    """

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_DEPTH} levels deep", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def compose_text(text: str, file: str) -> tuple[yaml.Node | None, list[Problem]]:
    try:
        node = yaml.compose(text, Loader=_BoundedLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 0
        return None, [Problem(file, line, "", f"invalid YAML: {e.problem or e}")]
    except yaml.YAMLError as e:
        return None, [Problem(file, 0, "", f"invalid YAML: {e}")]
    except RecursionError:
        return None, [Problem(file, 0, "", "invalid YAML: nested too deeply")]
    except ValueError as e:
        return None, [Problem(file, 0, "", f"invalid YAML: {e}")]
    if node is None:
        return None, [Problem(file, 1, "", "file is empty")]
    return node, []


def load(cls: type[T], text: str, file: str, extra: Callable[[T, Reader], None] | None = None) -> T:
    """Parse ``text`` into ``cls``; raise ConfigError with every problem found.

    ``extra(obj, reader)`` runs cross-field checks on a structurally valid object and adds
    problems with ``reader.problems.append``.
    """
    node, problems = compose_text(text, file)
    if problems:
        raise ConfigError(problems)
    reader = Reader(file)
    try:
        obj = reader.parse_dataclass(cls, node, "")
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as e:
        # the constructor can still reject odd scalars (e.g. a malformed timestamp)
        line = getattr(getattr(e, "problem_mark", None), "line", -1) + 1
        raise ConfigError([*reader.problems, Problem(file, line, "", f"invalid value: {e}")]) from None
    if obj is not INVALID and extra is not None:
        extra(obj, reader)  # may see INVALID fields: guard with ok()
    if reader.problems or obj is INVALID:
        raise ConfigError(reader.problems or [Problem(file, 0, "", "invalid file")])
    return obj


def load_file(cls: type[T], path: str | Path, extra: Callable[[T, Reader], None] | None = None) -> T:
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(file, 0, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([Problem(file, 0, "", f"cannot read file: {e}")]) from None
    return load(cls, text, file, extra)
