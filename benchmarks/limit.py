"""The yardstick: how fast this registry answers exactly the requests a cold plan needs.

A HEAD per tag, a GET per distinct manifest and a GET per distinct config blob, sent by the
leanest client that is still fair: asyncio, one ``httpx.AsyncClient`` with keep-alive, and a
semaphore at the plan's concurrency. No retries, no digest checks, no parsing; every answer
must be 200 or the number would be meaningless. The digests come from the seeder, so unlike
a plan this loop never waits for one answer before it can send the next request.

A run can be split (``measure`` over two halves of the tags, ``combined``), so the halves
can bracket the plan they are compared with and drift in the machine's load averages out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from seed import SeededTag

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)

Request = tuple[str, str, dict[str, str]]


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
        """This process's CPU per request: what the client side costs, load or not."""
        return 1000 * self.cpu_seconds / self.requests


def plan_requests(tags: Sequence[SeededTag]) -> list[Request]:
    """The requests a plan of ``tags`` sends, in the order a plan tends to send them."""
    accept = {"Accept": MANIFEST_ACCEPT}
    requests: list[Request] = []
    manifests: set[tuple[str, str]] = set()
    configs: set[tuple[str, str]] = set()
    for tag in tags:
        requests.append(("HEAD", f"/v2/{tag.repository}/manifests/{tag.tag}", accept))
        if (tag.repository, tag.manifest) not in manifests:
            manifests.add((tag.repository, tag.manifest))
            requests.append(("GET", f"/v2/{tag.repository}/manifests/{tag.manifest}", accept))
        if (tag.repository, tag.config) not in configs:
            configs.add((tag.repository, tag.config))
            requests.append(("GET", f"/v2/{tag.repository}/blobs/{tag.config}", {}))
    return requests


async def measure(url: str, tags: Sequence[SeededTag], concurrency: int) -> LimitResult:
    """Send every request of ``plan_requests(tags)``, at most ``concurrency`` at once."""
    requests = plan_requests(tags)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    bound = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, trust_env=False) as http:

        async def send(method: str, path: str, headers: dict[str, str]) -> None:
            async with bound:
                response = await http.request(method, path, headers=headers)
            if response.status_code != 200:
                raise RuntimeError(f"limit: {method} {path} answered {response.status_code}")

        started, cpu_started = time.perf_counter(), time.process_time()
        await asyncio.gather(*(send(*request) for request in requests))
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started
    return LimitResult(len(requests), len(tags), seconds, cpu_seconds)
