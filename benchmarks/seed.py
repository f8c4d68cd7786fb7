"""Fill a benchmark registry's storage: R repositories x T tags, every tag its own manifest.

Each tag gets a unique config blob (so a unique manifest digest per repository, with its own
``created`` time) and shares two tiny layers with every other tag.

Why write the storage instead of pushing through the API: on the 2-core machine this was
built on, Distribution 2.8 answers ~250-450 requests/s, and a push needs three requests per
tag (POST and PUT of the config, PUT of the manifest), so the default 10,000 tags took two
to three minutes to push, more than everything that is measured. The filesystem driver's
layout (``docker/registry/v2/{blobs,repositories}``, unchanged since 2.0) is written here
in a few seconds, before the registry starts; what the plan then reads is served by the
real registry exactly as if it had been pushed. ``plan_benchmark`` checks that every seeded
tag comes back with its digest and created time, so a layout mistake cannot go unnoticed.

This is deliberately separate from the code under test, like ``tests/registry_server.py``'s
``Seeder``: a bug in ``retention``'s client cannot hide in the data it then reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
LAYERS = (b"benchmark base layer", b"benchmark application layer")
NEWEST = datetime(2024, 6, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SeededTag:
    """One tag as seeded: what a plan must HEAD, GET and read the created time from."""

    repository: str
    tag: str
    manifest: str
    config: str
    created: datetime


def repository_name(index: int) -> str:
    return f"bench/app-{index:04d}"


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def seed(root: Path, *, repositories: int, tags: int) -> list[SeededTag]:
    """Write ``repositories`` x ``tags`` images under ``root`` (the registry's rootdirectory)."""
    storage = _Storage(root / "docker/registry/v2")
    layers = [storage.blob(data, DOCKER_LAYER) for data in LAYERS]
    seeded: list[SeededTag] = []
    for index in range(repositories):
        name = repository_name(index)
        for layer in layers:
            storage.link_layer(name, layer["digest"])
        seeded += [storage.image(name, number, layers) for number in range(tags)]
    return seeded


class _Storage:
    """Distribution's filesystem layout: content-addressed blobs, per-repository links."""

    def __init__(self, v2: Path) -> None:
        self._v2 = v2

    def image(self, name: str, number: int, layers: list[dict[str, Any]]) -> SeededTag:
        """A unique config (its own created time and label) and a manifest under one tag."""
        tag = f"build-{number:04d}"
        created = NEWEST - timedelta(hours=number)
        config = self.blob(_config(name, tag, created), DOCKER_CONFIG)
        self.link_layer(name, config["digest"])
        body = _dumps(
            {
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": config,
                "layers": layers,
            }
        )
        manifest = self.blob(body, DOCKER_MANIFEST)["digest"]
        self.link_manifest(name, tag, manifest, pushed=created)
        return SeededTag(name, tag, manifest, config["digest"], created)

    def blob(self, data: bytes, media_type: str) -> dict[str, Any]:
        """Store ``data`` once by its digest; returns its descriptor."""
        digest = digest_of(data)
        hex_digest = digest.removeprefix("sha256:")
        _write(self._v2 / "blobs/sha256" / hex_digest[:2] / hex_digest / "data", data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def link_layer(self, name: str, digest: str) -> None:
        """Make a blob readable in ``name`` (what a push or a mount records)."""
        self._link(self._repository(name) / "_layers", digest)

    def link_manifest(self, name: str, tag: str, digest: str, *, pushed: datetime) -> None:
        """The revision (GET by digest), the tag's current link and its index (for deletes).

        The current link's mtime is when the tag was pushed (what ``scan: storage`` reads as
        the push time): an image pushed when it was built, as from CI. Left at the seeding
        time, every tag would be inside the grace period and a storage plan would delete
        nothing, while an API plan of the same tags deletes by their created time.
        """
        manifests = self._repository(name) / "_manifests"
        self._link(manifests / "revisions", digest)
        current = manifests / "tags" / tag / "current/link"
        _write(current, digest.encode())
        os.utime(current, (pushed.timestamp(), pushed.timestamp()))
        self._link(manifests / "tags" / tag / "index", digest)

    def _repository(self, name: str) -> Path:
        return self._v2 / "repositories" / name

    def _link(self, directory: Path, digest: str) -> None:
        algorithm, hex_digest = digest.split(":")
        _write(directory / algorithm / hex_digest / "link", digest.encode())


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _config(name: str, tag: str, created: datetime) -> bytes:
    """An image config; the label makes it, and so the manifest, unique per repository."""
    return _dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "config": {"Labels": {"benchmark.tag": f"{name}:{tag}"}},
            "rootfs": {"type": "layers", "diff_ids": [digest_of(data) for data in LAYERS]},
        }
    )


def _dumps(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
