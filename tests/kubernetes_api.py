"""A small Kubernetes API stand-in on 127.0.0.1: the list endpoints ``in_use: kubernetes`` calls.

There is no cluster on these machines, so the real ``kubernetes`` client talks to this
server instead. Its answers are shaped like the API's documented list responses (PodList,
DeploymentList, ...: ``apiVersion``, ``kind``, ``metadata.resourceVersion`` and
``metadata.continue``, ``items``), and the objects carry the fields the client's models
require. Lists are paged: at most ``page_size`` items per answer (fewer than the client's
``limit``, as the API is allowed to return), with an opaque ``continue`` token that the
next request must send back. Every request is recorded, and a Bearer token is required.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "test-token"

# path -> (apiVersion, kind of the list)
ENDPOINTS = {
    "/api/v1/pods": ("v1", "PodList"),
    "/apis/apps/v1/deployments": ("apps/v1", "DeploymentList"),
    "/apis/apps/v1/replicasets": ("apps/v1", "ReplicaSetList"),
    "/apis/apps/v1/statefulsets": ("apps/v1", "StatefulSetList"),
    "/apis/apps/v1/daemonsets": ("apps/v1", "DaemonSetList"),
    "/apis/batch/v1/jobs": ("batch/v1", "JobList"),
    "/apis/batch/v1/cronjobs": ("batch/v1", "CronJobList"),
}


@dataclass
class Cluster:
    """What the fake cluster holds, per list path; ``failures`` answer a path with a status."""

    items: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)
    page_size: int = 2
    requests: list[tuple[str, dict[str, list[str]]]] = field(default_factory=list)

    def add(self, path: str, *objects: dict[str, Any]) -> None:
        self.items.setdefault(path, []).extend(objects)


def pod(
    namespace: str,
    name: str,
    images: Sequence[str],
    *,
    init: Sequence[str] = (),
    ephemeral: Sequence[str] = (),
    image_ids: Sequence[str] = (),
) -> dict[str, Any]:
    """A Pod as the API returns it, with container statuses naming the digests running."""
    return {
        "metadata": _metadata(namespace, name),
        "spec": {
            "containers": _containers("app", images),
            "initContainers": _containers("init", init),
            "ephemeralContainers": [
                {"name": f"debug-{i}", "image": image, "targetContainerName": "app-0"}
                for i, image in enumerate(ephemeral)
            ],
        },
        "status": {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": f"app-{i}",
                    "image": images[i] if i < len(images) else "",
                    "imageID": image_id,
                    "ready": True,
                    "restartCount": 0,
                    "started": True,
                    "state": {"running": {"startedAt": "2026-11-27T10:00:00Z"}},
                }
                for i, image_id in enumerate(image_ids)
            ],
        },
    }


def workload(kind: str, namespace: str, name: str, images: Sequence[str]) -> dict[str, Any]:
    """A Deployment, ReplicaSet, StatefulSet, DaemonSet, Job or CronJob with a pod template."""
    template: dict[str, Any] = {
        "metadata": {"labels": {"app": name}},
        "spec": {"containers": _containers("app", images), "restartPolicy": "Always"},
    }
    selector = {"matchLabels": {"app": name}}
    specs: dict[str, dict[str, Any]] = {
        "Deployment": {"replicas": 0, "selector": selector, "template": template},
        "ReplicaSet": {"replicas": 0, "selector": selector, "template": template},
        "StatefulSet": {
            "replicas": 0,
            "selector": selector,
            "serviceName": name,
            "template": template,
        },
        "DaemonSet": {"selector": selector, "template": template},
        "Job": {"template": {**template, "spec": {**template["spec"], "restartPolicy": "Never"}}},
        "CronJob": {
            "schedule": "0 3 * * *",
            "jobTemplate": {
                "spec": {
                    "template": {**template, "spec": {**template["spec"], "restartPolicy": "Never"}}
                }
            },
        },
    }
    return {"metadata": _metadata(namespace, name), "spec": specs[kind]}


def _metadata(namespace: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "uid": f"{namespace}-{name}",
        "resourceVersion": "1000",
        "creationTimestamp": "2026-11-01T00:00:00Z",
    }


def _containers(prefix: str, images: Sequence[str]) -> list[dict[str, Any]]:
    return [{"name": f"{prefix}-{i}", "image": image} for i, image in enumerate(images)]


class _Handler(BaseHTTPRequestHandler):
    cluster: Cluster

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        self.cluster.requests.append((parts.path, query))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._status(401, "Unauthorized")
            return
        if parts.path in self.cluster.failures:
            self._status(self.cluster.failures[parts.path], "Forbidden")
            return
        if parts.path not in ENDPOINTS:
            self._status(404, "NotFound")
            return
        self._list(parts.path, query)

    def _list(self, path: str, query: Mapping[str, list[str]]) -> None:
        version, kind = ENDPOINTS[path]
        items = self.cluster.items.get(path, [])
        start = int(query.get("continue", ["0"])[0].removeprefix("page-"))
        limit = int(query.get("limit", [str(len(items) or 1)])[0])
        end = start + min(limit, self.cluster.page_size)
        metadata: dict[str, Any] = {"resourceVersion": "1000"}
        if end < len(items):
            metadata["continue"] = f"page-{end}"
        item_kind = kind.removesuffix("List")
        page = [{"apiVersion": version, "kind": item_kind, **i} for i in items[start:end]]
        self._json(200, {"apiVersion": version, "kind": kind, "metadata": metadata, "items": page})

    def _status(self, code: int, reason: str) -> None:
        self._json(
            code,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"{reason.lower()}",
                "reason": reason,
                "code": code,
            },
        )

    def _json(self, code: int, document: Mapping[str, Any]) -> None:
        body = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: pytest shows the recorded requests when a test fails."""


@contextmanager
def kubernetes_api(cluster: Cluster) -> Iterator[str]:
    """Serve ``cluster`` on a free loopback port; yields the base URL."""
    handler = type("Handler", (_Handler,), {"cluster": cluster})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    """A kubeconfig (JSON is YAML) as ``kubectl config`` writes them: the current context
    ``test`` with the right token, and a context ``other`` whose user the API refuses."""
    document = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [
            {"name": "retention", "user": {"token": token}},
            {"name": "stranger", "user": {"token": "not-" + token}},
        ],
        "contexts": [
            {"name": "test", "context": {"cluster": "test", "user": "retention"}},
            {"name": "other", "context": {"cluster": "test", "user": "stranger"}},
        ],
        "current-context": "test",
    }
    path.write_text(json.dumps(document))
    return path


def free_port_url() -> str:
    """A loopback URL where nothing listens: an unreachable API server."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"
