"""GC settings that would lose images are policy errors with their line, not warnings.

Each refused configuration names the failure it prevents (a distribution issue number)
and the fix; each safe configuration loads without a GC error.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from retention.config.load import load_policy
from retention.core.policy import GarbageCollection, gc_problems
from retention.errors import ConfigError

FILE = Path("policies.yml")
HEAD = "registry:\n  url: http://127.0.0.1:5000\nrules: [{name: r, keep_last: 5}]\ngc:\n"
LIVE = "garbage collection would run beside a registry that accepts pushes"
STALE = "blob-descriptor cache"
UNTAGGED = "distribution#3178"


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


GATE = "gate:\n  listen: 0.0.0.0:5000\n  upstream: http://127.0.0.1:5001\n"


def gc_errors(gc_lines: str) -> list[str]:
    """The problems of a policy whose ``gc:`` section is ``gc_lines`` (from line 5 on)."""
    text = HEAD + textwrap.indent(textwrap.dedent(gc_lines), "  ")
    if "writes: gate" in gc_lines:  # which needs the gate: section, after gc: (lines stay)
        text += GATE
    FILE.write_text(text)
    try:
        load_policy(FILE, {})
    except ConfigError as exc:
        return exc.problems
    return []


REFUSED = [
    pytest.param(
        "mode: command\n",
        [("policies.yml:5 gc.mode:", LIVE), ("policies.yml:5 gc.blob_cache:", STALE)],
        id="command mode beside a writable registry with an inmemory cache",
    ),
    pytest.param(
        "mode: command\nrestart_command: [systemctl, restart, registry]\n",
        [("policies.yml:5 gc.mode:", LIVE)],
        id="a restart alone does not keep pushes away during GC",
    ),
    pytest.param(
        "mode: command\nwrites: none\n",
        [("policies.yml:5 gc.blob_cache:", "set gc.restart_command")],
        id="nothing pushes, but the inmemory cache is never flushed",
    ),
    pytest.param(
        "mode: command\nwrites: gate\nblob_cache: redis\nrestart_command: [flush]\n"
        "readonly_start: [a]\n",
        [("policies.yml:9 gc.readonly_start:", "needs gc.readonly_stop too")],
        id="a read-only start without its stop",
    ),
    pytest.param(
        "mode: command\nwrites: none\nblob_cache: redis\nstop_command: [a]\nstart_command: [b]\n",
        [("policies.yml:7 gc.blob_cache:", "a redis blob-descriptor cache survives a restart")],
        id="redis survives a restart: only restart_command can flush it",
    ),
    pytest.param(
        "mode: docker\nstrategy: exec\n",
        [("policies.yml:6 gc.strategy:", LIVE + ", and can delete layers")],
        id="docker exec beside a writable registry",
    ),
    pytest.param(
        "mode: docker\nreadonly_start: [a]\nreadonly_stop: [b]\n",
        [
            ("policies.yml:6 gc.readonly_start:", "docker mode stops the container itself"),
            ("policies.yml:7 gc.readonly_stop:", "docker mode stops the container itself"),
        ],
        id="command-mode hooks in docker mode",
    ),
    pytest.param(
        "mode: docker\ndelete_untagged: true\n",
        [("policies.yml:6 gc.delete_untagged:", UNTAGGED)],
        id="delete_untagged",
    ),
    pytest.param(
        "mode: docker\ncommand: [registry, garbage-collect, -m, /etc/config.yml]\n",
        [("policies.yml:6 gc.command:", UNTAGGED + "); retention deletes untagged manifests")],
        id="-m in the command",
    ),
    pytest.param(
        "delete_untagged: true\ncommand: [registry, garbage-collect, --delete-untagged, c]\n",
        [("policies.yml:5 gc.delete_untagged:", UNTAGGED), ("policies.yml:6 gc.command:", "")],
        id="--delete-untagged even with gc off, because turning gc on must not be a trap",
    ),
    pytest.param(
        "mode: command\nwrites: none\nblob_cache: none\nprobe: Not/A Repo\n",
        [("policies.yml:8 gc.probe:", "is not a repository name")],
        id="a probe repository that cannot exist",
    ),
]


@pytest.mark.parametrize(("gc_lines", "expected"), REFUSED)
def test_unsafe_gc_is_an_error_at_its_line_naming_the_reason_and_fix(
    gc_lines: str, expected: list[tuple[str, str]]
) -> None:
    errors = gc_errors(gc_lines)
    assert len(errors) == len(expected), errors
    for error, (place, text) in zip(sorted(errors), sorted(expected), strict=True):
        assert error.startswith(place), error
        assert text in error, error


def test_the_live_registry_error_says_how_to_fix_it() -> None:
    (live, _) = sorted(gc_errors("mode: command\n"), reverse=True)
    assert "distribution#3045" in live
    assert "gc.readonly_start and gc.readonly_stop" in live
    assert "REGISTRY_STORAGE_MAINTENANCE_READONLY='{\"enabled\":true}'" in live
    assert "gc.stop_command and gc.start_command" in live
    assert "gc.writes: gate" in live


ACCEPTED = [
    pytest.param("mode: none\n", id="no gc"),
    pytest.param("mode: docker\n", id="docker offline stops and starts the container"),
    pytest.param(
        "mode: docker\nstrategy: exec\nwrites: gate\n",
        id="docker exec behind the write gate (the container is restarted after GC)",
    ),
    pytest.param(
        "mode: command\nstop_command: [a]\nstart_command: [b]\n",
        id="command mode that stops the registry",
    ),
    pytest.param(
        "mode: command\nreadonly_start: [a]\nreadonly_stop: [b]\n",
        id="command mode with read-only hooks (leaving read-only mode is a restart)",
    ),
    pytest.param(
        "mode: command\nwrites: gate\nrestart_command: [kill, registry]\n",
        id="behind the gate with a restart",
    ),
    pytest.param(
        "mode: command\nwrites: none\nblob_cache: none\n",
        id="nothing pushes during a pass and the registry has no blob cache",
    ),
    pytest.param(
        "mode: command\nreadonly_start: [a]\nreadonly_stop: [b]\nblob_cache: redis\n"
        "restart_command: [redis-cli, FLUSHDB]\nprobe: ops/retention-probe\n",
        id="redis flushed by restart_command",
    ),
]


@pytest.mark.parametrize("gc_lines", ACCEPTED)
def test_safe_gc_configurations_load(gc_lines: str) -> None:
    assert gc_errors(gc_lines) == []


def test_defaults_flush_an_inmemory_cache_and_probe_retention_probe() -> None:
    gc = GarbageCollection()
    assert (gc.blob_cache, gc.writes, gc.probe) == ("inmemory", "retention", "retention-probe")


def test_a_write_gate_in_the_policy_keeps_writes_away_and_writes_gate_needs_one() -> None:
    live = GarbageCollection(mode="command", blob_cache="none")
    declared = GarbageCollection(mode="command", blob_cache="none", writes="gate")

    assert [keys for keys, _ in gc_problems(live)] == [("mode",)]
    assert gc_problems(live, gated=True) == []
    assert gc_problems(declared) == []
    assert gc_problems(declared, gated=False) == [
        (("writes",), "says gate, but the policy has no gate: section")
    ]
