"""The performance benchmark at a tiny size (``--quick``), so it cannot rot: it runs, and reports.

Timings are not checked here (a loaded CI machine would fail them for nothing); the
benchmark itself prints PASS or FAIL for its goals at full size. What is checked is what
must hold at any size: wrk's limit answered every request of a cold plan once, every
seeded tag was planned by the API and the storage scan, the cold plan sent two requests per
tag (GET by tag, GET config) and the warm one a HEAD per tag and no GET of a manifest or
blob, and the registry it started is gone.
"""

from __future__ import annotations

import pytest
from benchmark_support import run_quick


@pytest.mark.slow
def test_a_quick_benchmark_run_reports_every_section_as_json() -> None:
    report = run_quick("plan_benchmark.py", "retention-benchmark-")

    (run,) = report["runs"]
    assert (run["tags"], run["repositories"]) == (12, 3)
    assert run["limit"]["requests"] == 24  # a GET by tag and a GET of its config, per tag
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
