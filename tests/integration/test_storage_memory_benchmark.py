"""The storage memory benchmark in ``--quick`` mode, so it cannot rot: it runs, and reports.

The peak RSS goal is not checked here (pytest's own memory is not the plan's); the
benchmark prints PASS or FAIL for it itself. What must hold at any size is checked: the
generated reader saw every tag, the planner planned them, and the goal for the size is
named.
"""

from __future__ import annotations

from benchmark_support import run_quick


def test_a_quick_storage_memory_run_plans_every_generated_tag_and_names_its_goal() -> None:
    report = run_quick("storage_memory.py", "retention-storage-memory-")

    assert (report["tags"], report["repositories"]) == (2000, 40)
    assert report["tags_to_delete"] == 1600  # the benchmark policy keeps 10 of 50 per repository
    assert report["reclaimable_bytes"] > 0
    assert 0 <= report["planning_cpu_seconds"] <= report["cpu_seconds_with_generation"]
    assert report["peak_rss_mb"] >= report["rss_after_scan_and_plan_mb"] > 0
    assert report["target"]["wanted"] == "< 200 MB"
    assert report["target"]["passed"] == (report["peak_rss_mb"] < 200)
