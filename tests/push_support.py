"""Test support: pushers that write to a registry while a pass runs, and what "pullable" means.

Issue #11's promise is about clients that keep pushing while retention collects garbage:
every push either succeeds whole or gets the registry's read-only (or unavailable) answer,
and whatever is tagged afterwards pulls completely. ``Pusher`` speaks the registry API
itself (blobs, then the manifest), as ``docker push`` does on the wire.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field

import httpx
from registry_server import sha256_digest

from retention.registry import media_types


@dataclass
class Pusher:
    """Pushes images over the real API in a loop (blobs, then manifest) until stopped."""

    url: str
    layers: int = 3
    layer_bytes: int = 1024 * 1024
    outcomes: list[tuple[str, str]] = field(default_factory=list)
    pushed: dict[str, dict[str, bytes]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(base_url=self.url, trust_env=False, timeout=30) as http:
            number = 0
            while not self.stop.is_set():
                tag = f"load-{number}"
                number += 1
                self.outcomes.append((tag, self.push(http, tag)))

    def push(self, http: httpx.Client, tag: str) -> str:
        """'ok', 'read-only' (405), 'unavailable' (restarting) or the unexpected answer."""
        blobs = {}
        try:
            for data in [os.urandom(self.layer_bytes) for _ in range(self.layers)]:
                blobs[self.upload(http, data)] = data
            config = json.dumps({"rootfs": {"diff_ids": list(blobs)}}).encode()
            config_digest = self.upload(http, config)
            answer = http.put(
                f"/v2/load/manifests/{tag}",
                content=manifest_for(config_digest, config, blobs),
                headers={"Content-Type": media_types.DOCKER_MANIFEST},
            )
            expect(answer, 201)
        except httpx.TransportError:
            return "unavailable"
        except Refused as refused:
            return refused.outcome
        self.pushed[tag] = {**blobs, config_digest: config}
        return "ok"

    def upload(self, http: httpx.Client, data: bytes) -> str:
        digest = sha256_digest(data)
        started = http.post("/v2/load/blobs/uploads/")
        expect(started, 202)
        target = started.url.join(started.headers["location"]).copy_merge_params({"digest": digest})
        expect(http.put(target, content=data), 201)
        return digest


class Refused(Exception):
    def __init__(self, outcome: str) -> None:
        self.outcome = outcome


def expect(answer: httpx.Response, status: int) -> None:
    if answer.status_code == status:
        return
    if answer.status_code == 405:
        raise Refused("read-only")
    raise Refused(f"{answer.request.method} {answer.status_code}: {answer.text[:200]}")


def manifest_for(config_digest: str, config: bytes, layers: dict[str, bytes]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": media_types.DOCKER_MANIFEST,
            "config": {
                "mediaType": media_types.DOCKER_CONFIG,
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {"mediaType": media_types.DOCKER_LAYER, "digest": d, "size": len(b)}
                for d, b in layers.items()
            ],
        }
    ).encode()


def fully_pullable(url: str, repository: str, tag: str) -> bool:
    """Manifest by tag, then every blob by GET with the right sha256."""
    with httpx.Client(base_url=url, trust_env=False, timeout=30) as http:
        served = http.get(
            f"/v2/{repository}/manifests/{tag}",
            headers={"Accept": media_types.MANIFEST_ACCEPT},
        )
        if served.status_code != 200:
            return False
        document = served.json()
        for blob in [document["config"], *document["layers"]]:
            answer = http.get(f"/v2/{repository}/blobs/{blob['digest']}")
            if answer.status_code != 200 or sha256_digest(answer.content) != blob["digest"]:
                return False
    return True
