"""The policy file: YAML text in, a validated ``Policy`` out, every mistake with its place.

Owns reading the file, ``${VAR}`` expansion, duplicate-key detection and turning pydantic's
errors into lines an operator can act on (``policies.yml:14 rules[2].max_age: ...``). It
must not decide what a policy means: the model lives in ``policy.py`` and the planner
applies it. The one exception is ``check_warnings``, which points at settings that are
valid but probably not what the operator wants.

YAML is read through the node API (``yaml.compose``) rather than ``yaml.safe_load``
because only nodes know their line, and only nodes show a key written twice: a plain
load silently keeps the last ``rules:`` and drops every rule above it.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import Annotated, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.reader import ReaderError

from retention.config.schedule import make_trigger
from retention.core.policy import Policy, Rule, gc_problems, policy_from_mapping
from retention.errors import ConfigError

__all__ = ["LoadedPolicy", "check_warnings", "load_policy", "load_policy_with_warnings"]

Loc = tuple[str | int, ...]

_STR_TAG = "tag:yaml.org,2002:str"
_MERGE_TAG = "tag:yaml.org,2002:merge"
# The policy has no dates or binary values; keeping their text lets errors quote what
# the operator wrote instead of a ``datetime.date(...)`` repr.
_AS_WRITTEN_TAGS = frozenset({"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"})
_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)(\}?)")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Error types raised by policy.py whose message is already a finished sentence.
_OWN_ERROR_TYPES = frozenset(
    {"duration", "regex", "url", "rule_limit", "rule_name", "command", "schedule", "listen"}
    | {"token", "notify"}
    | {"credentials", "tls", "in_use", "repository"}
)
_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "tuple_type": "a list",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "dict_type": "a mapping",
    "path_type": "a path",
}
_BOUNDS = {
    "greater_than_equal": (">=", "ge"),
    "greater_than": (">", "gt"),
    "less_than_equal": ("<=", "le"),
    "less_than": ("<", "lt"),
}
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")
_MATCH_EVERYTHING = frozenset({".*", ".+"})


@dataclass(frozen=True)
class LoadedPolicy:
    """A valid policy plus the warnings an operator should read before trusting it."""

    policy: Policy
    warnings: tuple[str, ...]


def load_policy(path: Path, environ: Mapping[str, str] | None = None) -> Policy:
    """Read, expand and validate a policy file; raise ``ConfigError`` listing every problem."""
    return load_policy_with_warnings(path, environ).policy


def load_policy_with_warnings(path: Path, environ: Mapping[str, str] | None = None) -> LoadedPolicy:
    """Like ``load_policy``, and also warn about risky settings, each with its place.

    Separate from ``check_warnings`` because one warning (a password written inline)
    depends on the file's text, which a ``Policy`` no longer remembers.
    """
    file = str(path)
    root = _compose(_read_text(path), file)
    document = _Document(os.environ if environ is None else environ)
    data = document.convert(root, ())
    policy = _validate(data, document, file)
    warnings = [*_source_warnings(policy, document), *_policy_warnings(policy)]
    rendered = sorted(
        (_Problem(document.line_of(loc), loc, message) for loc, message in warnings),
        key=_Problem.sort_key,
    )
    return LoadedPolicy(policy, tuple(problem.render(file) for problem in rendered))


def check_warnings(policy: Policy) -> list[str]:
    """Settings that are valid but likely to hurt, as ``keypath: message`` lines.

    Works on any ``Policy``, including one built in code; it cannot give line numbers
    or see whether a password came from the environment (``load_policy_with_warnings`` can).
    """
    warnings = _policy_warnings(policy)
    return [_Problem(None, loc, message).render_without_place() for loc, message in warnings]


# --- reading -------------------------------------------------------------------------


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


# --- nodes to data -------------------------------------------------------------------


@dataclass(frozen=True)
class _Place:
    """Where a value starts, and where its key is (None for list items and the root)."""

    line: int
    key_line: int | None


@dataclass(frozen=True)
class _Problem:
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
        path = _format_loc(self.loc)
        return f"{path}: {self.message}" if path else self.message


@dataclass
class _Document:
    """Plain data built from nodes, with the place of every value and what expansion did.

    Mutable only while ``convert`` runs; it is the accumulator of one load.
    """

    environ: Mapping[str, str]
    places: dict[Loc, _Place] = field(default_factory=dict)
    problems: list[_Problem] = field(default_factory=list)
    expanded: set[Loc] = field(default_factory=set)
    unresolved: set[Loc] = field(default_factory=set)
    _checked: set[int] = field(default_factory=set)
    _duplicate_keys: set[int] = field(default_factory=set)
    _open: set[int] = field(default_factory=set)
    _constructor: SafeConstructor = field(default_factory=SafeConstructor)

    def convert(self, node: yaml.Node, loc: Loc, key_line: int | None = None) -> object:
        """Turn ``node`` into plain data at ``loc``, remembering its lines."""
        self.places[loc] = _Place(node.start_mark.line + 1, key_line)
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

    def _place(self, loc: Loc) -> _Place:
        """Defaults and missing keys are not in the file: fall back to the nearest parent."""
        for end in range(len(loc), -1, -1):
            if loc[:end] in self.places:
                return self.places[loc[:end]]
        raise AssertionError("the root is always placed")  # convert() places () first

    def _report(self, node: yaml.Node, loc: Loc, message: str, line: int | None = None) -> None:
        """Record a problem with a value, and that pydantic's view of it is not to be shown."""
        self.problems.append(_Problem(line or node.start_mark.line + 1, loc, message))
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
                self.problems.append(_Problem(line, loc, message))
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
        """Replace ``${NAME}`` from the environment; ``$$`` is a literal ``$``.

        A lone ``$`` stays as written, so regexes such as ``v\\d+$`` need no escaping.
        Expanded text is not expanded again: a ``$`` inside a secret stays a ``$``.
        """
        if "$" not in text:
            return text

        def replace(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, closed = match.group(1), match.group(2)
            if not closed or not _VARIABLE_NAME.fullmatch(name):
                self._report(
                    node,
                    loc,
                    f"{match.group(0)!r} is not a variable reference "
                    "(write ${NAME}, or $${ for a literal ${)",
                )
                return match.group(0)
            if name not in self.environ:
                self._report(node, loc, f"environment variable {name!r} is not set")
                return ""
            self.expanded.add(loc)
            return self.environ[name]

        return _REFERENCE.sub(replace, text)


def _mark_line(exc: yaml.MarkedYAMLError) -> int | None:
    """PyYAML's marks count from 0; editors count from 1."""
    mark = exc.problem_mark or exc.context_mark
    return mark.line + 1 if mark else None


# --- validation errors to lines ------------------------------------------------------


def _validate(data: object, document: _Document, file: str) -> Policy:
    """Validate, then report file problems and model errors together, sorted by line.

    Errors under a value whose expansion failed are dropped: the operator's mistake is
    the missing variable, not the empty string that stood in for it.
    """
    problems = list(document.problems)
    policy: Policy | None = None
    try:
        policy = policy_from_mapping(data)
    except ValidationError as exc:
        problems += [
            _problem_from_error(error, document)
            for error in exc.errors(include_url=False)
            if not _is_under(tuple(error["loc"]), document.unresolved)
        ]
    if policy is not None:
        problems += _schedule_problems(policy, document)
        problems += _gc_problems(policy, document)
    if problems or policy is None:
        ordered = sorted(problems, key=_Problem.sort_key)
        raise ConfigError([problem.render(file) for problem in ordered])
    return policy


def _schedule_problems(policy: Policy, document: _Document) -> list[_Problem]:
    """The time zone and cron fields, judged by the tz database and the scheduler itself."""
    schedule = policy.schedule
    zone_loc: Loc = ("schedule", "timezone")
    cron_loc: Loc = ("schedule", "cron")
    problems = []
    try:
        zone = ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        message = (
            f"{schedule.timezone!r} is not a time zone (use a name such as UTC or Europe/Berlin)"
        )
        problems.append(_Problem(document.line_of(zone_loc), zone_loc, message))
        zone = ZoneInfo("UTC")
    if schedule.cron is not None:
        try:
            make_trigger(schedule.model_copy(update={"timezone": zone.key}))
        except ValueError as exc:
            message = f"{schedule.cron!r} is not a valid crontab line: {exc}"
            problems.append(_Problem(document.line_of(cron_loc), cron_loc, message))
    return problems


def _gc_problems(policy: Policy, document: _Document) -> list[_Problem]:
    """GC settings that lose images are errors at their key, not warnings to scroll past."""
    problems = []
    for keys, message in gc_problems(policy.gc, gated=policy.gate is not None):
        loc: Loc = ("gc", *keys)
        problems.append(_Problem(document.line_of(loc), loc, message))
    return problems


def _is_under(loc: Loc, roots: set[Loc]) -> bool:
    """True when ``loc`` is one of ``roots`` or inside one."""
    return any(loc[: len(root)] == root for root in roots)


def _problem_from_error(error: ErrorDetails, document: _Document) -> _Problem:
    """Place one pydantic error: unknown keys at their key, missing keys at their parent."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        return _Problem(document.key_line_of(loc), loc[:-1], _unknown_key(loc))
    if error["type"] == "missing":
        return _Problem(document.key_line_of(loc[:-1]), loc, "is required")
    return _Problem(document.line_of(loc), loc, _message(error, loc))


def _unknown_key(loc: Loc) -> str:
    """Name the key and, for a typo, the field that was probably meant."""
    key = str(loc[-1])
    model = _model_at(loc[:-1])
    known = list(model.model_fields) if model else []
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}"


def _message(error: ErrorDetails, loc: Loc) -> str:
    """Say what was expected in the operator's words, not pydantic's."""
    kind, ctx = error["type"], error.get("ctx", {})
    if kind in _OWN_ERROR_TYPES:
        return error["msg"]
    got = _describe_input(error["input"], loc)
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {got}"
    if kind == "literal_error":
        return f"expected {ctx['expected']}, got {got}"
    if kind in _BOUNDS:
        symbol, name = _BOUNDS[kind]
        return f"must be {symbol} {_format_number(ctx[name])}"
    return _strip_pydantic_prefix(error["msg"])


def _describe_input(value: object, loc: Loc) -> str:
    """Secret fields never echo their input, even a wrong one, into logs."""
    return "a value not shown here (it is a secret)" if _is_secret(loc) else _describe(value)


def _describe(value: object) -> str:
    """Name a wrong value briefly: quote scalars, name containers by kind."""
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _format_number(value: object) -> str:
    """``0.0`` reads as ``0``: bounds are written in the model as whole numbers."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _strip_pydantic_prefix(message: str) -> str:
    """'Value error, ' says how pydantic got the message, which the operator cannot use."""
    for prefix in _PYDANTIC_PREFIXES:
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


# --- the model's shape, for suggestions and secrets ----------------------------------


def _annotation_at(loc: Loc) -> object:
    """The declared type at ``loc`` in ``Policy``, or None when the path leaves the model."""
    current: object = Policy
    for part in loc:
        current = _unwrap(current)
        if isinstance(part, int):
            args = get_args(current)
            current = args[0] if get_origin(current) is tuple and args else None
        elif isinstance(current, type) and issubclass(current, BaseModel):
            found = current.model_fields.get(part)
            current = found.annotation if found else None
        else:
            return None
    return _unwrap(current)


def _unwrap(annotation: object) -> object:
    """Strip ``Optional`` and ``Annotated`` down to the type that holds fields or items."""
    if get_origin(annotation) is Annotated:
        return _unwrap(get_args(annotation)[0])
    if get_origin(annotation) in (Union, UnionType):
        options = [arg for arg in get_args(annotation) if arg is not type(None)]
        return _unwrap(options[0]) if len(options) == 1 else annotation
    return annotation


def _model_at(loc: Loc) -> type[BaseModel] | None:
    """The model whose fields are the valid keys at ``loc``, if ``loc`` is a mapping."""
    annotation = _annotation_at(loc)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


def _is_secret(loc: Loc) -> bool:
    """Decided by the model's type, so a new secret field is hidden without a list here."""
    return _annotation_at(loc) is SecretStr


def _format_loc(loc: Loc) -> str:
    """``("rules", 2, "max_age")`` → ``rules[2].max_age``."""
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


# --- warnings ------------------------------------------------------------------------

_Warning = tuple[Loc, str]


def _source_warnings(policy: Policy, document: _Document) -> list[_Warning]:
    """Warnings that need the file's text: secrets not taken from the environment."""
    return _password_warnings(policy, document) + _webhook_secret_warnings(policy, document)


def _password_warnings(policy: Policy, document: _Document) -> list[_Warning]:
    loc: Loc = ("registry", "password")
    if policy.registry.password is None or loc in document.expanded:
        return []
    return [
        (
            loc,
            "the password is written in the file; secrets belong in the environment "
            "(write password: ${REGISTRY_PASSWORD})",
        )
    ]


def _webhook_secret_warnings(policy: Policy, document: _Document) -> list[_Warning]:
    """Slack and Teams webhook URLs are the secret: anyone who reads the file can post."""
    warnings: list[_Warning] = []
    for index, target in enumerate(policy.notify):
        loc: Loc = ("notify", index, "url")
        if target.type in ("slack", "teams") and loc not in document.expanded:
            variable = f"{target.type.upper()}_WEBHOOK_URL"
            warnings.append(
                (
                    loc,
                    f"a {target.type} webhook URL is its secret and is written in the file; "
                    f"take it from the environment (url: ${{{variable}}})",
                )
            )
    return warnings


def _policy_warnings(policy: Policy) -> list[_Warning]:
    """Every warning that the policy alone can justify, each at the key it is about."""
    checks: tuple[Callable[[Policy], list[_Warning]], ...] = (
        _warn_no_rules,
        _warn_unreachable_rules,
        _warn_password_without_username,
    )
    return [warning for check in checks for warning in check(policy)]


def _warn_password_without_username(policy: Policy) -> list[_Warning]:
    """Basic auth needs both; a password alone is never sent, which surprises people."""
    registry = policy.registry
    if registry.password is None or registry.username is not None:
        return []
    return [(("registry", "password"), "is set without registry.username, so it is not used")]


def _warn_no_rules(policy: Policy) -> list[_Warning]:
    """Valid, and a dry run shows nothing: likely a rules: section that went missing."""
    if policy.rules:
        return []
    return [(("rules",), "there are no rules, so nothing will ever be deleted")]


def _warn_unreachable_rules(policy: Policy) -> list[_Warning]:
    """Only the obvious case: after a catch-all rule, no later rule can claim a tag."""
    for index, rule in enumerate(policy.rules):
        if _claims_everything(rule):
            return [
                (
                    ("rules", later),
                    f"rule {other.name!r} can never claim a tag: rule "
                    f"{rule.name!r} before it claims every tag in every repository",
                )
                for later, other in enumerate(policy.rules[index + 1 :], start=index + 1)
            ]
    return []


def _claims_everything(rule: Rule) -> bool:
    """Spelled-out catch-alls only; proving that one regex covers another is out of scope."""
    return (
        rule.exclude is None
        and rule.repositories.pattern in _MATCH_EVERYTHING
        and rule.match.pattern in _MATCH_EVERYTHING
    )
