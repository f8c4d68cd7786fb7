"""The gate benchmark in ``--quick`` mode, so it cannot rot: it runs, and reports.

Ratios are not checked here (a loaded CI machine would fail them for nothing); the
benchmark prints PASS or FAIL for them itself. What must hold at any size is checked: both
figures were measured on both paths, no request failed, and the registry and the
``retention serve`` it started are gone with their storage.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "gate_benchmark.py"


def workdirs() -> set[Path]:
    parents = (Path("/dev/shm"), Path(tempfile.gettempdir()))
    return {path for parent in parents for path in parent.glob("retention-gate-benchmark-*")}


def test_a_quick_gate_benchmark_compares_blobs_and_heads_through_the_gate_and_direct() -> None:
    existing = workdirs()

    finished = subprocess.run(
        [sys.executable, str(BENCHMARK), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    assert [c["name"] for c in report["comparisons"]] == ["1 MB blob GET", "manifest HEAD"]
    for comparison in report["comparisons"]:
        assert comparison["failed_requests"] == 0
        assert comparison["direct"] > 0 and comparison["gated"] > 0
        assert comparison["ratio"] == comparison["gated"] / comparison["direct"]
        assert comparison["gate_cpu_ms_per_request"] > 0  # the requests did cross the gate
    assert workdirs() <= existing
