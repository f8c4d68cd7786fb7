"""``retention demo``: a first look with nothing to set up but Distribution's binary.

Starts a throwaway registry on a free loopback port with its own storage, pushes a small
but realistic set of images (release tags, CI build tags, ``latest``/``stable`` pointing at
builds, multi-arch indexes, an image with no created time), writes a policy for it, and runs
the same pass an operator runs: plan, delete, garbage-collect, ``du`` before and after.
Everything lives in a temporary directory that is removed afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from retention.core.policy import RegistrySettings
from retention.errors import DemoError, RegistryError
from retention.registry import RegistryClient
from retention.registry import media_types as mt

BINARY_NAMES = ("docker-registry", "registry")
LAYER_BYTES = 256 * 1024

POLICY = """\
# The demo's policy: what `retention demo` applies to its throwaway registry.
registry:
  url: {url}
rules:
  - name: releases                 # semantic-version tags: keep the 3 highest versions
    repositories: 'app/.*'
    match: 'v\\d+\\.\\d+\\.\\d+'
    order_by: semver
    keep_last: 3
  - name: ci-builds                # CI tags: keep 10, delete the rest once older than 14 days
    match: 'build-\\d+'
    keep_last: 10
    max_age: 14d
    order_by: created              # the demo pushed every tag a second ago: by push time
    age_by: created                # nothing would be old; its created times tell the story
protect: ['latest', 'stable']
safety:
  grace_period: 0s                 # the demo pushed every tag a second ago; keep 1h in production
gc:
  mode: command
  command: [{binary}, garbage-collect, {config}]
  writes: none                     # only this demo knows the throwaway registry
  blob_cache: none                 # its config has no blob-descriptor cache
storage:
  path: {storage}
