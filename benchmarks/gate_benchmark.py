"""How much the write gate costs a client: the same reads through the gate and direct.

    python benchmarks/gate_benchmark.py [--rounds 3 --requests 2000 --concurrency 8 --json]
    python benchmarks/gate_benchmark.py --quick          # seconds; what the test runs

Starts a real ``docker-registry`` on a free 127.0.0.1 port (storage on /dev/shm when there
is one) and a real ``retention serve`` whose ``gate:`` forwards to it, pushes a 1 MB blob
and a manifest, and measures with ApacheBench (``ab``, C, keep-alive), alternating direct
and gated runs so that a drifting machine load hits both alike:

* pull throughput: ``GET`` of the 1 MB blob (MB/s);
* request rate: ``HEAD`` of the manifest by tag, with the four manifest types in Accept;
* pull throughput of a 32 MB blob, which the gate splices (1/32 of the requests; no goal).

Each figure is the median over ``--rounds``; the ratios gated/direct are compared with the
goals (>= 0.9 for 1 MB blobs, >= 0.8 for HEADs) and printed as PASS or FAIL (the exit
status stays 0: this measures, it does not gate). ``ab`` sends HTTP/1.0 with keep-alive;
every response carries a Content-Length, so connections are reused on both paths. The same
``ab`` with the same concurrency loads both paths; its own CPU per request on the direct
runs is printed, to show it is not what limits the direct figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

_HERE = Path(__file__).resolve().parent
sys.path[1:1] = [str(_HERE.parent), str(_HERE.parent / "tests")]

from registry_server import RegistryServer, Seeder, free_port, registry_binary  # noqa: E402

from retention.registry import media_types  # noqa: E402

BLOB_BYTES = 1024 * 1024
# Layers are often tens of MB; from 2 MiB on the gate splices bodies instead of copying them.
BIG_BLOB_BYTES = 32 * 1024 * 1024
BLOB_MIN_RATIO = 0.9
HEAD_MIN_RATIO = 0.8
READY_TIMEOUT_S = 20.0
_RATE = re.compile(r"Requests per second:\s+([\d.]+)")
_FAILED = re.compile(r"Failed requests:\s+(\d+)")
_NON_2XX = re.compile(r"Non-2xx responses:\s+(\d+)")


@dataclass(frozen=True)
class Run:
    """One ``ab`` run: requests per second, how many answers were not right, CPU seconds
    the registry, the gate's process and ``ab`` itself spent meanwhile."""

    rate: float
    failed: int
    registry_cpu_s: float = 0.0
    gate_cpu_s: float = 0.0
    client_cpu_s: float = 0.0


@dataclass(frozen=True)
class Comparison:
    name: str
    unit: str
    direct: float
    gated: float
    ratio: float
    goal: float | None  # None: measured for information, no goal set
    passed: bool
    failed_requests: int
    registry_cpu_ms_per_request: float
    gate_cpu_ms_per_request: float
    # ab's own CPU on the direct runs: a fair comparison needs the load generator far
    # from a core's worth of work when the registry alone answers.
    client_cpu_ms_per_request: float


