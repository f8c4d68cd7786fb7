"""The yardstick: how fast the registry answers exactly the requests a cold plan sends.

A cold plan sends, per tag, a GET of the manifest by tag (with the four manifest types in
``Accept``) and, per distinct config, a GET of the config blob. ``wrk`` (Debian's package, a
C load generator on epoll) sends that list once, in the plan's order, over ``concurrency``
keep-alive connections from one thread, and stops when every answer is in; a Lua script
feeds it the paths and counts anything but 200 as an error that voids the number. So the
limit is the registry's, not any Python client's: what our own client costs shows up as the
plan's ratio to it.

A run can be split (``measure`` over two halves of the tags, ``combined``), so the halves
can bracket the plan they are compared with and drift in the machine's load averages out.

``manifests_only`` is the warm plan's yardstick: a warm plan sends a HEAD of each manifest
by tag, and Distribution answers a HEAD by reading the manifest as for a GET (``ab`` on one
manifest, one run: 1,032 and 1,020 HEADs/s against 945 and 1,169 GETs/s). wrk cannot send
HEAD (it waits for the body the Content-Length announces), so the limit GETs them.
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from seed import SeededTag

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    )
)

# Paths come from a file named in the environment; every answer is counted, and the thread
# stops once as many answers as paths have arrived (wrk has no request-count option). wrk's
# main thread sleeps for the whole -d however early that is, so the time is taken here
# (LuaJIT's ffi, CLOCK_MONOTONIC) from the first request to the last answer, printed, and
# measure() then interrupts wrk, which prints its summary.
_SCRIPT = """
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } retention_timespec;
int clock_gettime(int clock, retention_timespec *now);
]]
local clock = ffi.new("retention_timespec")
local function now()
  ffi.C.clock_gettime(1, clock)
  return tonumber(clock.tv_sec) + tonumber(clock.tv_nsec) * 1e-9
end
local started = nil
local paths = {}
for line in io.lines(os.getenv("RETENTION_WRK_PATHS")) do paths[#paths + 1] = line end
local accept = os.getenv("RETENTION_WRK_ACCEPT")
local sent, answered, failed = 0, 0, 0

request = function()
  if started == nil then started = now() end
  sent = sent + 1
  local path = paths[(sent - 1) % #paths + 1]
  if string.find(path, "/manifests/", 1, true) then
    return wrk.format("GET", path, { ["Accept"] = accept })
  end
  return wrk.format("GET", path)
end

response = function(status, headers, body)
  answered = answered + 1
  if status ~= 200 then failed = failed + 1 end
  if answered == #paths then
    io.write(string.format("FINISHED %.6f %d\\n", now() - started, failed))
    io.flush()
    wrk.thread:stop()
  end
end

done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %d\\n", summary.requests, summary.errors.status))
end
"""


@dataclass(frozen=True)
class LimitResult:
    requests: int
    tags: int
    seconds: float
    cpu_seconds: float

    @classmethod
    def combined(cls, *parts: LimitResult) -> LimitResult:
        """One result for runs over disjoint sets of tags, as if they had been one run."""
        return cls(
            requests=sum(part.requests for part in parts),
            tags=sum(part.tags for part in parts),
            seconds=sum(part.seconds for part in parts),
            cpu_seconds=sum(part.cpu_seconds for part in parts),
        )

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def tags_per_second(self) -> float:
        """Tags a plan could get through per second if it cost no more than these requests."""
        return self.tags / self.seconds

    @property
    def cpu_ms_per_request(self) -> float:
        """wrk's CPU per request: what a C client costs, for comparison with the plan's."""
        return 1000 * self.cpu_seconds / self.requests


def wrk_binary() -> str | None:
    return shutil.which("wrk")


def plan_paths(tags: Sequence[SeededTag], *, manifests_only: bool = False) -> list[str]:
    """The paths a cold plan of ``tags`` GETs, in the order a plan tends to send them (with
    ``manifests_only``, the manifests by tag alone: what a warm plan asks for)."""
    paths: list[str] = []
    configs: set[tuple[str, str]] = set()
    for tag in tags:
        paths.append(f"/v2/{tag.repository}/manifests/{tag.tag}")
        if not manifests_only and (tag.repository, tag.config) not in configs:
            configs.add((tag.repository, tag.config))
            paths.append(f"/v2/{tag.repository}/blobs/{tag.config}")
    return paths


def measure(
    url: str, tags: Sequence[SeededTag], concurrency: int, *, manifests_only: bool = False
) -> LimitResult:
    """Send every request of ``plan_paths(tags)`` once with wrk; refuse any non-200."""
    binary = wrk_binary()
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    if not tags:
        return LimitResult(0, 0, 0.0, 0.0)
    paths = plan_paths(tags, manifests_only=manifests_only)
    with tempfile.TemporaryDirectory(prefix="retention-wrk-") as workdir:
        script, listing = Path(workdir) / "plan.lua", Path(workdir) / "paths"
        script.write_text(_SCRIPT)
        listing.write_text("\n".join(paths) + "\n")
        # At least a few seconds more than the run can need: wrk stops itself when done.
        budget = 30 + math.ceil(len(paths) / 50)
        command = [binary, "-t1", f"-c{concurrency}", f"-d{budget}s", "-s", str(script), url]
        environment = {
            **os.environ,
            "RETENTION_WRK_PATHS": str(listing),
            "RETENTION_WRK_ACCEPT": MANIFEST_ACCEPT,
        }
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        output = _run_until_finished(command, environment, budget)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds, requests = _result(output, len(paths))
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return LimitResult(requests, len(tags), seconds, cpu)


def _run_until_finished(command: list[str], environment: dict[str, str], budget: int) -> str:
    """Run wrk until the script says every answer is in, then interrupt it for its summary."""
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    ) as process:
        assert process.stdout is not None
        lines: list[str] = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("FINISHED "):
                process.send_signal(signal.SIGINT)
        process.wait(timeout=budget + 30)
    return "".join(lines)


def _result(output: str, paths: int) -> tuple[float, int]:
    """(seconds, requests) from wrk's output; anything but every path answered 200 is void."""
    finished = [line.split() for line in output.splitlines() if line.startswith("FINISHED ")]
    summary = [line.split() for line in output.splitlines() if line.startswith("RESULT ")]
    if not finished or not summary:
        raise RuntimeError(f"wrk did not finish the request list:\n{output}")
    seconds, failed = float(finished[0][1]), int(finished[0][2])
    requests = int(summary[-1][1])
    if failed or int(summary[-1][2]) or requests < paths:
        raise RuntimeError(f"limit: not every request was answered 200 once:\n{output}")
    return seconds, paths
