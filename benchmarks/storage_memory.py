"""Peak RSS of a storage plan at sizes the disk cannot hold: the files' bytes generated.

    python benchmarks/storage_memory.py [--tags 1000000] [--tags-per-repository 50] [--json]
    python benchmarks/storage_memory.py --quick        # 2,000 tags: what the test runs

The real layout of 1,000,000 tags (each its own manifest and config, as ``seed.py`` writes
them) needs about 16 million inodes, more than this machine's disk or /dev/shm has. So this
runs the storage pass unchanged (``storage_reader.each_repository`` into
``planner.Planning``, as ``run_pass`` does), in this process, over a file system
that exists only as answers: listing a directory, stat'ing a link and reading a file are
answered with exactly the bytes ``seed.py`` would have written there (the same configs,
manifests and digests), generated when the reader asks. Only the tag being read is held,
so what the peak RSS shows is the reader's and the planner's memory, not the generator's.
What it cannot show is the reading time of real files (``plan_benchmark.py`` times them);
the planner's CPU time (``planning.add`` and ``finish``) is measured on its own.

It prints PASS or FAIL against issue #13's goal for the size (peak RSS under 200 MB up to
100,000 tags, under 400 MB up to 1,000,000; none above); the exit status stays 0: this
measures, it does not gate.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[1:1] = [str(_HERE.parent), str(_HERE)]

import seed  # noqa: E402
from plan_pass import benchmark_policy  # noqa: E402

from retention.core import planner  # noqa: E402
from retention.scan import storage_reader  # noqa: E402

ROOT = "/generated"
V2 = f"{ROOT}/docker/registry/v2"


@dataclass(frozen=True)
class _Entry:
    name: str

    def is_dir(self) -> bool:
        return True


@dataclass(frozen=True)
class _Stat:
    st_size: int


class GeneratedStorage:
    """The answers ``storage_reader`` gets from ``os`` and ``_read``, for R x T seeded tags."""

    def __init__(self, repositories: int, tags: int) -> None:
        self._repositories, self._tags = repositories, tags
        self._layers = [self._descriptor(data, seed.DOCKER_LAYER) for data in seed.LAYERS]
        self._blobs: dict[str, bytes] = {}  # the current tag's config and manifest only

    def scandir(self, path: str) -> Iterator[_Entry]:
        relative = path.removeprefix(f"{V2}/repositories").strip("/")
        parts = relative.split("/") if relative else []
        if not parts:
            names = ["bench"]
        elif parts == ["bench"]:
            names = [seed.repository_name(i).split("/")[1] for i in range(self._repositories)]
        elif parts[-2:] == ["_manifests", "tags"]:
            names = [f"build-{number:04d}" for number in range(self._tags)]
        else:
            names = ["_layers", "_manifests"]
        return iter([_Entry(name) for name in names])

    def stat(self, path: str) -> _Stat:
        return _Stat(len("sha256:") + 64)  # every link the reader stats holds one digest

    def read(
        self, directory: Any, name: str, limit: int, what: str, *, with_mtime: bool = False
    ) -> tuple[bytes, float | None]:
        """``_read``: ``name`` in the (never opened) directory the reader passes."""
        path = f"{directory.path}/{name}"
        mtime = seed.NEWEST.timestamp() if with_mtime else None
        if path.endswith("/current/link"):
            repository = path.split("/repositories/", 1)[1].split("/_manifests/", 1)[0]
            tag = path.split("/tags/", 1)[1].split("/", 1)[0]
            return self._image(repository, int(tag.removeprefix("build-"))).encode(), mtime
        return self._blobs[path.rsplit("/", 2)[1]], mtime

    def _image(self, name: str, number: int) -> str:
        """The manifest digest of this tag; its config and manifest bytes kept until next."""
        tag = f"build-{number:04d}"
        created = seed.NEWEST - timedelta(hours=number)
        config_bytes = seed._config(name, tag, created)
        config = self._descriptor(config_bytes, seed.DOCKER_CONFIG)
        body = seed._dumps(
            {
                "schemaVersion": 2,
                "mediaType": seed.DOCKER_MANIFEST,
                "config": config,
                "layers": self._layers,
            }
        )
        digest = seed.digest_of(body)
        self._blobs = {_hex(config["digest"]): config_bytes, _hex(digest): body}
        return digest

    @staticmethod
    def _descriptor(data: bytes, media_type: str) -> dict[str, Any]:
        return {"mediaType": media_type, "digest": seed.digest_of(data), "size": len(data)}


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


_NO_DESCRIPTOR = -1


class _OsShim:
    """``os`` for the reader: listing and stat generated, everything else the real thing."""

    def __init__(self, storage: GeneratedStorage) -> None:
        self._storage = storage

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def scandir(self, path: str) -> Iterator[_Entry]:
        return self._storage.scandir(path)

    def stat(self, path: str, *, dir_fd: int | None = None) -> _Stat:
        return self._storage.stat(path)

    def open(self, path: str, flags: int, *, dir_fd: int | None = None) -> int:
        """A directory the reader opens to read relative to it: no descriptor is needed,
        since every read is answered by ``GeneratedStorage.read``."""
        if not flags & os.O_DIRECTORY:
            raise AssertionError(f"the reader opened {path} past the generated read")
        return _NO_DESCRIPTOR

    def close(self, descriptor: int) -> None:
        if descriptor != _NO_DESCRIPTOR:
            os.close(descriptor)


def measure(tags: int, per_repository: int) -> dict[str, Any]:
    repositories = math.ceil(tags / per_repository)
    storage = GeneratedStorage(repositories, per_repository)
    storage_reader.os = _OsShim(storage)  # type: ignore[assignment,attr-defined]
    storage_reader._read = storage.read
    storage_reader.storage_root_problem = lambda root: None
    # The prefetch helper is a process of its own, reading real files this one answers in
    # place of: it would find none and leave every repository to the reader anyway.
    storage_reader.PREFETCH_AFTER_TAGS = sys.maxsize
    policy = benchmark_policy("http://127.0.0.1:5000", Path("/nonexistent"), 8)
    rss_before = _rss_kib("VmRSS")
    load_before = os.getloadavg()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    planning = planner.Planning(policy, policy.registry.url, datetime.now(UTC))
    found = failed = 0
    planning_cpu = 0.0
    for repository in storage_reader.each_repository(Path(ROOT), push_times=True):
        found, failed = found + len(repository.tags), failed + bool(repository.error)
        before = time.process_time()
        planning.add(repository)
        planning_cpu += time.process_time() - before
    scanned_rss = _rss_kib("VmRSS")
    before = time.process_time()
    plan = planning.finish()
    planning_cpu += time.process_time() - before
    if found != repositories * per_repository or failed:
        raise RuntimeError(f"the reader did not see every generated tag ({found})")
    return {
        "tags": found,
        "repositories": repositories,
        "seconds_with_generation": round(time.perf_counter() - started, 1),
        "cpu_seconds_with_generation": round(time.process_time() - cpu_started, 1),
        "planning_cpu_seconds": round(planning_cpu, 1),
        "tags_to_delete": plan.summary.tags_to_delete,
        "reclaimable_bytes": plan.reclaimable_bytes,
        "rss_before_mb": round(rss_before / 1024, 1),
        "rss_after_scan_and_plan_mb": round(scanned_rss / 1024, 1),
        "peak_rss_mb": round(_rss_kib("VmHWM") / 1024, 1),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def target(measured: dict[str, Any]) -> dict[str, Any] | None:
    """Issue #13's goal for this many tags, and whether the run met it; None above 1M."""
    goals = ((100_000, 200.0), (1_000_000, 400.0))
    wanted = next((mb for most, mb in goals if measured["tags"] <= most), None)
    if wanted is None:
        return None
    return {
        "name": f"peak RSS of a storage plan at {measured['tags']} tags",
        "measured": measured["peak_rss_mb"],
        "wanted": f"< {wanted:g} MB",
        "passed": measured["peak_rss_mb"] < wanted,
    }


