"""Semantic Versioning 2.0 precedence for tag names, so ``order_by: semver`` ranks releases.

Pure. ``1.10.0`` is above ``1.9.0`` (numbers compare as numbers, not text), a pre-release is
below its release (``2.0.0-rc.1`` < ``2.0.0``), and build metadata (``+build.5``) is ignored,
as semver.org section 11 says. A leading ``v`` is allowed because most release tags have
one. Anything else (``1.2``, ``latest``, ``01.2.3``) is not semver: ``parse`` returns None and
the planner ranks such tags by its stated fallback instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# semver.org's recommended expression, with an optional leading "v".
_SEMVER = re.compile(
    r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?",
    re.ASCII,  # \d would otherwise match other scripts' digits, which are not semver
)

# One pre-release identifier as a sort key: numeric ones sort below alphanumeric ones
# (rule 11.4.3), numbers by value, words by ASCII.
Identifier = tuple[int, int, str]


@dataclass(frozen=True, order=True)
class Version:
    """A parsed version; comparing two compares their precedence, and nothing else.

    ``release`` is 1 for a release and 0 for a pre-release, so that a release sorts above
    every pre-release of the same numbers (rule 11.3); ``pre`` compares as a tuple, and a
    shorter tuple that is a prefix of a longer one is lower, which is rule 11.4.4.
    """

    major: int
    minor: int
    patch: int
    release: int
    pre: tuple[Identifier, ...]


def parse(tag: str) -> Version | None:
    """The version a tag names, or None when the tag is not SemVer 2.0 (with optional v)."""
    match = _SEMVER.fullmatch(tag)
    if match is None:
        return None
    major, minor, patch, pre, _build = match.groups()
    identifiers = tuple(_identifier(part) for part in pre.split(".")) if pre else ()
    return Version(int(major), int(minor), int(patch), 0 if pre else 1, identifiers)


def _identifier(part: str) -> Identifier:
    return (0, int(part), "") if part.isdigit() else (1, 0, part)