def main() -> int:
    options = _arguments()
    binary = registry_binary()
    if binary is None or shutil.which("ab") is None:
        print("needs docker-registry and ab (apache2-utils)", file=sys.stderr)
        return 2
    if options.quick:
        options.rounds, options.requests = 1, 200
    results = run(binary, options.rounds, options.requests, options.concurrency)
    print(json.dumps(results, indent=2) if options.json else render(results))
    return 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="direct/gated pairs per figure")
    parser.add_argument("--requests", type=int, default=2000, help="requests per ab run")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="1 round of 200: a smoke test")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def run(binary: str, rounds: int, requests: int, concurrency: int) -> dict[str, Any]:
    with _registry(binary) as (registry, workdir), _gate(registry, workdir) as (gate_url, pid):
        pids = (registry.pid, pid)
        blob = _seed(registry.url)
        blob_path = f"/v2/bench/blobs/{blob}"
        manifest_path = "/v2/bench/manifests/v1"
        accept = f"Accept: {media_types.MANIFEST_ACCEPT}"
        blobs = _compare(
            "1 MB blob GET", "MB/s", (registry.url, gate_url), blob_path, [], rounds, requests,
            concurrency, BLOB_MIN_RATIO, pids, scale=BLOB_BYTES / 1e6,
        )  # fmt: skip
        heads = _compare(
            "manifest HEAD", "req/s", (registry.url, gate_url), manifest_path, ["-i", "-H", accept],
            rounds, requests, concurrency, HEAD_MIN_RATIO, pids,
        )  # fmt: skip
        big = Seeder(registry.url)
        try:
            big_blob, _ = big.blob("bench", os.urandom(BIG_BLOB_BYTES))
        finally:
            big.close()
        bigs = _compare(
            "32 MB blob GET", "MB/s", (registry.url, gate_url), f"/v2/bench/blobs/{big_blob}",
            [], rounds, max(8, requests // 32), concurrency, None, pids,
            scale=BIG_BLOB_BYTES / 1e6,
        )  # fmt: skip
    return {
        "machine": {"cpus": os.cpu_count(), "load": os.getloadavg()[0]},
        "settings": {"rounds": rounds, "requests": requests, "concurrency": concurrency},
        "comparisons": [asdict(blobs), asdict(heads), asdict(bigs)],
    }


def _compare(
    name: str,
    unit: str,
    urls: tuple[str, str],
    path: str,
    ab_options: list[str],
    rounds: int,
    requests: int,
    concurrency: int,
    goal: float | None,
    pids: tuple[int, int],
    scale: float = 1.0,
) -> Comparison:
    """Alternate direct and gated runs; medians, their ratio, and any failed request."""
    direct: list[Run] = []
    gated: list[Run] = []
    for _ in range(rounds):
        direct.append(_ab(urls[0] + path, ab_options, requests, concurrency, pids))
        gated.append(_ab(urls[1] + path, ab_options, requests, concurrency, pids))
    direct_rate = statistics.median(r.rate for r in direct) * scale
    gated_rate = statistics.median(r.rate for r in gated) * scale
    ratio = gated_rate / direct_rate
    failed = sum(r.failed for r in direct + gated)
    per_request = 1000 / (rounds * requests)
    return Comparison(
        name,
        unit,
        direct_rate,
        gated_rate,
        ratio,
        goal,
        (goal is None or ratio >= goal) and not failed,
        failed,
        registry_cpu_ms_per_request=sum(r.registry_cpu_s for r in direct) * per_request,
        gate_cpu_ms_per_request=sum(r.gate_cpu_s for r in gated) * per_request,
        client_cpu_ms_per_request=sum(r.client_cpu_s for r in direct) * per_request,
    )


def _ab(
    url: str, options: list[str], requests: int, concurrency: int, pids: tuple[int, int]
) -> Run:
    command = ["ab", "-q", "-k", "-n", str(requests), "-c", str(concurrency), *options, url]
    before = [_cpu_seconds(pid) for pid in pids]
    children = _children_cpu_seconds()
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    spent = [_cpu_seconds(pid) - start for pid, start in zip(pids, before, strict=True)]
    spent.append(_children_cpu_seconds() - children)
    rate = _RATE.search(done.stdout)
    if done.returncode != 0 or rate is None:
        raise RuntimeError(f"ab failed ({done.returncode}): {done.stderr or done.stdout}")
    counts = (_FAILED.search(done.stdout), _NON_2XX.search(done.stdout))
    failed = sum(int(match.group(1)) for match in counts if match)
    return Run(float(rate.group(1)), failed, *spent)


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    """User plus system CPU of this process's finished children (the ``ab`` runs) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _seed(url: str) -> str:
    """A 1 MB layer and a manifest over it, tagged ``bench:v1``; returns the layer's digest."""
    seeder = Seeder(url)
    try:
        layer, size = seeder.blob("bench", os.urandom(BLOB_BYTES))
        config, config_size = seeder.blob("bench", b'{"architecture":"amd64","os":"linux"}')
        manifest = {
            "schemaVersion": 2,
            "mediaType": media_types.DOCKER_MANIFEST,
            "config": {
                "mediaType": media_types.DOCKER_CONFIG,
                "digest": config,
                "size": config_size,
            },
            "layers": [{"mediaType": media_types.DOCKER_LAYER, "digest": layer, "size": size}],
        }
        body = json.dumps(manifest).encode()
        seeder.manifest("bench", ["v1"], body, media_types.DOCKER_MANIFEST)
        return layer
    finally:
        seeder.close()


@contextmanager
def _registry(binary: str) -> Iterator[tuple[RegistryServer, Path]]:
    shm = Path("/dev/shm")
    parent = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    workdir = Path(tempfile.mkdtemp(prefix="retention-gate-benchmark-", dir=parent))
    server = RegistryServer(workdir / "registry", binary=binary)
    try:
        server.start()
        yield server, workdir
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def _gate(registry: RegistryServer, workdir: Path) -> Iterator[tuple[str, int]]:
    """``retention serve`` with a gate in front of ``registry``: its URL and pid while it runs."""
    port = free_port()
    policy = workdir / "policy.yml"
    policy.write_text(
        json.dumps(
            {
                "registry": {"url": registry.url},
                "schedule": {"interval": "24h"},
                "server": {"listen": f"127.0.0.1:{free_port(port)}"},
                "gate": {"listen": f"127.0.0.1:{port}", "upstream": registry.url},
                "state_dir": str(workdir / "state"),
            }
        )
    )
    command = [sys.executable, "-m", "retention", "--log-format", "json", "serve"]
    command += ["-c", str(policy)]
    environment = {**os.environ, "PYTHONPATH": str(_HERE.parent)}
    with (workdir / "serve.log").open("wb") as log:
        daemon = subprocess.Popen(command, stdout=log, stderr=log, env=environment)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, daemon)
        yield url, daemon.pid
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


def _wait_until_up(url: str, daemon: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"retention serve exited {daemon.returncode}")
        try:
            httpx.get(f"{url}/v2/", timeout=1, trust_env=False)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"the gate did not answer within {READY_TIMEOUT_S}s")


def render(results: dict[str, Any]) -> str:
    machine, settings = results["machine"], results["settings"]
    lines = [
        f"{machine['cpus']} CPUs, load {machine['load']:.2f}; {settings['rounds']} rounds of "
        f"{settings['requests']} requests, concurrency {settings['concurrency']} (ab -k)",
        f"{'':16} {'direct':>10} {'gate':>10} {'ratio':>6}  goal            CPU ms/request",
    ]
    for item in results["comparisons"]:
        verdict = "PASS" if item["passed"] else "FAIL"
        goal = f">= {item['goal']}" if item["goal"] is not None else "(no goal)"
        lines.append(
            f"{item['name']:16} {item['direct']:>10.1f} {item['gated']:>10.1f} "
            f"{item['ratio']:>6.2f}  {goal:9} {verdict}  "
            f"registry {item['registry_cpu_ms_per_request']:.3f}, "
            f"gate {item['gate_cpu_ms_per_request']:.3f}, "
            f"ab {item['client_cpu_ms_per_request']:.3f}  "
            f"({item['unit']}; {item['failed_requests']} failed)"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
