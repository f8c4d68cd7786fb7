"""How fast ``retention plan`` scans a registry, against what the registry itself can answer.

    python benchmarks/plan_benchmark.py [--sizes 1000,10000,100000] [--concurrency 8] [--json]
    python benchmarks/plan_benchmark.py --quick        # 12 tags: what the test runs
    python benchmarks/plan_benchmark.py --storage-only --sizes 10000,100000

For each size it starts a real ``docker-registry`` on a free 127.0.0.1 port with temporary
storage (on /dev/shm when there is one, so the disk is not what is measured), seeds the
tags (50 per repository, each its own manifest and config, written in the storage layout:
see ``seed.py``), and measures on that one registry, in one run:

* the limit: ``wrk`` (C, epoll, keep-alive) sending exactly the requests a cold plan sends,
  a GET of each manifest by tag and of each distinct config (``limit.py``), in two halves
  that bracket the cold plan, so load drift on a shared machine hits both alike;
* the warm limit: wrk GETting the manifests by tag alone (what the registry does for a
  warm plan's HEADs, ``limit.py``), in two halves that bracket the warm plan. A warm plan
  cannot be faster than the cold limit by more than the ratio of the two limits (shown);
* a cold plan (empty manifest cache), a warm plan (the cache it left, unchanged registry)
  and a storage plan (``scan: storage``: the files, no requests; ``run_pass(dry_run=True)``
  as ``retention plan`` runs it), each in a fresh process (``plan_pass.py``) so its peak
  RSS and CPU time are its own.

``--storage-only`` runs the storage plan alone (no limit, no API plans): at 100,000 tags
the API plans take minutes, the storage plan seconds.

Then the ratios (cold plan / limit, warm speed-up, storage speed-up), the time per tag at
each size with its drift from the smallest size (linear growth: within ±25 %; wall time
for the cold and warm plans, CPU time for the storage plan, whose prefetch helper starts
only past 1,000 tags and then reads beside it, so its wall per tag falls with size while
its work per tag stays), and PASS or FAIL per goal (the exit status stays 0:
this measures, it does not gate). The load average before and after is printed: quote
ratios from one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
# The repository itself (retention need not be installed) and its test support.
sys.path[1:1] = [str(_HERE.parent), str(_HERE.parent / "tests")]

import limit  # noqa: E402
from registry_server import RegistryServer, registry_binary  # noqa: E402
from seed import SeededTag, seed  # noqa: E402

TAGS_PER_REPOSITORY = 50
COLD_MIN_RATIO = 0.8
WARM_MIN_SPEEDUP = 3.0
LARGE = 100_000
LARGE_COLD_MAX_SECONDS = 300.0
LARGE_STORAGE_MAX_SECONDS = 10.0  # wall and CPU alike
PEAK_RSS_MAX_MB = 200.0
PER_TAG_DRIFT = 0.25
QUICK = {"sizes": [12], "tags_per_repository": 4}
KINDS = ("cold", "warm", "storage")


@dataclass(frozen=True)
class Target:
    name: str
    measured: float
    wanted: str
    passed: bool


def main() -> int:
    options = _arguments()
    binary = registry_binary()
    if binary is None:
        print("docker-registry (CNCF Distribution) is not installed", file=sys.stderr)
        return 2
    if limit.wrk_binary() is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    results = run(
        binary,
        options.sizes,
        options.tags_per_repository,
        options.concurrency,
        storage_only=options.storage_only,
    )
    print(json.dumps(results, indent=2) if options.json else render(results))
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="tag counts, comma-separated")
    parser.add_argument("--tags-per-repository", type=int, default=TAGS_PER_REPOSITORY)
    parser.add_argument("--concurrency", type=int, default=8, help="registry.concurrency")
    parser.add_argument("--quick", action="store_true", help="12 tags in 3 repositories")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument(
        "--storage-only", action="store_true", help="only the storage plan (no wrk, no API plans)"
    )
    options = parser.parse_args()
    if options.quick:
        options.sizes, options.tags_per_repository = QUICK["sizes"], QUICK["tags_per_repository"]
    else:
        options.sizes = sorted({int(size) for size in options.sizes.split(",")})
    if min(*options.sizes, options.tags_per_repository, options.concurrency) < 1:
        parser.error("sizes, --tags-per-repository and --concurrency must be at least 1")
    return options


def run(
    binary: str,
    sizes: list[int],
    per_repository: int,
    concurrency: int,
    *,
    storage_only: bool = False,
) -> dict[str, Any]:
    """Every size on its own registry; everything the report shows, as plain data."""
    load_before = os.getloadavg()
    one_size = _storage_only_size if storage_only else _one_size
    runs = [one_size(binary, size, per_repository, concurrency) for size in sizes]
    return {
        "machine": _machine(load_before),
        "concurrency": concurrency,
        "runs": runs,
        "targets": [asdict(target) for target in _targets(runs)],
    }


def _seeded(
    server: RegistryServer, repositories: int, per_repository: int, size: int
) -> tuple[list[SeededTag], float]:
    """``size`` tags written in the storage layout, then the registry started over them, and
    how long the writing took."""
    started = time.perf_counter()
    seeded = seed(server.root, repositories=repositories, tags=per_repository)[:size]
    seed_seconds = time.perf_counter() - started
    server.start()
    return seeded, seed_seconds


def _one_size(binary: str, size: int, per_repository: int, concurrency: int) -> dict[str, Any]:
    repositories = math.ceil(size / per_repository)
    with _registry(binary) as (server, workdir):
        seeded, seed_seconds = _seeded(server, repositories, per_repository, size)
        half = len(seeded) // 2
        before = limit.measure(server.url, seeded[:half], concurrency)
        cold = _plan(server.url, workdir / "state", repositories, seeded, concurrency)
        after = limit.measure(server.url, seeded[half:], concurrency)
        warm_before = limit.measure(server.url, seeded[:half], concurrency, manifests_only=True)
        warm = _plan(server.url, workdir / "state", repositories, seeded, concurrency)
        warm_after = limit.measure(server.url, seeded[half:], concurrency, manifests_only=True)
        storage = _plan(
            server.url, workdir / "state-storage", repositories, seeded, concurrency, server.root
        )
    best = limit.LimitResult.combined(before, after)
    warm_best = limit.LimitResult.combined(warm_before, warm_after)
    return {
        "tags": len(seeded),
        "repositories": repositories,
        "seed_seconds": round(seed_seconds, 2),
        "limit": _limit_facts(best, (before, after)),
        "warm_limit": _limit_facts(warm_best, (warm_before, warm_after)),
        "cold": _with_ratio(cold, best),
        "warm": {
            **_with_ratio(warm, best),
            "ratio_to_warm_limit": round(
                warm["tags"] / warm["seconds"] / warm_best.tags_per_second, 3
            ),
        },
        "storage": _with_ratio(storage, best),
        "warm_speedup": round(cold["seconds"] / warm["seconds"], 2),
        # The most a warm plan could gain on a cold one that ran at the cold limit: the
        # registry answers the manifests alone this much faster than manifests and configs.
        "limit_speedup": round(warm_best.tags_per_second / best.tags_per_second, 2),
        "storage_speedup": round(cold["seconds"] / storage["seconds"], 1),
    }


def _storage_only_size(
    binary: str, size: int, per_repository: int, concurrency: int
) -> dict[str, Any]:
    """The storage plan alone (the registry runs: the pass pings it before reading)."""
    repositories = math.ceil(size / per_repository)
    with _registry(binary) as (server, workdir):
        seeded, seed_seconds = _seeded(server, repositories, per_repository, size)
        storage = _plan(
            server.url, workdir / "state-storage", repositories, seeded, concurrency, server.root
        )
    return {
        "tags": len(seeded),
        "repositories": repositories,
        "seed_seconds": round(seed_seconds, 2),
        "storage": _timed(storage),
    }


@contextmanager
def _registry(binary: str) -> Iterator[tuple[RegistryServer, Path]]:
    """A registry on a free port with throwaway storage, stopped and removed at the end."""
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    workdir = Path(tempfile.mkdtemp(prefix="retention-benchmark-", dir=parent))
    server = RegistryServer(workdir / "registry", binary=binary)
    try:
        yield server, workdir
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _plan(
    url: str,
    state_dir: Path,
    repositories: int,
    seeded: list[SeededTag],
    concurrency: int,
    storage: Path | None = None,
) -> dict[str, Any]:
    """One plan in a fresh process; refuses a result that did not see every seeded tag."""
    command = [
        sys.executable,
        str(_HERE / "plan_pass.py"),
        url,
        str(state_dir),
        str(repositories),
        str(concurrency),
        *([str(storage)] if storage is not None else []),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"plan process failed:\n{finished.stderr}")
    result: dict[str, Any] = json.loads(finished.stdout)
    problems = (result["tags"] != len(seeded), result["failed_repositories"], result["undated"])
    if any(problems):
        raise RuntimeError(f"the plan did not see the seeded registry ({len(seeded)}): {result}")
    return result


def _with_ratio(plan: dict[str, Any], best: limit.LimitResult) -> dict[str, Any]:
    timed = _timed(plan)
    return {**timed, "ratio_to_limit": round(timed["tags_per_second"] / best.tags_per_second, 3)}


def _timed(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan's rates per tag and per request, wall and CPU."""
    requests = sum(plan["requests"].values())
    return {
        **plan,
        "tags_per_second": round(plan["tags"] / plan["seconds"], 1),
        "ms_per_tag": round(1000 * plan["seconds"] / plan["tags"], 3),
        "cpu_ms_per_tag": round(1000 * plan["cpu_seconds"] / plan["tags"], 3),
        "requests_per_second": round(requests / plan["seconds"], 1),
        "peak_rss_mb": round(plan["peak_rss_kib"] / 1024, 1),
        "requests_per_tag": round(requests / plan["tags"], 3),
        "cpu_ms_per_request": round(1000 * plan["cpu_seconds"] / requests, 3) if requests else 0,
    }


