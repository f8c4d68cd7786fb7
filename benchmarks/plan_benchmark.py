"""How fast ``retention plan`` scans a registry, against what the registry itself can answer.

    python benchmarks/plan_benchmark.py [--repositories 200 --tags 50 --concurrency 8 --json]

Starts a real ``docker-registry`` on a free 127.0.0.1 port with temporary storage (on
/dev/shm when there is one, so the disk is not what is measured), seeds R x T tags, and
reports, on that one registry:

* the limit: a minimal httpx loop sending exactly the requests a cold plan needs;
* a first plan (cold manifest cache) and a second (warm cache, unchanged registry), each
  in a fresh process for its own peak RSS, with its ratio to the limit;
* scaling: the cold plan over 10%, 50% and 100% of the repositories.

Then PASS or FAIL per target (the exit status stays 0: this measures, it does not gate).

The limit is measured in two halves (the first half of the tags, in repository order, just
before the first plan, the second half just after it), so it covers every request once and
brackets the plan in time: on a shared machine whose load drifts over minutes, a limit
taken long before or after the plan would compare two different machines. The CPU this
process and the plan's process spend per request is printed too; unlike throughput, it
hardly depends on the load, and shows what the client side costs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
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

FIRST_PLAN_MIN_RATIO = 0.7
SECOND_PLAN_MIN_SPEEDUP = 2.0
PEAK_RSS_MAX_MB = 200.0
SCALING_FRACTIONS = (0.1, 0.5, 1.0)


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
    results = run(binary, options.repositories, options.tags, options.concurrency)
    print(json.dumps(results, indent=2) if options.json else render(results))
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=200)
    parser.add_argument("--tags", type=int, default=50, help="tags per repository")
    parser.add_argument("--concurrency", type=int, default=8, help="registry.concurrency")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    options = parser.parse_args()
    if min(options.repositories, options.tags, options.concurrency) < 1:
        parser.error("--repositories, --tags and --concurrency must be at least 1")
    return options


def run(binary: str, repositories: int, tags: int, concurrency: int) -> dict[str, Any]:
    """Seed, measure, stop; everything the report shows, as plain data."""
    load_before = os.getloadavg()
    with _registry(binary) as (server, workdir):
        started = time.perf_counter()
        seeded = seed(server.root, repositories=repositories, tags=tags)
        seed_seconds = time.perf_counter() - started
        server.start()
        plan = functools.partial(_plan, server.url, seeded=seeded, concurrency=concurrency)
        half = len(seeded) // 2
        before = asyncio.run(limit.measure(server.url, seeded[:half], concurrency))
        first = plan(workdir / "state", repositories)
        after = asyncio.run(limit.measure(server.url, seeded[half:], concurrency))
        second = plan(workdir / "state", repositories)
        counts = _scaling_counts(repositories)[:-1]
        scaling = [plan(workdir / f"state-{count}", count) for count in counts]
    best = limit.LimitResult.combined(before, after)
    return {
        "machine": _machine(load_before),
        "registry": {
            "repositories": repositories,
            "tags_per_repository": tags,
            "tags": len(seeded),
            "concurrency": concurrency,
            "seed_seconds": round(seed_seconds, 2),
        },
        "limit": _limit_facts(best, (before, after)),
        "first_plan": _with_ratio(first, best),
        "second_plan": _with_ratio(second, best),
        "scaling": [_scaling_point(p) for p in (*scaling, first)],
        "memory_kib_per_tag": _memory_per_tag(scaling[0] if scaling else None, first),
        "targets": [asdict(t) for t in _targets(first, second, best)],
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


def _scaling_counts(repositories: int) -> list[int]:
    """Repository counts for the scaling runs, ending with all of them."""
    counts = {max(1, round(repositories * fraction)) for fraction in SCALING_FRACTIONS}
    return sorted(counts)


def _plan(
    url: str, state_dir: Path, repositories: int, *, seeded: list[SeededTag], concurrency: int
) -> dict[str, Any]:
    """One plan in a fresh process; refuses a result that did not see every seeded tag."""
    command = [
        sys.executable,
        str(_HERE / "plan_pass.py"),
        url,
        str(state_dir),
        str(repositories),
        str(concurrency),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise RuntimeError(f"plan process failed:\n{finished.stderr}")
    result: dict[str, Any] = json.loads(finished.stdout)
    expected = len(seeded) * repositories // len({tag.repository for tag in seeded})
    problems = (result["tags"] != expected, result["failed_repositories"], result["undated"])
    if any(problems):
        raise RuntimeError(f"the plan did not see the seeded registry ({expected} tags): {result}")
    return result


def _with_ratio(plan: dict[str, Any], best: limit.LimitResult) -> dict[str, Any]:
    tags_per_second = plan["tags"] / plan["seconds"]
    requests = sum(plan["requests"].values())
    return {
        **plan,
        "tags_per_second": round(tags_per_second, 1),
        "requests_per_second": round(requests / plan["seconds"], 1),
        "ratio_to_limit": round(tags_per_second / best.tags_per_second, 3),
        "peak_rss_mb": round(plan["peak_rss_kib"] / 1024, 1),
        "requests_per_tag": round(requests / plan["tags"], 3),
        "cpu_ms_per_request": round(1000 * plan["cpu_seconds"] / requests, 3),
    }


def _limit_facts(best: limit.LimitResult, halves: tuple[limit.LimitResult, ...]) -> dict[str, Any]:
    return {
        "requests": best.requests,
        "seconds": round(best.seconds, 3),
        "requests_per_second": round(best.requests_per_second, 1),
        "tags_per_second": round(best.tags_per_second, 1),
        "requests_per_tag": round(best.requests / best.tags, 3),
        "cpu_ms_per_request": round(best.cpu_ms_per_request, 3),
        "halves_tags_per_second": [round(half.tags_per_second, 1) for half in halves if half.tags],
    }


def _scaling_point(plan: dict[str, Any]) -> dict[str, Any]:
    return {
        "tags": plan["tags"],
        "seconds": round(plan["seconds"], 3),
        "tags_per_second": round(plan["tags"] / plan["seconds"], 1),
        "peak_rss_mb": round(plan["peak_rss_kib"] / 1024, 1),
    }


def _memory_per_tag(small: dict[str, Any] | None, large: dict[str, Any]) -> float | None:
    """The slope of peak RSS over tags between the smallest and the full cold plan.

    What "flat per tag" means in numbers: the inventory's own values and no bodies. A slope
    that jumped would mean something (bodies, a task per tag) grows with the registry.
    """
    if small is None or large["tags"] == small["tags"]:
        return None
    grown: int = large["peak_rss_kib"] - small["peak_rss_kib"]
    more: int = large["tags"] - small["tags"]
    return round(grown / more, 2)


def _targets(
    first: dict[str, Any], second: dict[str, Any], best: limit.LimitResult
) -> list[Target]:
    ratio = first["tags"] / first["seconds"] / best.tags_per_second
    speedup = first["seconds"] / second["seconds"]
    peak_mb = max(first["peak_rss_kib"], second["peak_rss_kib"]) / 1024
    return [
        Target("first plan / limit throughput", round(ratio, 3),
               f">= {FIRST_PLAN_MIN_RATIO}", ratio >= FIRST_PLAN_MIN_RATIO),
        Target("second plan speed-up over first", round(speedup, 2),
               f">= {SECOND_PLAN_MIN_SPEEDUP}", speedup >= SECOND_PLAN_MIN_SPEEDUP),
        Target("peak RSS of a plan (MB)", round(peak_mb, 1),
               f"< {PEAK_RSS_MAX_MB:.0f}", peak_mb < PEAK_RSS_MAX_MB),
    ]  # fmt: skip


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
    """The report as a person reads it: limit and plans, scaling, details, targets."""
    machine, registry = results["machine"], results["registry"]
    lines = [
        f"machine   {machine['cpus']} CPUs, {machine['cpu_model']}, Python {machine['python']},"
        f" load average {machine['load_average_before'][0]} -> {machine['load_average_after'][0]}",
        f"registry  {registry['repositories']} repositories x {registry['tags_per_repository']}"
        f" tags = {registry['tags']} tags, concurrency {registry['concurrency']}"
        f" (seeded in {registry['seed_seconds']} s)",
        "",
        f"{'run':<26}{'seconds':>9}{'tags/s':>9}{'req/s':>9}{'req/tag':>9}"
        f"{'x limit':>9}{'CPU ms/req':>11}{'RSS MB':>8}",
        _row("limit (minimal httpx)", {**results["limit"], "ratio_to_limit": 1.0}),
        _row("first plan (cold cache)", results["first_plan"]),
        _row("second plan (warm cache)", results["second_plan"]),
        "",
        f"{'scaling (cold), tags':<26}{'seconds':>9}{'tags/s':>9}{'RSS MB':>8}",
        *(
            f"{p['tags']:<26}{p['seconds']:>9.2f}{p['tags_per_second']:>9.1f}"
            f"{p['peak_rss_mb']:>8.1f}"
            for p in results["scaling"]
        ),
        f"peak RSS grows {results['memory_kib_per_tag']} KiB per tag",
        "",
        f"limit halves (before, after the first plan): "
        f"{results['limit']['halves_tags_per_second']} tags/s",
        _detail("first plan", results["first_plan"]),
        _detail("second plan", results["second_plan"]),
        "",
        *(
            f"{'PASS' if t['passed'] else 'FAIL'}  {t['name']}: {t['measured']}"
            f" (want {t['wanted']})"
            for t in results["targets"]
        ),
    ]
    return "\n".join(lines)


def _row(label: str, run: dict[str, Any]) -> str:
    rss = f"{run['peak_rss_mb']:>8.1f}" if "peak_rss_mb" in run else ""
    return (
        f"{label:<26}{run['seconds']:>9.2f}{run['tags_per_second']:>9.1f}"
        f"{run['requests_per_second']:>9.1f}{run['requests_per_tag']:>9.2f}"
        f"{run['ratio_to_limit']:>9.2f}{run['cpu_ms_per_request']:>11.2f}{rss}"
    )


def _detail(label: str, plan: dict[str, Any]) -> str:
    requests = ", ".join(f"{kind} {count}" for kind, count in plan["requests"].items())
    return (
        f"{label}: {requests}; {plan['connections']} connections opened;"
        f" in flight mean {plan['mean_in_flight']:.2f}, peak {plan['peak_in_flight']}"
    )


if __name__ == "__main__":
    sys.exit(main())
