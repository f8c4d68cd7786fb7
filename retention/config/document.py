"""YAML text to plain data that remembers where every value was written.

Owns reading the file (unreadable, not UTF-8, not a mapping: one clear line), duplicate-key
detection, merge keys and the place (line) of every value, so that every later problem can
be said as ``policies.yml:14 rules[2].max_age: ...``. It knows nothing of the policy's
fields: ``validate.py`` judges the data, ``warnings.py`` what is risky.

YAML is read through the node API (``yaml.compose``) rather than ``yaml.safe_load``
because only nodes know their line, and only nodes show a key written twice: a plain
load silently keeps the last ``rules:`` and drops every rule above it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.reader import ReaderError

from retention.config.environment import expand
from retention.errors import ConfigError

Loc = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# The policy has no dates or binary values; keeping their text lets errors quote what
# the operator wrote instead of a ``datetime.date(...)`` repr.
_AS_WRITTEN_TAGS = frozenset({"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"})


def read(path: Path) -> tuple[yaml.MappingNode, str]:
    """The file's top-level mapping node, and the file name every problem is placed in."""
    file = str(path)
    return _compose(_read_text(path), file), file


def _read_text(path: Path) -> str:
    """The file as text; unreadable or non-UTF-8 files are config errors, not crashes."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the policy file: {exc.strerror or exc}"]) from exc
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError([f"{path}:{line} the policy file is not UTF-8 text"]) from exc


def _compose(text: str, file: str) -> yaml.MappingNode:
    """Parse to nodes (which keep lines), insisting on a non-empty top-level mapping."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        line = _mark_line(exc)
        where = f"{file}:{line}" if line else f"{file}:"
        reason = ", ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([f"{where} invalid YAML: {reason}"]) from exc
    except ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        message = f"{file}:{line} invalid YAML: {exc.reason} (character #x{exc.character:04x})"
        raise ConfigError([message]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([f"{file}: invalid YAML: {exc}"]) from exc
    if root is None:
        raise ConfigError([f"{file}: the policy file is empty (it needs at least registry.url)"])
    if not isinstance(root, yaml.MappingNode):
        raise ConfigError(
            [
                f"{file}:{root.start_mark.line + 1} the top level must be a mapping of keys "
                f"such as registry: and rules:, got {_describe_node(root)}"
            ]
        )
    return root


def _describe_node(node: yaml.Node) -> str:
    """Name a node's kind the way the operator wrote it."""
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if node.tag == "tag:yaml.org,2002:null":
        return "nothing"
    return repr(node.value)


@dataclass(frozen=True)
class Place:
    """Where a value starts, and where its key is (None for list items and the root)."""

    line: int
    key_line: int | None


@dataclass(frozen=True)
class Problem:
    """One line of output: where, which key, what is wrong."""

    line: int | None
    loc: Loc
    message: str

    def sort_key(self) -> int:
        """Problems are read top to bottom, like the file; unplaced ones come first."""
        return self.line or 0

    def render(self, file: str) -> str:
        """``FILE:LINE keypath: message``; ``FILE: ...`` when no line is known."""
        where = f"{file}: " if self.line is None else f"{file}:{self.line} "
        return where + self.render_without_place()

    def render_without_place(self) -> str:
        """The part after the place; top-level problems have no key path."""
        path = format_loc(self.loc)
        return f"{path}: {self.message}" if path else self.message


@dataclass
class Document:
    """Plain data built from nodes, with the place of every value and what expansion did.

    Mutable only while ``convert`` runs; it is the accumulator of one load.
    """

    environ: Mapping[str, str]
    places: dict[Loc, Place] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    expanded: set[Loc] = field(default_factory=set)
    unresolved: set[Loc] = field(default_factory=set)
    _checked: set[int] = field(default_factory=set)
    _duplicate_keys: set[int] = field(default_factory=set)
    _open: set[int] = field(default_factory=set)
    _constructor: SafeConstructor = field(default_factory=SafeConstructor)

    def convert(self, node: yaml.Node, loc: Loc, key_line: int | None = None) -> object:
        """Turn ``node`` into plain data at ``loc``, remembering its lines."""
        self.places[loc] = Place(node.start_mark.line + 1, key_line)
        if id(node) in self._open:
            self._report(node, loc, "an alias refers to a value that contains it")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, loc)
            if isinstance(node, yaml.SequenceNode):
                return [self.convert(item, (*loc, i)) for i, item in enumerate(node.value)]
            return self._scalar(node, loc)
        finally:
            self._open.discard(id(node))

    def line_of(self, loc: Loc) -> int:
        """Line of the deepest part of ``loc`` that is in the file (the root at worst)."""
        return self._place(loc).line

    def key_line_of(self, loc: Loc) -> int:
        """Line of the key that introduces ``loc``, for errors about the key itself."""
        place = self._place(loc)
        return place.key_line or place.line

    def _place(self, loc: Loc) -> Place:
        """Defaults and missing keys are not in the file: fall back to the nearest parent."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.places:
                return self.places[loc[:end]]
        raise AssertionError("the root is always placed")  # convert() places () first

    def _report(self, node: yaml.Node, loc: Loc, message: str, line: int | None = None) -> None:
        """Record a problem with a value, and that pydantic's view of it is not to be shown."""
        self.problems.append(Problem(line or node.start_mark.line + 1, loc, message))
        self.unresolved.add(loc)

    def _mapping(self, node: yaml.MappingNode, loc: Loc) -> dict[str, object]:
        """Keys stay strings as written (``true:`` is the key 'true'), so paths read back."""
        if id(node) not in self._checked:
            self._checked.add(id(node))
            self._check_duplicates(node, loc)
        try:
            self._constructor.flatten_mapping(node)  # resolves ``<<: *anchor`` merges
        except ConstructorError as exc:
            self._report(node, loc, str(exc.problem), _mark_line(exc))
            return {}
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            if id(key_node) in self._duplicate_keys:
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                self._report(key_node, loc, "keys must be plain words, not lists or mappings")
                continue
            key_line = key_node.start_mark.line + 1
            result[key_node.value] = self.convert(value_node, (*loc, key_node.value), key_line)
        return result

    def _check_duplicates(self, node: yaml.MappingNode, loc: Loc) -> None:
        """YAML keeps the last of two equal keys; here it is an error, or rules get lost.

        The repeated key is then skipped, so the first one is validated and every other
        error points at lines that belong to the same value.
        """
        first_lines: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first_lines:
                message = (
                    f"duplicate key {key_node.value!r} (first on line "
                    f"{first_lines[key_node.value]})"
                )
                self.problems.append(Problem(line, loc, message))
                self._duplicate_keys.add(id(key_node))
            else:
                first_lines[key_node.value] = line

    def _scalar(self, node: yaml.Node, loc: Loc) -> object:
        """Only strings are expanded: a number or bool was written as one, not as ${VAR}."""
        if node.tag == _STR_TAG:
            return self._expand(str(node.value), node, loc)
        if node.tag in _AS_WRITTEN_TAGS:
            return str(node.value)
        try:
            return self._constructor.construct_object(node)
        except ConstructorError as exc:
            self._report(node, loc, str(exc.problem))
            return None

    def _expand(self, text: str, node: yaml.Node, loc: Loc) -> str:
        """``${NAME}`` from the environment (see ``environment.expand``), with its place."""
        expansion = expand(text, self.environ)
        for problem in expansion.problems:
            self._report(node, loc, problem)
        if expansion.from_environment:
            self.expanded.add(loc)
        return expansion.text


def _mark_line(exc: yaml.MarkedYAMLError) -> int | None:
    """PyYAML's marks count from 0; editors count from 1."""
    mark = exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark else None


def format_loc(loc: Loc) -> str:
    """``("rules", 2, "max_age")`` → ``rules[2].max_age``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text