def _limit_facts(best: limit.LimitResult, halves: tuple[limit.LimitResult, ...]) -> dict[str, Any]:
    return {
        "requests": best.requests,
        "seconds": round(best.seconds, 3),
        "requests_per_second": round(best.requests_per_second, 1),
        "tags_per_second": round(best.tags_per_second, 1),
        "ms_per_tag": round(1000 * best.seconds / best.tags, 3),
        "requests_per_tag": round(best.requests / best.tags, 3),
        "cpu_ms_per_request": round(best.cpu_ms_per_request, 3),
        "ratio_to_limit": 1.0,
        "halves_tags_per_second": [round(half.tags_per_second, 1) for half in halves if half.tags],
    }


def _targets(runs: list[dict[str, Any]]) -> list[Target]:
    """The issue's goals, each from one run; the size-bound ones only when that size ran,
    the API ones only when the API plans ran (not with ``--storage-only``)."""
    largest = runs[-1]
    kinds = [kind for kind in KINDS if kind in largest]
    peak = max(largest[kind]["peak_rss_mb"] for kind in kinds)
    targets = [
        *_api_targets(largest),
        Target(f"peak RSS of a plan at {largest['tags']} tags (MB)", peak,
               f"< {PEAK_RSS_MAX_MB:.0f}", peak < PEAK_RSS_MAX_MB),
    ]  # fmt: skip
    if largest["tags"] >= LARGE:
        targets += _large_targets(largest)
    if len(runs) > 1:
        for kind in kinds:
            drift = _drift(runs, kind)[-1]
            targets.append(
                Target(f"{kind} per-tag {'CPU ' if _PER_TAG[kind] == 'cpu_ms_per_tag' else ''}"
                       f"time, {runs[0]['tags']} -> {largest['tags']} tags",
                       drift, f"within ±{PER_TAG_DRIFT:.0%}", abs(drift) <= PER_TAG_DRIFT)
            )  # fmt: skip
    return targets


