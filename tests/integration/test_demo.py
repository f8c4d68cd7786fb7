"""``retention demo``, the README's first command, must keep working."""

from __future__ import annotations

import pytest
from cli_support import retention


@pytest.mark.slow
def test_the_demo_runs_a_full_pass_that_deletes_and_frees_space() -> None:
    # As the README runs it: a process of its own, through the installed entry point.
    result = retention("demo", "-o", "json", process=True)

    assert result.code == 0, result.stderr
    report = result.json()
    assert report["summary"]["tags"] == 46
    assert report["summary"]["tags_to_delete"] == 24
    assert {a["outcome"] for a in report["applied"]} == {"deleted"}
    assert report["gc"]["ran"] is True
    assert report["storage"]["freed_bytes"] > 0
    assert report["verification"] == []
    assert "policy (" in result.stderr