state_dir: {state}
"""


@dataclass(frozen=True)
class DemoRegistry:
    url: str
    binary: str
    config: Path
    storage: Path


def find_binary() -> str:
    for name in BINARY_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise DemoError(
        "the demo needs CNCF Distribution's binary: apt-get install docker-registry "
        "(or put `registry` on PATH)"
    )


@contextmanager
def throwaway_registry(workdir: Path) -> Iterator[DemoRegistry]:
    """A registry with deletes enabled on a free loopback port, stopped on exit."""
    binary = find_binary()
    port = _free_port()
    storage = workdir / "storage"
    config = workdir / "registry.yml"
    config.write_text(_registry_config(storage, port))
    log = (workdir / "registry.log").open("w")
    process = subprocess.Popen([binary, "serve", str(config)], stdout=log, stderr=log)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url, process)
        yield DemoRegistry(url=url, binary=binary, config=config, storage=storage)
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def write_policy(workdir: Path, registry: DemoRegistry) -> Path:
    path = workdir / "policies.yml"
    path.write_text(
        POLICY.format(
            url=registry.url,
            binary=registry.binary,
            config=registry.config,
            storage=registry.storage,
            state=workdir / "state",
        )
    )
    return path


@contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="retention-demo-") as directory:
        yield Path(directory)


# -- seeding --------------------------------------------------------------------------------


async def seed(url: str, now: datetime) -> int:
    """Push the demo images; returns how many tags were pushed."""
    pushed = 0
    async with RegistryClient(RegistrySettings(url=url)) as client:
        pusher = _Pusher(client, now)
        pushed += await pusher.releases("app/web", 8)
        pushed += await pusher.builds("app/web", 30)
        pushed += await pusher.multi_arch("app/api", 5)
        pushed += await pusher.undated("tools/base")
    return pushed


class _Pusher:
    def __init__(self, client: RegistryClient, now: datetime) -> None:
        self.client = client
        self.now = now

    async def releases(self, repository: str, count: int) -> int:
        digests = [
            await self.image(repository, [f"v1.{i}.0"], age_days=20 * (count - i))
            for i in range(count)
        ]
        await self.tag(repository, "stable", digests[-1])
        return count + 1

    async def builds(self, repository: str, count: int) -> int:
        digests = [
            await self.image(repository, [f"build-{100 + i}"], age_days=count - i)
            for i in range(count)
        ]
        await self.tag(repository, "latest", digests[-1])
        return count + 1

    async def multi_arch(self, repository: str, count: int) -> int:
        for i in range(count):
            age = 30 * (count - i)
            children = [
                await self.image(repository, [], age_days=age, arch=arch)
                for arch in ("amd64", "arm64")
            ]
            await self.index(repository, f"v2.{i}.0", children)
        return count

    async def undated(self, repository: str) -> int:
        await self.image(repository, ["bookworm"], age_days=None)
        return 1

    async def image(
        self, repository: str, tags: list[str], age_days: int | None, arch: str = "amd64"
    ) -> str:
        created = None if age_days is None else self.now - timedelta(days=age_days)
        config = _config(created, arch, f"{repository}{tags}{age_days}")
        layer = _layer(f"{repository}{tags}{age_days}{arch}")
        config_digest = await self.client.upload_blob(repository, config)
        layer_digest = await self.client.upload_blob(repository, layer)
        body = _json(
            {
                "schemaVersion": 2,
                "mediaType": mt.OCI_MANIFEST,
                "config": _descriptor(mt.OCI_CONFIG, config_digest, len(config)),
                "layers": [_descriptor(mt.OCI_LAYER, layer_digest, len(layer))],
            }
        )
        return await self.put(repository, tags, body, mt.OCI_MANIFEST)

    async def index(self, repository: str, tag: str, children: list[str]) -> str:
        manifests = []
        for digest in children:
            fetched = await self.client.manifest(repository, digest)
            entry = _descriptor(fetched.media_type, digest, len(fetched.body))
            manifests.append({**entry, "platform": {"os": "linux"}})
        body = _json({"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": manifests})
        return await self.put(repository, [tag], body, mt.OCI_INDEX)

    async def tag(self, repository: str, tag: str, digest: str) -> None:
        fetched = await self.client.manifest(repository, digest)
        await self.client.put_manifest(repository, tag, fetched.body, fetched.media_type)

    async def put(self, repository: str, tags: list[str], body: bytes, media: str) -> str:
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        for reference in tags or [digest]:
            await self.client.put_manifest(repository, reference, body, media)
        return digest


def _config(created: datetime | None, arch: str, salt: str) -> bytes:
    data: dict[str, object] = {"architecture": arch, "os": "linux", "rootfs": {"type": "layers"}}
    if created is not None:
        data["created"] = created.strftime("%Y-%m-%dT%H:%M:%SZ")
    data["config"] = {"Labels": {"demo": salt}}
    return _json(data)


def _layer(salt: str) -> bytes:
    """Incompressible-looking bytes unique to ``salt``, so ``du`` sees real space freed."""
    seed = hashlib.sha256(salt.encode()).digest()
    blocks = LAYER_BYTES // len(seed)
    return b"".join(hashlib.sha256(seed + i.to_bytes(4, "big")).digest() for i in range(blocks))


def _descriptor(media_type: str, digest: str, size: int) -> dict[str, object]:
    return {"mediaType": media_type, "digest": digest, "size": size}


def _json(data: object) -> bytes:
    return json.dumps(data, sort_keys=True).encode()


# -- the throwaway registry process ---------------------------------------------------------


def _registry_config(storage: Path, port: int) -> str:
    """JSON is YAML: deletes enabled, no blob-descriptor cache (GC runs beside it)."""
    config = {
        "version": 0.1,
        "log": {"level": "error", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            "delete": {"enabled": True},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": os.urandom(16).hex()},
    }
    return json.dumps(config, indent=2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    try:
        asyncio.run(_ping_until_up(url, process, timeout_s))
    except RegistryError:
        if process.poll() is not None:
            raise DemoError(f"the demo registry exited with {process.returncode}") from None
        raise DemoError(
            f"the demo registry did not answer on {url} within {timeout_s:.0f}s"
        ) from None


async def _ping_until_up(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    settings = RegistrySettings(url=url, retries=0, timeout=timedelta(seconds=1))
    async with RegistryClient(settings) as client:
        await client.wait_until_up(timeout_s, alive=lambda: process.poll() is None)
