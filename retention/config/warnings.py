"""Settings that are valid but likely to hurt, each at the key it is about.

Warnings never stop a pass; ``retention check`` and every command print them. Some need
the file's text (a secret written inline rather than taken from the environment), the
rest only the policy, so they work on a policy built in code too.
"""

from __future__ import annotations

from collections.abc import Callable

from retention.config.document import Document, Loc
from retention.core.policy import Policy, Rule

_MATCH_EVERYTHING = frozenset({".*", ".+"})

KeyWarning = tuple[Loc, str]


def source_warnings(policy: Policy, document: Document) -> list[KeyWarning]:
    """Warnings that need the file's text: secrets not taken from the environment."""
    return _password_warnings(policy, document) + _webhook_secret_warnings(policy, document)


def _password_warnings(policy: Policy, document: Document) -> list[KeyWarning]:
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


def _webhook_secret_warnings(policy: Policy, document: Document) -> list[KeyWarning]:
    """Slack and Teams webhook URLs are the secret: anyone who reads the file can post."""
    warnings: list[KeyWarning] = []
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


def policy_warnings(policy: Policy) -> list[KeyWarning]:
    """Every warning that the policy alone can justify, each at the key it is about."""
    checks: tuple[Callable[[Policy], list[KeyWarning]], ...] = (
        _warn_no_rules,
        _warn_unreachable_rules,
        _warn_password_without_username,
    )
    return [warning for check in checks for warning in check(policy)]


def _warn_password_without_username(policy: Policy) -> list[KeyWarning]:
    """Basic auth needs both; a password alone is never sent, which surprises people."""
    registry = policy.registry
    if registry.password is None or registry.username is not None:
        return []
    return [(("registry", "password"), "is set without registry.username, so it is not used")]


def _warn_no_rules(policy: Policy) -> list[KeyWarning]:
    """Valid, and a dry run shows nothing: likely a rules: section that went missing."""
    if policy.rules:
        return []
    return [(("rules",), "there are no rules, so nothing will ever be deleted")]


def _warn_unreachable_rules(policy: Policy) -> list[KeyWarning]:
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