def _api_targets(largest: dict[str, Any]) -> list[Target]:
    if "cold" not in largest:
        return []
    ratio, speedup = largest["cold"]["ratio_to_limit"], largest["warm_speedup"]
    return [
        Target(f"cold plan / limit at {largest['tags']} tags", ratio,
               f">= {COLD_MIN_RATIO}", ratio >= COLD_MIN_RATIO),
        Target(f"warm plan speed-up at {largest['tags']} tags", speedup,
               f">= {WARM_MIN_SPEEDUP}", speedup >= WARM_MIN_SPEEDUP),
    ]  # fmt: skip


def _large_targets(largest: dict[str, Any]) -> list[Target]:
    """At 100k tags: the cold API plan's wall time, the storage plan's wall and CPU time."""
    targets = []
    if "cold" in largest:
        cold = largest["cold"]["seconds"]
        targets.append(
            Target("cold API plan at 100k tags (s)", round(cold, 1),
                   f"< {LARGE_COLD_MAX_SECONDS:.0f}", cold < LARGE_COLD_MAX_SECONDS)
        )  # fmt: skip
    storage = largest["storage"]
    cpu = storage.get("cpu_seconds")
    helper = storage.get("helper_cpu_seconds", 0.0)
    busier = max(cpu - helper, helper) if cpu is not None else None
    # the two processes run side by side: on idle cores the busier one bounds the wall time
    times = {"wall": storage["seconds"], "CPU of the busier process": busier}
    for what, seconds in ((what, seconds) for what, seconds in times.items() if seconds):
        targets.append(
            Target(f"storage plan at 100k tags, {what} (s)", round(seconds, 2),
                   f"< {LARGE_STORAGE_MAX_SECONDS:.0f}", seconds < LARGE_STORAGE_MAX_SECONDS)
        )  # fmt: skip
    return targets


