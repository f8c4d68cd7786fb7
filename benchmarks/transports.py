"""Client CPU per request for each way of sending the scan's requests, on one registry.

    python benchmarks/transports.py [--repositories 20 --tags 50 --concurrency 8 --rounds 3]

Starts a real ``docker-registry`` on a free 127.0.0.1 port, seeds R x T tags (written in the
storage layout, see ``seed.py``), and sends the request set of a cold scan (a GET of each
manifest by tag with the four Accept types, and a GET of each config) through each
candidate, several rounds each, interleaved so load drift hits them all alike. It prints the
CPU this process spent per request (``time.process_time``, which hardly depends on the
machine's load, unlike wall time) and the requests per second.

The candidates are the transports ``RegistryClient`` can sit on while keeping httpx as the
API (``httpx.Auth`` flows, httpx's exceptions, its Request and Response), plus raw aiohttp
as a floor no httpx-based client can beat:

* ``httpx-httpcore``: ``httpx.AsyncClient`` with its default transport (httpcore, asyncio,
  sniffio installed);
* ``httpx-http1``: ``httpx.AsyncClient`` over ``retention.registry.transport.Http1Transport``
  (our HTTP/1.1 pool, ``registry/http1.py``), what ``RegistryClient`` uses;
* ``httpx-aiohttp``: ``httpx.AsyncClient`` over ``httpx_aiohttp.AiohttpTransport``, the
  client's transport before ours (measured only where the package is installed: it is no
  longer a dependency);
* ``httpx-sync-threads``: ``httpx.Client`` called from a thread pool of ``concurrency``
  threads (``asyncio.to_thread``), the way an async caller would use the sync client;
* ``aiohttp-raw``: ``aiohttp.ClientSession`` alone (not usable as our API; the floor).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[1:1] = [str(_HERE.parent), str(_HERE.parent / "tests")]

import httpx  # noqa: E402
from registry_server import RegistryServer, registry_binary  # noqa: E402
from seed import SeededTag, seed  # noqa: E402

from retention.registry.media_types import MANIFEST_ACCEPT  # noqa: E402
from retention.registry.transport import Http1Transport  # noqa: E402

Request = tuple[str, dict[str, str]]
Sender = Callable[[str, Sequence[Request], int], Coroutine[Any, Any, None]]


def cold_requests(tags: Sequence[SeededTag]) -> list[Request]:
    """A GET per tag (manifest by tag) and per distinct config, as a cold scan sends them."""
    accept = {"Accept": MANIFEST_ACCEPT}
    requests: list[Request] = []
    for tag in tags:
        requests.append((f"/v2/{tag.repository}/manifests/{tag.tag}", accept))
        requests.append((f"/v2/{tag.repository}/blobs/{tag.config}", {}))
    return requests


async def _httpx(client: httpx.AsyncClient, requests: Sequence[Request], bound: int) -> None:
    semaphore = asyncio.Semaphore(bound)

    async def one(path: str, headers: dict[str, str]) -> None:
        async with semaphore:
            response = await client.get(path, headers=headers)
        _check(response.status_code, path)

    async with client:
        await asyncio.gather(*(one(*request) for request in requests))


def _limits(concurrency: int) -> httpx.Limits:
    return httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)


async def httpx_httpcore(url: str, requests: Sequence[Request], concurrency: int) -> None:
    client = httpx.AsyncClient(base_url=url, limits=_limits(concurrency), trust_env=False)
    await _httpx(client, requests, concurrency)


async def httpx_http1(url: str, requests: Sequence[Request], concurrency: int) -> None:
    transport = Http1Transport(None)
    client = httpx.AsyncClient(base_url=url, transport=transport, trust_env=False)
    await _httpx(client, requests, concurrency)


async def httpx_aiohttp(url: str, requests: Sequence[Request], concurrency: int) -> None:
    from httpx_aiohttp import AiohttpTransport  # type: ignore[import-not-found,unused-ignore]

    transport = AiohttpTransport(limits=_limits(concurrency), trust_env=False)
    client = httpx.AsyncClient(base_url=url, transport=transport, trust_env=False)
    await _httpx(client, requests, concurrency)


async def httpx_sync_threads(url: str, requests: Sequence[Request], concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    with (
        httpx.Client(base_url=url, limits=_limits(concurrency), trust_env=False) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):

        def one(path: str, headers: dict[str, str]) -> None:
            _check(client.get(path, headers=headers).status_code, path)

        await asyncio.gather(*(loop.run_in_executor(pool, one, *r) for r in requests))


async def aiohttp_raw(url: str, requests: Sequence[Request], concurrency: int) -> None:
    import aiohttp

    semaphore = asyncio.Semaphore(concurrency)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def one(path: str, headers: dict[str, str]) -> None:
            async with semaphore, session.get(path, headers=headers) as response:
                await response.read()
                _check(response.status, path)

        await asyncio.gather(*(one(*request) for request in requests))


SENDERS: dict[str, Sender] = {
    "httpx-httpcore": httpx_httpcore,
    "httpx-http1": httpx_http1,
    **({"httpx-aiohttp": httpx_aiohttp} if importlib.util.find_spec("httpx_aiohttp") else {}),
    "httpx-sync-threads": httpx_sync_threads,
    "aiohttp-raw": aiohttp_raw,
}


def _check(status: int, path: str) -> None:
    if status != 200:
        raise RuntimeError(f"GET {path} answered {status}")


def measure(
    sender: Sender, url: str, requests: Sequence[Request], bound: int
) -> tuple[float, float]:
    """(client CPU ms per request, requests per second) of one round."""
    started, cpu_started = time.perf_counter(), time.process_time()
    asyncio.run(sender(url, requests, bound))
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return 1000 * cpu / len(requests), len(requests) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repositories", type=int, default=20)
    parser.add_argument("--tags", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    binary = registry_binary()
    if binary is None:
        print("docker-registry (CNCF Distribution) is not installed", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="retention-transports-") as workdir:
        server = RegistryServer(Path(workdir), binary=binary)
        seeded = seed(server.root, repositories=options.repositories, tags=options.tags)
        server.start()
        try:
            requests = cold_requests(seeded)
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in SENDERS}
            load = os.getloadavg()[0]
            for _ in range(options.rounds):
                for name, sender in SENDERS.items():
                    results[name].append(measure(sender, server.url, requests, options.concurrency))
        finally:
            server.stop()
    print(f"{len(requests)} requests per round, {options.rounds} rounds, load {load:.2f}")
    print(f"{'transport':<22}{'CPU ms/req':>12}{'req/s':>9}")
    for name, rounds in results.items():
        cpu = statistics.median(r[0] for r in rounds)
        rate = statistics.median(r[1] for r in rounds)
        print(f"{name:<22}{cpu:>12.3f}{rate:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
