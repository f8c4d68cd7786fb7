"""After GC, prove that the registry takes a push and gives it back whole; writes only there.

A registry that GC ran beside, with an in-memory blob-descriptor cache, keeps answering
"present" for blobs GC swept and accepts manifests over them (distribution#1803,
#4569): every later push that skips an "existing" layer then stores a broken image. Two
checks catch it, both through the real API and only in the probe repository (``gc.probe``,
which the scan never reads, so no rule can plan its manifests for deletion):

* a **canary**: before GC, a blob is uploaded and referenced by nothing, so GC sweeps it.
  Afterwards a HEAD of it must answer 404; a 200 means the registry's cache survived GC.
* a **push**: a random layer and config and a schema2 manifest under a unique tag, pulled
  back (manifest by tag, config and layer by digest, each checked against its sha256) and
  deleted by digest.

Any failure is a ``ProbeFailed`` with one line saying what went wrong.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import suppress
from dataclasses import dataclass

from retention.errors import ProbeFailed, RegistryError
from retention.registry import RegistryClient
from retention.registry import media_types as mt

LAYER_BYTES = 4096


@dataclass(frozen=True)
class Canary:
    """A blob nothing references, uploaded just before GC so that GC must sweep it."""

    repository: str
    digest: str


async def plant_canary(client: RegistryClient, repository: str) -> Canary:
    """Upload the canary; RegistryError if the registry refuses (the probe will say so)."""
    digest = await client.upload_blob(repository, b"retention canary " + os.urandom(16))
    return Canary(repository, digest)


async def check_canary(client: RegistryClient, canary: Canary) -> None:
    """The swept canary must be gone; a 200 is the stale blob cache itself."""
    try:
        present = await client.blob_exists(canary.repository, canary.digest)
    except RegistryError as exc:
        raise ProbeFailed(f"the canary blob could not be checked: {exc}") from exc
    if present:
        raise ProbeFailed(
            f"the registry still answers 200 for blob {canary.digest}, which GC swept: its "
            "blob-descriptor cache was not flushed, so it would accept pushes over missing "
            "layers; restart the registry after GC (gc.restart_command)"
        )


async def push_pull_delete(client: RegistryClient, repository: str, tag: str) -> str:
    """Push a small image, pull every part back and check it, delete it; returns its digest.

    The delete is attempted even when the pull failed, so a failed probe leaves nothing
    tagged behind (its blobs go at the next GC).
    """
    try:
        layer, config, manifest = await _push(client, repository, tag)
    except RegistryError as exc:
        raise ProbeFailed(f"pushing {repository}:{tag} failed: {exc}") from exc
    try:
        digest = await _pull(client, repository, tag, {layer.digest: layer.data} | config)
        if digest != manifest:
            raise ProbeFailed(f"{repository}:{tag} resolves to {digest}, pushed {manifest}")
    except RegistryError as exc:
        await _delete_quietly(client, repository, manifest)
        raise ProbeFailed(f"pulling {repository}:{tag} back failed: {exc}") from exc
    except ProbeFailed:
        await _delete_quietly(client, repository, manifest)
        raise
    try:
        await client.delete_manifest(repository, digest)
    except RegistryError as exc:
        raise ProbeFailed(f"deleting {repository}@{digest} failed: {exc}") from exc
    return digest


async def _delete_quietly(client: RegistryClient, repository: str, digest: str) -> None:
    """Best effort: the failure being reported matters more than this cleanup."""
    with suppress(RegistryError):
        await client.delete_manifest(repository, digest)


def probe_tag(run_id: str | None) -> str:
    """Unique per pass and attempt, so two probes never share a tag."""
    return f"probe-{run_id or 'run'}-{secrets.token_hex(4)}".lower()


@dataclass(frozen=True)
class _Blob:
    digest: str
    data: bytes


async def _push(
    client: RegistryClient, repository: str, tag: str
) -> tuple[_Blob, dict[str, bytes], str]:
    layer_data = os.urandom(LAYER_BYTES)
    layer = _Blob(await client.upload_blob(repository, layer_data), layer_data)
    config_data = _config(layer.digest)
    config_digest = await client.upload_blob(repository, config_data)
    body = _manifest(config_digest, len(config_data), layer)
    manifest = await client.put_manifest(repository, tag, body, mt.DOCKER_MANIFEST)
    return layer, {config_digest: config_data}, manifest


async def _pull(client: RegistryClient, repository: str, tag: str, blobs: dict[str, bytes]) -> str:
    """Fetch by tag, then every blob it names; ``client.blob`` checks each sha256."""
    fetched = await client.manifest(repository, tag)
    document = json.loads(fetched.body)
    named = [document["config"]["digest"], *(d["digest"] for d in document["layers"])]
    if sorted(named) != sorted(blobs):
        raise ProbeFailed(f"{repository}:{tag} came back naming other blobs: {named}")
    for digest in named:
        if await client.blob(repository, digest, max_bytes=LAYER_BYTES * 2) != blobs[digest]:
            raise ProbeFailed(f"blob {digest} of {repository}:{tag} came back different")
    return fetched.digest


def _config(layer_digest: str) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "config": {"Labels": {"org.opencontainers.image.title": "retention probe"}},
        }
    ).encode()


def _manifest(config_digest: str, config_size: int, layer: _Blob) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.DOCKER_MANIFEST,
            "config": {
                "mediaType": mt.DOCKER_CONFIG,
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [
                {"mediaType": mt.DOCKER_LAYER, "digest": layer.digest, "size": len(layer.data)}
            ],
        }
    ).encode()