def render(measured: dict[str, Any]) -> str:
    """The run as a person reads it, then PASS or FAIL."""
    lines = [
        f"{measured['tags']} tags in {measured['repositories']} repositories, load average"
        f" {measured['load_average'][0]} -> {measured['load_average'][1]}",
        f"seconds {measured['seconds_with_generation']} (generating the files' bytes included),"
        f" CPU {measured['cpu_seconds_with_generation']} s, of it planning"
        f" {measured['planning_cpu_seconds']} s",
        f"tags to delete {measured['tags_to_delete']},"
        f" reclaimable bytes {measured['reclaimable_bytes']}",
        f"RSS {measured['rss_before_mb']} MB before, {measured['rss_after_scan_and_plan_mb']} MB"
        f" after the scan and plan, peak {measured['peak_rss_mb']} MB",
    ]
    goal = measured["target"]
    if goal is not None:
        verdict = "PASS" if goal["passed"] else "FAIL"
        lines += ["", f"{verdict}  {goal['name']}: {goal['measured']} MB (want {goal['wanted']})"]
    return "\n".join(lines)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tags", type=int, default=1_000_000)
    parser.add_argument("--tags-per-repository", type=int, default=50)
    parser.add_argument("--quick", action="store_true", help="2,000 tags in 40 repositories")
    parser.add_argument("--json", action="store_true", help="one JSON object, not the text")
    options = parser.parse_args()
    tags = 2_000 if options.quick else options.tags
    measured = measure(tags, options.tags_per_repository)
    measured["target"] = target(measured)
    print(json.dumps(measured) if options.json else render(measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
