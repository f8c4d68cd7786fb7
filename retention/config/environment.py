"""``${NAME}`` in the policy file: values taken from the environment, and nothing else.

Kept apart from the YAML reading so the one rule every secret depends on is in one place:
``${NAME}`` is replaced from the environment, ``$$`` is a literal ``$``, a lone ``$`` stays
as written (regexes such as ``v\\d+$`` need no escaping), and expanded text is not
expanded again (a ``$`` inside a secret stays a ``$``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

_REFERENCE = re.compile(r"\$\$|\$\{([^}]*)(\}?)")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Expansion:
    """The text after expansion, what went wrong, and whether a variable was used."""

    text: str
    problems: tuple[str, ...] = ()
    from_environment: bool = False


def expand(text: str, environ: Mapping[str, str]) -> Expansion:
    """Replace every ``${NAME}``; an unset or malformed reference is a problem, not a crash."""
    if "$" not in text:
        return Expansion(text)
    problems: list[str] = []
    used = False

    def replace(match: re.Match[str]) -> str:
        nonlocal used
        if match.group(0) == "$$":
            return "$"
        name, closed = match.group(1), match.group(2)
        if not closed or not _VARIABLE_NAME.fullmatch(name):
            problems.append(
                f"{match.group(0)!r} is not a variable reference "
                "(write ${NAME}, or $${ for a literal ${)"
            )
            return match.group(0)
        if name not in environ:
            problems.append(f"environment variable {name!r} is not set")
            return ""
        used = True
        return environ[name]

    expanded = _REFERENCE.sub(replace, text)
    return Expansion(expanded, tuple(problems), used)
