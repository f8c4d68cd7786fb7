"""One ``retention plan`` in a process of its own, so its peak memory is its own.

Run by ``plan_benchmark.py`` as ``python plan_pass.py URL STATE_DIR REPOSITORIES
CONCURRENCY [STORAGE_ROOT]``; prints one JSON object. It does what
``runner.run_pass(dry_run=True)`` does (a ``RegistryClient`` from the policy,
``inventory.each_repository`` with the manifest cache in ``state_dir``, each repository
handed to ``planner.Planning`` as it comes), or with STORAGE_ROOT what ``scan: storage``
does (``runner.run_pass(dry_run=True)`` itself, as ``retention plan`` runs it), but
scans only the first REPOSITORIES repositories and meters the client's transport (the same
HTTP/1.1 transport ``RegistryClient`` uses by default, ``registry/transport.py``):

* requests by kind, to show two requests per tag cold (GET by tag, GET config) and one
  warm (HEAD by tag);
* requests in flight over time (from sending to the body closed), to show that the pool is
  kept full rather than starved by the per-repository fan-out.

The meter adds a counter and a trace callback per request, a cost the limit loop does not
pay; the ratio it reports is, if anything, pessimistic. It leaves the transport's answers
read whole (every manifest, config and listing page of a scan) as they are, so that the
plan reads them from memory as ``retention plan`` does.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

import httpx  # noqa: E402
from seed import repository_name  # noqa: E402

from retention import cli, logs, runner  # noqa: E402
from retention.core import planner  # noqa: E402
from retention.core.model import Repository  # noqa: E402
from retention.core.policy import Policy, policy_from_mapping  # noqa: E402
from retention.registry import RegistryClient  # noqa: E402
from retention.registry.tls import public_trust  # noqa: E402
from retention.registry.transport import Http1Transport  # noqa: E402
from retention.scan import inventory  # noqa: E402
from retention.state.manifest_cache import ManifestCache  # noqa: E402


class _ClosingStream(httpx.AsyncByteStream):
    """A response body that tells the meter when the connection is free again."""

    def __init__(self, inner: httpx.AsyncByteStream, closed: Callable[[], None]) -> None:
        self._inner = inner
        self._closed: Callable[[], None] | None = closed

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()
        closed, self._closed = self._closed, None  # httpx may close a stream twice
        if closed is not None:
            closed()


class Meter(httpx.AsyncBaseTransport):
    """A real keep-alive transport that counts what goes through it."""

    def __init__(self, concurrency: int) -> None:
        self._inner = Http1Transport(public_trust())
        self.requests: Counter[str] = Counter()
        self.peak_in_flight = 0
        self._in_flight = 0
        self._area = 0.0
        self._started = self._changed = time.perf_counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests[_kind(request)] += 1
        self._change(+1)
        try:
            response = await self._inner.handle_async_request(request)
        except BaseException:
            self._change(-1)
            raise
        if isinstance(response.stream, httpx.ByteStream):  # read whole: the connection is free
            self._change(-1)
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        return httpx.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_ClosingStream(response.stream, lambda: self._change(-1)),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self._inner.aclose()

    def mean_in_flight(self) -> float:
        self._change(0)
        return self._area / max(self._changed - self._started, 1e-9)

    def _change(self, delta: int) -> None:
        now = time.perf_counter()
        self._area += self._in_flight * (now - self._changed)
        self._changed = now
        self._in_flight += delta
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight)


def _kind(request: httpx.Request) -> str:
    path = request.url.path
    if "/manifests/" in path:
        return f"{request.method} manifest"
    if "/blobs/" in path:
        return f"{request.method} blob"
    return f"{request.method} other"


def benchmark_policy(
    url: str, state_dir: Path, concurrency: int, storage: Path | None = None
) -> Policy:
    """Keep the ten newest builds: enough rules for the planner to do real work; with
    ``storage``, ``scan: storage`` of that root."""
    scan = {"scan": "storage", "storage": {"path": str(storage)}} if storage else {}
    return policy_from_mapping(
        {
            "registry": {"url": url, "concurrency": concurrency},
            "rules": [{"name": "builds", "match": "build-.*", "keep_last": 10}],
            "safety": {"max_delete_fraction": 1.0},
            "state_dir": str(state_dir),
            **scan,
        }
    )


async def plan_once(policy: Policy, repositories: int) -> dict[str, Any]:
    """What ``run_pass(dry_run=True)`` does, timed and metered; the plan is summarised."""
    wanted = {repository_name(index) for index in range(repositories)}
    meter = Meter(policy.registry.concurrency)
    rss_before = _rss_kib("VmRSS")
    started, cpu_started = time.perf_counter(), time.process_time()
    facts = _Facts()
    async with RegistryClient(policy.registry, transport=meter) as client:
        planning = planner.Planning(policy, client.url, datetime.now(UTC))
        scanned = inventory.each_repository(
            client, repositories=wanted.__contains__, cache=ManifestCache(policy.state_dir)
        )
        async for repository in scanned:
            planning.add(facts.count(repository))
        plan = planning.finish()
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
        mean_in_flight = meter.mean_in_flight()
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        **facts.summary(),
        "tags_to_delete": plan.summary.tags_to_delete,
        "requests": dict(sorted(meter.requests.items())),
        "peak_in_flight": meter.peak_in_flight,
        "mean_in_flight": mean_in_flight,
        "rss_before_kib": rss_before,
        "peak_rss_kib": _rss_kib("VmHWM"),
    }


class _Facts:
    """What the benchmark checks against the seeded registry before trusting a timing,
    counted as the repositories go by (the pass does not keep them)."""

    def __init__(self) -> None:
        self.counts = Counter[str]()

    def count(self, repository: Repository) -> Repository:
        manifests = repository.manifests.values()
        self.counts.update(
            repositories=1,
            tags=len(repository.tags),
            manifests=len(manifests),
            undated=sum(1 for m in manifests if m.created is None),
            failed_repositories=1 if repository.error else 0,
        )
        return repository

    def summary(self) -> dict[str, int]:
        names = ("repositories", "tags", "manifests", "undated", "failed_repositories")
        return {name: self.counts[name] for name in names}


def _cpu_own_and_children() -> tuple[float, float]:
    """This process's CPU and its reaped children's: the storage scan's prefetch helper
    (``scan/storage_prefetch.py``) reads the files in a process of its own."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def _rss_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc; getrusage's peak elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def storage_plan_once(policy: Policy, repositories: int) -> dict[str, Any]:
    """What ``retention plan`` does with ``scan: storage``: ``runner.run_pass(dry_run=True)``
    itself (read each repository from the files, add link times, confirm subjects, plan,
    drop it), logging configured as the CLI does; only the report is not rendered.

    The facts the benchmark checks come from the plan, since the pass keeps no repository.
    """
    wanted = "|".join(re.escape(repository_name(index)) for index in range(repositories))
    logs.configure("json", "info")
    rss_before = _rss_kib("VmRSS")
    scope = runner.Scope(repositories=re.compile(wanted))
    started, (own_started, helper_started) = time.perf_counter(), _cpu_own_and_children()
    result = cli._run(runner.run_pass(policy, dry_run=True, scope=scope))  # as the CLI does
    seconds, (own, helper) = time.perf_counter() - started, _cpu_own_and_children()
    own_cpu, helper_cpu = own - own_started, helper - helper_started
    plan = result.plan
    decisions = [(r, d) for r in plan.repositories for d in r.tag_decisions]
    return {
        "seconds": seconds,
        "cpu_seconds": own_cpu + helper_cpu,
        "helper_cpu_seconds": helper_cpu,
        "repositories": len(plan.repositories),
        "tags": len(decisions),
        "manifests": len({(r.name, d.digest) for r, d in decisions}),
        "undated": sum(1 for _, d in decisions if d.created is None),
        "failed_repositories": sum(1 for r in plan.repositories if r.error),
        "tags_to_delete": plan.summary.tags_to_delete,
        "requests": {},
        "rss_before_kib": rss_before,
        "peak_rss_kib": _rss_kib("VmHWM"),
    }


def main(argv: list[str]) -> None:
    url, state_dir, repositories, concurrency, *storage = argv
    root = Path(storage[0]) if storage else None
    policy = benchmark_policy(url, Path(state_dir), int(concurrency), root)
    if root is not None:
        result = storage_plan_once(policy, int(repositories))
    else:
        result = asyncio.run(plan_once(policy, int(repositories)))
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
