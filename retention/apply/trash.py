"""The way back: every deleted manifest's bytes and tags, kept in ``state_dir/trash``.

Deleting a manifest removes only a small JSON document and its tag links; the layers stay
on disk until garbage collection. So until GC runs, pushing the saved bytes back under
their tags restores the image exactly (same digest). Each pass that deletes gets one bin,
``trash/<run-id>/``, with an ``index.json`` and the raw manifests. A bin is marked
collected once GC has run after it: from then on its blobs may be gone and it cannot be
restored. Bins older than ``trash.keep`` are pruned.
"""

from __future__ import annotations

import json
import secrets
import shutil
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from retention.errors import TrashError
from retention.state import atomic

INDEX = "index.json"


@dataclass(frozen=True)
class TrashEntry:
    repository: str
    digest: str
    media_type: str
    tags: tuple[str, ...]
    kind: str
    parents: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrashBin:
    run_id: str
    registry: str
    deleted_at: datetime
    collected: bool = False
    entries: tuple[TrashEntry, ...] = field(default_factory=tuple)


def new_run_id(now: datetime) -> str:
    """Sortable and unique: the UTC time of the pass and a little randomness."""
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


class Trash:
    """All bins under ``state_dir/trash``; one instance per pass or command."""

    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "trash"

    def open_bin(self, run_id: str, registry: str, now: datetime) -> BinWriter:
        return BinWriter(self.root / run_id, TrashBin(run_id, registry, now))

    def bins(self) -> list[TrashBin]:
        """Every readable bin, oldest first; unreadable ones are skipped, not fatal."""
        if not self.root.is_dir():
            return []
        found = []
        for path in sorted(self.root.iterdir()):
            loaded = _load(path)
            if loaded is not None:
                found.append(loaded)
        return found

    def get(self, run_id: str) -> TrashBin:
        loaded = _load(self.root / run_id) if _safe_name(run_id) else None
        if loaded is None:
            raise TrashError(f"no trash for run {run_id!r} in {self.root}")
        return loaded

    def manifest_bytes(self, run_id: str, digest: str) -> bytes:
        try:
            return (self.root / run_id / "manifests" / _file_name(digest)).read_bytes()
        except OSError as exc:
            raise TrashError(f"trash of run {run_id} lacks {digest}: {exc.strerror}") from exc

    def uncollected(self) -> list[TrashBin]:
        return [b for b in self.bins() if not b.collected and b.entries]

    def mark_collected(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            _write_index(self.root / run_id, replace(self.get(run_id), collected=True))

    def prune(self, keep: timedelta, now: datetime) -> list[str]:
        """Remove bins older than ``keep``; returns their run ids."""
        pruned = [b.run_id for b in self.bins() if now - b.deleted_at > keep]
        for run_id in pruned:
            shutil.rmtree(self.root / run_id, ignore_errors=True)
        return pruned


class BinWriter:
    """Adds entries to one bin; the index is rewritten atomically after each one."""

    def __init__(self, path: Path, contents: TrashBin) -> None:
        self.path = path
        self.contents = contents

    def save(self, entry: TrashEntry, body: bytes) -> None:
        try:
            (self.path / "manifests").mkdir(parents=True, exist_ok=True)
            (self.path / "manifests" / _file_name(entry.digest)).write_bytes(body)
        except OSError as exc:
            raise TrashError(f"cannot save {entry.digest} to {self.path}: {exc.strerror}") from exc
        self.contents = replace(self.contents, entries=(*self.contents.entries, entry))
        _write_index(self.path, self.contents)


def _write_index(path: Path, contents: TrashBin) -> None:
    data = asdict(contents)
    data["deleted_at"] = contents.deleted_at.isoformat()
    try:
        atomic.write_text(path / INDEX, json.dumps(data, indent=2))
    except OSError as exc:
        raise TrashError(f"cannot write {path / INDEX}: {exc.strerror}") from exc


def _load(path: Path) -> TrashBin | None:
    try:
        data: dict[str, Any] = json.loads((path / INDEX).read_text())
        entries = tuple(
            TrashEntry(
                repository=e["repository"],
                digest=e["digest"],
                media_type=e["media_type"],
                tags=tuple(e["tags"]),
                kind=e["kind"],
                parents=tuple(e.get("parents", ())),
            )
            for e in data["entries"]
        )
        return TrashBin(
            run_id=data["run_id"],
            registry=data["registry"],
            deleted_at=datetime.fromisoformat(data["deleted_at"]),
            collected=bool(data["collected"]),
            entries=entries,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _file_name(digest: str) -> str:
    return digest.replace(":", "-")


def _safe_name(run_id: str) -> bool:
    return bool(run_id) and "/" not in run_id and not run_id.startswith(".")


def restorable(
    contents: TrashBin, repository: str | None = None, tag: str | None = None
) -> list[TrashEntry]:
    """What to push back, in an order the registry accepts: children before their index.

    With a tag, that tag's manifest plus what hangs off it (index children, and artifacts
    whose subject it is); with a repository, only that repository.
    """
    entries = [e for e in contents.entries if repository in (None, e.repository)]
    if tag is not None:
        entries = _with_dependents([e for e in entries if tag in e.tags], entries)
    order = {"child": 0, "tagged": 1, "artifact": 2}
    return sorted(entries, key=lambda e: order.get(e.kind, 1))


def _with_dependents(chosen: list[TrashEntry], pool: list[TrashEntry]) -> list[TrashEntry]:
    wanted = {(e.repository, e.digest) for e in chosen}
    grew = True
    while grew:
        grew = False
        for entry in pool:
            key = (entry.repository, entry.digest)
            linked = any((entry.repository, p) in wanted for p in entry.parents)
            if key not in wanted and linked:
                wanted.add(key)
                grew = True
    return [e for e in pool if (e.repository, e.digest) in wanted]
