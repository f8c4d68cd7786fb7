"""Test support: pushers that write to a registry while a pass runs, and what "pullable" means.

Issue #11's promise is about clients that keep pushing while retention collects garbage:
every push either succeeds whole or gets the registry's read-only (or unavailable) answer,
and whatever is tagged afterwards pulls completely. ``Pusher`` speaks the registry API
itself (blobs, then the manifest), as ``docker push`` does on the wire; ``DockerPusher``
is ``docker push`` from a real engine (its HEAD-then-skip of layers the registry has, its
chunked uploads, its own retries).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from registry_server import public_tls, sha256_digest

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
        with httpx.Client(
            base_url=self.url, trust_env=False, verify=public_tls(), timeout=30
        ) as http:
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
    with httpx.Client(base_url=url, trust_env=False, verify=public_tls(), timeout=30) as http:
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


# What dockerd says when a push fails, by cause. A read-only registry (and the gate, which
# answers as one) sends a plain-text 405 that dockerd cannot parse as a registry error:
#   error parsing HTTP 405 response body: invalid character 'M' ... "Method not allowed\n"
# A stopped or restarting registry is a connection error, at the ping of /v2/ or mid-upload.
# A push whose upload was cut by a restart is retried by dockerd itself 5 s later (then 10,
# 15 ...): if that lands after the window, the layers it had uploaded before the window
# were referenced by nothing during GC and are gone, and the registry refuses the manifest:
#   manifest blob unknown: blob unknown to registry
# Never a broken image (the registry checks, its cache flushed by the restart); pushed
# again, the image goes up whole.
READ_ONLY_SIGNS = ("405", "Method not allowed")
UNAVAILABLE_SIGNS = ("connection refused", "connection reset by peer", "EOF", "broken pipe")
SWEPT_SIGN = "blob unknown to registry"
REFUSALS = frozenset({"read-only", "unavailable", "swept"})


def push_outcome(error: str) -> str:
    """'read-only', 'unavailable', 'swept', or the error itself (which no test expects)."""
    if all(sign in error for sign in READ_ONLY_SIGNS):
        return "read-only"
    if any(sign in error for sign in UNAVAILABLE_SIGNS):
        return "unavailable"
    if SWEPT_SIGN in error:
        return "swept"
    return error


@dataclass
class DockerPusher:
    """``docker push`` of local images in turn, each under a new tag, until stopped.

    The engine's push API is what the ``docker`` CLI calls, so this is ``docker push`` as
    the registry sees it. Each image goes to each of ``repositories`` in turn: the second
    push of an image is a cross-repository mount (a POST with ``mount=``), the first
    uploads its layers. A push refused by the window is tried again (same image, same
    tag) until it is stored or the pusher stops; ``retried`` lists the ``repository:tag``
    stored that way. ``pushed`` maps each stored ``repository:tag`` to its image id (the
    config's digest).

    With ``window_closed``, ``run`` pushes the first image once, starting as soon as that
    says the window is closed: refused for certain. A loop may never start a push in the
    window (one of its pushes can wait it out in dockerd's retry).
    """

    client: Any  # docker.DockerClient of the test engine
    registry: str  # host:port as docker names it, e.g. 127.0.0.1:5000
    images: list[str]
    repositories: tuple[str, ...] = ("pushed",)
    outcomes: list[tuple[str, str]] = field(default_factory=list)
    pushed: dict[str, str] = field(default_factory=dict)
    retried: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    progress: list[dict[str, Any]] = field(default_factory=list)  # of the push under way
    mounted: int = 0  # layers dockerd reported "Mounted from" another repository
    window_closed: Callable[[], bool] | None = None

    def run(self) -> None:
        if self.window_closed is not None:
            self.push_in_the_window(self.window_closed, self.images[0])
            return
        number = 0
        while not self.stop.is_set():
            turn, place = divmod(number, len(self.repositories))
            image = self.images[turn % len(self.images)]
            self.push_until_stored(image, self.repositories[place], f"docker-{number}")
            number += 1

    def push_in_the_window(self, window_closed: Callable[[], bool], image: str) -> None:
        """Once ``window_closed()`` says so, push ``image`` until it is stored."""
        while not window_closed():
            if self.stop.is_set():
                return
            time.sleep(0.02)
        self.push_until_stored(image, self.repositories[0], "in-the-window")

    def push_until_stored(self, image: str, repository: str, tag: str) -> None:
        refused = False
        while not self.stop.is_set():
            outcome = self.push(image, repository, tag)
            self.outcomes.append((f"{repository}:{tag}", outcome))
            if outcome == "ok" and refused:
                self.retried.append(f"{repository}:{tag}")
            if outcome not in REFUSALS:
                return
            refused = True
            time.sleep(0.2)

    def push(self, image: str, repository: str, tag: str) -> str:
        """'ok' once the registry stored it, else what ``push_outcome`` makes of the error."""
        reference = f"{self.registry}/{repository}"
        self.client.api.tag(image, reference, tag)
        self.progress = []
        for message in self.client.api.push(reference, tag=tag, stream=True, decode=True):
            self.progress.append(message)
        errors = [str(message["error"]) for message in self.progress if "error" in message]
        statuses = [str(message.get("status", "")) for message in self.progress]
        self.mounted += sum(status.startswith("Mounted from") for status in statuses)
        if errors:
            return push_outcome(errors[-1])
        self.pushed[f"{repository}:{tag}"] = image
        return "ok"


def unpullable_tags(url: str) -> list[str]:
    """Every ``repository:tag`` in the registry that does not pull whole."""
    with httpx.Client(base_url=url, trust_env=False, verify=public_tls(), timeout=30) as http:
        repositories = http.get("/v2/_catalog?n=1000").json()["repositories"]
        listed = {name: http.get(f"/v2/{name}/tags/list").json() for name in repositories}
    tags = [(name, tag) for name, answer in listed.items() for tag in answer.get("tags") or []]
    return [f"{name}:{tag}" for name, tag in tags if not fully_pullable(url, name, tag)]
