"""Test support: run a benchmark script in ``--quick --json`` mode, as its test does.

Each benchmark starts its own registry with storage under ``/dev/shm`` or the temporary
directory; a run that leaves that storage behind did not stop what it started.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def workdirs(prefix: str) -> set[Path]:
    """Benchmark storage directories that exist now, wherever the benchmark puts them."""
    parents = (Path("/dev/shm"), Path(tempfile.gettempdir()))
    return {path for parent in parents for path in parent.glob(f"{prefix}*")}


def run_quick(script: str, workdir_prefix: str) -> dict[str, Any]:
    """The JSON report of ``benchmarks/SCRIPT --quick --json``; fails the test if the run
    failed or left its storage behind."""
    existing = workdirs(workdir_prefix)
    finished = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    assert workdirs(workdir_prefix) <= existing  # storage removed: what it started is gone
    report: dict[str, Any] = json.loads(finished.stdout)
    return report
