"""The performance benchmark at a tiny size (``--quick``), so it cannot rot: it runs, and reports.

Timings are not checked here (a loaded CI machine would fail them for nothing); the
benchmark itself prints PASS or FAIL for its goals at full size. What is checked is what
must hold at any size: wrk's limit answered every request of a cold plan once, every
seeded tag was planned by the API and the storage scan, the cold plan sent two requests per
tag (GET by tag, GET config) and the warm one a HEAD per tag and no GET of a manifest or
blob, and the registry it started is gone.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import pytest
from benchmark_support import BENCHMARKS, run_quick


@pytest.mark.slow
def test_a_quick_benchmark_run_reports_every_section_as_json() -> None:
    report = run_quick("plan_benchmark.py", "retention-benchmark-")

    (run,) = report["runs"]
    assert (run["tags"], run["repositories"]) == (12, 3)
    assert run["limit"]["requests"] == 24  # a GET by tag and a GET of its config, per tag
    assert run["warm_limit"]["requests"] == 12  # the manifests by tag alone
    assert run["warm"]["ratio_to_warm_limit"] > 0 and run["limit_speedup"] > 0
    cold, warm, storage = run["cold"], run["warm"], run["storage"]
    for plan in (cold, warm, storage):
        assert (plan["tags"], plan["failed_repositories"], plan["undated"]) == (12, 0, 0)
    assert cold["requests"]["GET manifest"] == cold["requests"]["GET blob"] == 12
    assert "HEAD manifest" not in cold["requests"]
    assert warm["requests"]["HEAD manifest"] == 12
    assert "GET manifest" not in warm["requests"] and "GET blob" not in warm["requests"]
    assert storage["requests"] == {}
    assert cold["peak_in_flight"] <= report["concurrency"]
    assert {target["name"].split(" at ")[0] for target in report["targets"]} == {
        "cold plan / limit",
        "warm plan speed-up",
        "peak RSS of a plan",
    }


def test_the_report_shows_each_plans_per_tag_time_and_its_drift_across_sizes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # as when run as a script: limit, seed
    benchmark = _plan_benchmark_module(monkeypatch)
    runs = [_size(1000, cold=2.0, warm=0.5, storage=0.1), _size(100_000, 2.6, 0.5, 0.12)]
    runs[1]["storage"]["ms_per_tag"] = 0.05  # wall: the prefetch helper reads beside it

    targets = {t.name: t for t in benchmark._targets(runs)}
    text = benchmark.render({"machine": _MACHINE, "concurrency": 8, "runs": runs, "targets": []})

    drift = {kind: targets[f"{kind} per-tag time, 1000 -> 100000 tags"] for kind in KINDS[:2]}
    drift["storage"] = targets["storage per-tag CPU time, 1000 -> 100000 tags"]
    assert (drift["cold"].measured, drift["cold"].passed) == (0.3, False)
    assert (drift["warm"].measured, drift["warm"].passed) == (0.0, True)
    assert (drift["storage"].measured, drift["storage"].passed) == (0.2, True)
    rows = text.split("per tag (ms)")[1].splitlines()
    assert [row.split() for row in rows[1:]] == [
        ["cold", "plan", "2.000", "+0%", "2.600", "+30%"],
        ["warm", "plan", "0.500", "+0%", "0.500", "+0%"],
        ["storage", "plan", "CPU", "0.100", "+0%", "0.120", "+20%"],
    ]


KINDS = ("cold", "warm", "storage")
_MACHINE = {"cpus": 2, "cpu_model": "test", "python": "3.11", "load_average_before": [1.0],
            "load_average_after": [1.0]}  # fmt: skip


def _plan_benchmark_module(monkeypatch: pytest.MonkeyPatch) -> Any:
    """benchmarks/plan_benchmark.py imported as a module, for its pure report functions."""
    spec = importlib.util.spec_from_file_location(
        "plan_benchmark", BENCHMARKS / "plan_benchmark.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "plan_benchmark", module)  # its dataclasses look it up
    spec.loader.exec_module(module)
    return module


def _size(tags: int, cold: float, warm: float, storage: float) -> dict[str, Any]:
    """One size's results as the benchmark records them, with these ms per tag."""

    def plan(ms_per_tag: float) -> dict[str, Any]:
        seconds = ms_per_tag * tags / 1000
        return {"seconds": seconds, "tags_per_second": tags / seconds, "ms_per_tag": ms_per_tag,
                "cpu_ms_per_tag": ms_per_tag, "cpu_seconds": seconds, "requests_per_second": 0.0,
                "requests_per_tag": 0.0,
                "ratio_to_limit": 1.0, "cpu_ms_per_request": 0.0, "peak_rss_mb": 100.0}  # fmt: skip

    limit = {**plan(cold), "halves_tags_per_second": []}
    return {"tags": tags, "repositories": tags // 50, "seed_seconds": 1.0, "limit": limit,
            "warm_limit": {**plan(warm), "halves_tags_per_second": []},
            "cold": plan(cold), "warm": {**plan(warm), "ratio_to_warm_limit": 1.0},
            "storage": plan(storage), "warm_speedup": cold / warm,
            "limit_speedup": cold / warm, "storage_speedup": cold / storage}  # fmt: skip


def test_a_storage_only_report_judges_the_storage_plan_by_wall_and_busier_process_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scan and its prefetch helper run side by side: on idle cores the wall time is
    about the busier one's CPU, which is what stands in for it on a loaded machine."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    benchmark = _plan_benchmark_module(monkeypatch)
    storage = {**_size(100_000, 2.0, 0.5, 0.09)["storage"], "cpu_seconds": 12.5}
    storage |= {"cpu_ms_per_tag": 0.125, "helper_cpu_seconds": 2.0}
    run = {"tags": 100_000, "repositories": 2000, "seed_seconds": 1.0, "storage": storage}
    busier = "storage plan at 100k tags, CPU of the busier process (s)"

    targets = {t.name: t for t in benchmark._targets([run])}
    text = benchmark.render({"machine": _MACHINE, "concurrency": 8, "runs": [run], "targets": []})

    assert set(targets) == {
        "peak RSS of a plan at 100000 tags (MB)",
        "storage plan at 100k tags, wall (s)",
        busier,
    }
    assert (targets["storage plan at 100k tags, wall (s)"].measured, targets[
        "storage plan at 100k tags, wall (s)"].passed) == (9.0, True)  # fmt: skip
    assert (targets[busier].measured, targets[busier].passed) == (10.5, False)
    (row,) = [line for line in text.splitlines() if line.startswith("storage plan")]
    assert row.split()[-2:] == ["12.50", "0.125"]
    assert "limit (wrk)" not in text and "speed-up" not in text
