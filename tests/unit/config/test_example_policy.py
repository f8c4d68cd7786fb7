"""``policies.example.yml`` is the documentation of every key; loading it keeps it true."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from retention.config.load import load_policy, load_policy_with_warnings
from retention.core.policy import (
    Audit,
    GarbageCollection,
    Gate,
    InUseSource,
    KubernetesSource,
    Notifications,
    NotifyTarget,
    Policy,
    RegistrySettings,
    Rule,
    Safety,
    Server,
    Storage,
    UntaggedManifests,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "policies.example.yml"


def test_the_example_policy_loads_without_any_environment_variable() -> None:
    policy = load_policy(EXAMPLE, environ={})
    assert policy.registry.url == "http://127.0.0.1:5000"


def test_the_example_policy_shows_several_rules_and_protections() -> None:
    policy = load_policy(EXAMPLE, environ={})
    assert len(policy.rules) >= 3
    assert len({rule.name for rule in policy.rules}) == len(policy.rules)
    assert policy.protect


def test_the_example_policy_is_safe_enough_to_give_no_warnings() -> None:
    assert load_policy_with_warnings(EXAMPLE, environ={}).warnings == ()


SECTIONS: list[type[BaseModel]] = [
    Policy,
    RegistrySettings,
    Rule,
    Safety,
    GarbageCollection,
    Storage,
    InUseSource,
    KubernetesSource,
    Notifications,
    Server,
    NotifyTarget,
    Audit,
    Gate,
    UntaggedManifests,
]


def test_the_example_policy_mentions_every_key_of_the_model() -> None:
    """A field added to the model must be documented here too (as a key or a comment)."""
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [
        f"{model.__name__}.{key}"
        for model in SECTIONS
        for key in model.model_fields
        if f"{key}:" not in text
    ]
    assert missing == []
