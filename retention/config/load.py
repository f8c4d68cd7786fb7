"""The policy file: YAML text in, a validated ``Policy`` out, every mistake with its place.

The entry points, and only that: ``document.py`` reads the YAML with the place of every
value (``environment.py`` expands ``${NAME}``), ``validate.py`` turns it into a ``Policy``
with every error at its line, ``warnings.py`` finds what is valid but risky. Nothing here
decides what a policy means: the model lives in ``core/policy.py``, the planner applies it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from retention.config import document as yaml_document
from retention.config.document import Document, Problem
from retention.config.validate import validate
from retention.config.warnings import policy_warnings, source_warnings
from retention.core.policy import Policy

__all__ = ["LoadedPolicy", "check_warnings", "load_policy", "load_policy_with_warnings"]


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
    root, file = yaml_document.read(path)
    document = Document(os.environ if environ is None else environ)
    data = document.convert(root, ())
    policy = validate(data, document, file)
    warnings = [*source_warnings(policy, document), *policy_warnings(policy)]
    rendered = sorted(
        (Problem(document.line_of(loc), loc, message) for loc, message in warnings),
        key=Problem.sort_key,
    )
    return LoadedPolicy(policy, tuple(problem.render(file) for problem in rendered))


def check_warnings(policy: Policy) -> list[str]:
    """Settings that are valid but likely to hurt, as ``keypath: message`` lines.

    Works on any ``Policy``, including one built in code; it cannot give line numbers
    or see whether a password came from the environment (``load_policy_with_warnings`` can).
    """
    warnings = policy_warnings(policy)
    return [Problem(None, loc, message).render_without_place() for loc, message in warnings]
