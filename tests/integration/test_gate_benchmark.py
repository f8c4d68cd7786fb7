"""The gate benchmark in ``--quick`` mode, so it cannot rot: it runs, and reports.

Ratios are not checked here (a loaded CI machine would fail them for nothing); the
benchmark prints PASS or FAIL for them itself. What must hold at any size is checked: both
figures were measured on both paths, no request failed, and the registry and the
``retention serve`` it started are gone with their storage.
"""

from __future__ import annotations

import pytest
from benchmark_support import run_quick


@pytest.mark.slow
def test_a_quick_gate_benchmark_compares_blobs_and_heads_through_the_gate_and_direct() -> None:
    report = run_quick("gate_benchmark.py", "retention-gate-benchmark-")

    names = [c["name"] for c in report["comparisons"]]
    assert names == ["1 MB blob GET", "manifest HEAD", "32 MB blob GET"]
    for comparison in report["comparisons"]:
        assert comparison["failed_requests"] == 0
        assert comparison["direct"] > 0 and comparison["gated"] > 0
        assert comparison["ratio"] == comparison["gated"] / comparison["direct"]
        assert comparison["gate_cpu_ms_per_request"] > 0  # the requests did cross the gate
        assert comparison["client_cpu_ms_per_request"] > 0  # ab's own CPU was measured
