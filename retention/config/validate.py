"""Plain data to a ``Policy``, with every model error said in the operator's words, placed.

Turns pydantic's errors into ``FILE:LINE key.path: message`` lines (unknown keys with a
did-you-mean, missing keys at their parent, secrets never echoed), adds the judgements the
model cannot make alone (a time zone and cron line by the scheduler itself; GC settings
that lose images), and raises them all at once, sorted by line.
"""

from __future__ import annotations

import difflib
from types import UnionType
from typing import Annotated, Union, get_args, get_origin
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_core import ErrorDetails

from retention.config.document import Document, Loc, Problem
from retention.config.schedule import make_trigger
from retention.core.policy import Policy, gc_problems, policy_from_mapping
from retention.errors import ConfigError

# Error types raised by policy.py whose message is already a finished sentence.
_OWN_ERROR_TYPES = frozenset(
    {"duration", "regex", "url", "rule_limit", "rule_name", "command", "schedule", "listen"}
    | {"token", "notify"}
    | {"credentials", "tls", "in_use", "repository", "untagged"}
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


def validate(data: object, document: Document, file: str) -> Policy:
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
        ordered = sorted(problems, key=Problem.sort_key)
        raise ConfigError([problem.render(file) for problem in ordered])
    return policy


def _schedule_problems(policy: Policy, document: Document) -> list[Problem]:
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
        problems.append(Problem(document.line_of(zone_loc), zone_loc, message))
        zone = ZoneInfo("UTC")
    if schedule.cron is not None:
        try:
            make_trigger(schedule.model_copy(update={"timezone": zone.key}))
        except ValueError as exc:
            message = f"{schedule.cron!r} is not a valid crontab line: {exc}"
            problems.append(Problem(document.line_of(cron_loc), cron_loc, message))
    return problems


def _gc_problems(policy: Policy, document: Document) -> list[Problem]:
    """GC settings that lose images are errors at their key, not warnings to scroll past."""
    problems = []
    for keys, message in gc_problems(policy.gc, gated=policy.gate is not None):
        loc: Loc = ("gc", *keys)
        problems.append(Problem(document.line_of(loc), loc, message))
    return problems


def _is_under(loc: Loc, roots: set[Loc]) -> bool:
    """True when ``loc`` is one of ``roots`` or inside one."""
    return any(loc[: len(root)] == root for root in roots)


def _problem_from_error(error: ErrorDetails, document: Document) -> Problem:
    """Place one pydantic error: unknown keys at their key, missing keys at their parent."""
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        return Problem(document.key_line_of(loc), loc[:-1], _unknown_key(loc))
    if error["type"] == "missing":
        return Problem(document.key_line_of(loc[:-1]), loc, "is required")
    return Problem(document.line_of(loc), loc, _message(error, loc))


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
