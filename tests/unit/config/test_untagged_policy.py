"""``untagged:`` in the policy file: what loads, and every mistake at its line."""

from __future__ import annotations

import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from retention.config.load import load_policy
from retention.errors import ConfigError

FILE = Path("policies.yml")
BASE = "registry:\n  url: http://127.0.0.1:5000\nstorage:\n  path: /srv/registry\n"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def problems(text: str) -> list[str]:
    FILE.write_text(textwrap.dedent(text), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_policy(FILE, {})
    return caught.value.problems


def test_an_untagged_block_loads_with_its_age_and_repositories() -> None:
    FILE.write_text(BASE + "untagged:\n  repositories: team/.*\n  max_age: 7d\n")
    policy = load_policy(FILE, {})
    assert policy.untagged is not None
    assert policy.untagged.max_age == timedelta(days=7)
    assert policy.untagged.covers("team/app") and not policy.untagged.covers("other")


def test_untagged_is_off_unless_configured() -> None:
    FILE.write_text(BASE)
    assert load_policy(FILE, {}).untagged is None


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        pytest.param(
            "untagged:\n  repositories: team/.*\n",
            "policies.yml:5 untagged.max_age: is required",
            id="max_age missing",
        ),
        pytest.param(
            "untagged:\n  max_age: 0s\n",
            "policies.yml:6 untagged.max_age: must be longer than 0s",
            id="zero age",
        ),
        pytest.param(
            "untagged:\n  max_age: 7\n",
            "policies.yml:6 untagged.max_age: 7 is not a duration (use 30d, 12h, 2w)",
            id="age without a unit",
        ),
        pytest.param(
            "untagged:\n  max_age: 7d\n  repositories: '('\n",
            "policies.yml:7 untagged.repositories: '(' is not a valid regex: "
            "missing ), unterminated subpattern at position 0",
            id="bad regex",
        ),
        pytest.param(
            "untagged:\n  max_age: 7d\n  keep_last: 3\n",
            "policies.yml:7 untagged: unknown key 'keep_last'",
            id="a rule's key",
        ),
        pytest.param(
            "untagged:\n  max_age: 7d\n  max_ag: 3d\n",
            "policies.yml:7 untagged: unknown key 'max_ag' (did you mean 'max_age'?)",
            id="typo",
        ),
    ],
)
def test_each_mistake_in_untagged_is_one_line_at_its_key(block: str, expected: str) -> None:
    assert problems(BASE + block) == [expected]


def test_untagged_without_storage_path_is_refused_with_the_reason() -> None:
    found = problems("registry:\n  url: http://127.0.0.1:5000\nuntagged:\n  max_age: 7d\n")
    assert len(found) == 1
    assert found[0].startswith("policies.yml:4 untagged: untagged: needs storage.path on this host")
    assert "the registry API cannot list manifests no tag points at" in found[0]


def test_untagged_with_a_storage_path_inside_a_docker_container_is_refused() -> None:
    text = BASE + "gc:\n  mode: docker\n  container: registry\nuntagged:\n  max_age: 7d\n"
    found = problems(text)
    assert any("untagged: needs storage.path on this host" in line for line in found)