def _drift(runs: list[dict[str, Any]], kind: str) -> list[float]:
    """Per-tag time at each size against the smallest: 0.1 is 10 % slower per tag."""
    field = _PER_TAG[kind]
    first = runs[0][kind][field]
    return [round(run[kind][field] / first - 1, 3) for run in runs]


_PER_TAG = {"cold": "ms_per_tag", "warm": "ms_per_tag", "storage": "cpu_ms_per_tag"}
"""What linear growth is judged on: wall time, or CPU time for the storage plan (of both
its processes: the work per tag, which the prefetch helper's overlap does not shrink)."""


def _machine(load_before: tuple[float, float, float]) -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def render(results: dict[str, Any]) -> str:
    """The report as a person reads it: one block per size, then the goals."""
    machine = results["machine"]
    lines = [
        f"machine   {machine['cpus']} CPUs, {machine['cpu_model']}, Python {machine['python']},"
        f" load average {machine['load_average_before'][0]} -> {machine['load_average_after'][0]}",
        f"concurrency {results['concurrency']}; limit = wrk sending a cold plan's requests",
    ]
    header = (
        f"{'run':<16}{'seconds':>9}{'tags/s':>9}{'ms/tag':>8}{'req/s':>8}{'req/tag':>8}"
        f"{'x limit':>8}{'CPU ms/req':>11}{'RSS MB':>8}{'CPU s':>8}{'CPU ms/tag':>11}"
    )
    for size in results["runs"]:
        lines += ["", f"{size['tags']} tags in {size['repositories']} repositories"
                      f" (seeded in {size['seed_seconds']} s)", header]  # fmt: skip
        if "limit" in size:
            lines.append(_row("limit (wrk)", size["limit"]))
            lines.append(_row("warm limit (wrk)", size["warm_limit"]))
        lines += [_row(f"{kind} plan", size[kind]) for kind in KINDS if kind in size]
        if "cold" in size:
            lines.append(
                f"warm speed-up {size['warm_speedup']}x, storage speed-up"
                f" {size['storage_speedup']}x; limit halves"
                f" {size['limit']['halves_tags_per_second']} tags/s"
            )
            lines.append(
                f"warm plan / warm limit {size['warm']['ratio_to_warm_limit']}; warm limit /"
                f" limit {size['limit_speedup']}x (the speed-up a warm plan could reach over"
                " a cold plan at the limit)"
            )
    lines += _linearity(results["runs"])
    lines.append("")
    lines += [
        f"{'PASS' if t['passed'] else 'FAIL'}  {t['name']}: {t['measured']} (want {t['wanted']})"
        for t in results["targets"]
    ]
    return "\n".join(lines)


def _linearity(runs: list[dict[str, Any]]) -> list[str]:
    """ms per tag of every kind at every size, and its drift from the smallest size."""
    if len(runs) < 2:
        return []
    lines = ["", f"{'per tag (ms)':<16}" + "".join(f"{run['tags']:>14}" for run in runs)]
    for kind in (kind for kind in KINDS if kind in runs[0]):
        cells = [
            f"{run[kind][_PER_TAG[kind]]:.3f} {drift:>+5.0%}"
            for run, drift in zip(runs, _drift(runs, kind), strict=True)
        ]
        label = f"{kind} plan" + (" CPU" if _PER_TAG[kind] == "cpu_ms_per_tag" else "")
        lines.append(f"{label:<16}" + "".join(f"{cell:>14}" for cell in cells))
    return lines


def _row(label: str, run: dict[str, Any]) -> str:
    rss = f"{run['peak_rss_mb']:>8.1f}" if "peak_rss_mb" in run else f"{'':>8}"
    ratio = f"{run['ratio_to_limit']:>8.2f}" if "ratio_to_limit" in run else f"{'-':>8}"
    cpu = ""
    if "cpu_ms_per_tag" in run:
        cpu = f"{run['cpu_seconds']:>8.2f}{run['cpu_ms_per_tag']:>11.3f}"
    return (
        f"{label:<16}{run['seconds']:>9.2f}{run['tags_per_second']:>9.1f}{run['ms_per_tag']:>8.3f}"
        f"{run['requests_per_second']:>8.1f}{run['requests_per_tag']:>8.2f}"
        f"{ratio}{run['cpu_ms_per_request']:>11.2f}{rss}{cpu}"
    )


if __name__ == "__main__":
    sys.exit(main())
