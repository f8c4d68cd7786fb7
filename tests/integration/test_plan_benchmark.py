"""The performance benchmark at a tiny size, so it cannot rot: it runs, and reports.

Timings are not checked here (a loaded CI machine would fail them for nothing); the
benchmark itself prints PASS or FAIL for its targets at full size. What is checked is what
must hold at any size: every seeded tag was planned, the cold plan fetched each manifest
and config once, the warm plan fetched none, and the registry it started is gone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "plan_benchmark.py"


def workdirs() -> set[Path]:
    """Benchmark storage directories that exist now, wherever the benchmark puts them."""
    parents = (Path("/dev/shm"), Path(tempfile.gettempdir()))
    return {path for parent in parents for path in parent.glob("retention-benchmark-*")}


def test_a_tiny_benchmark_run_reports_every_section_as_json() -> None:
    existing = workdirs()

    finished = subprocess.run(
        [sys.executable, str(BENCHMARK), "--repositories", "3", "--tags", "4", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    assert report["registry"]["tags"] == 12
    assert report["limit"]["requests"] == 36
    first, second = report["first_plan"], report["second_plan"]
    assert (first["tags"], first["failed_repositories"], first["undated"]) == (12, 0, 0)
    assert first["requests"]["GET manifest"] == first["requests"]["GET blob"] == 12
    assert "HEAD manifest" not in first["requests"]  # a cold scan GETs each tag once
    assert second["requests"]["HEAD manifest"] == 12
    assert "GET manifest" not in second["requests"]
    assert "GET blob" not in second["requests"]
    assert first["peak_in_flight"] <= report["registry"]["concurrency"]
    assert [point["tags"] for point in report["scaling"]] == [4, 8, 12]
    assert {target["name"] for target in report["targets"]} == {
        "first plan / limit throughput",
        "second plan speed-up over first",
        "peak RSS of a plan (MB)",
    }
    assert workdirs() <= existing  # storage removed, so the registry was stopped first
