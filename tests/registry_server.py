"""Test support: a real Distribution registry on 127.0.0.1, and a seeder that pushes to it.

The integration tests run the client against the real binary because the registry's quirks
(which digest a tag resolves to, pagination, 405 on disabled deletes, what GC leaves) are
what the tool exists to get right, and a fake would only repeat our own beliefs.

The seeder is deliberately separate from the code under test (sync httpx, its own upload
code), so a bug in the client cannot hide by also being in the data it reads.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx

from retention.registry import media_types
from retention.registry.transport import Http1Transport

BINARY_NAMES = ("docker-registry", "registry")
READY_TIMEOUT_SECONDS = 15.0
PLATFORMS = (("amd64", "linux"), ("arm64", "linux"), ("s390x", "linux"), ("ppc64le", "linux"))


def registry_binary() -> str | None:
    """The Distribution binary: Debian names it docker-registry, upstream names it registry."""
    override = os.environ.get("RETENTION_TEST_REGISTRY_BINARY")
    if override:
        return override
    return next((path for name in BINARY_NAMES if (path := shutil.which(name))), None)


@functools.cache
def public_tls() -> ssl.SSLContext:
    """httpx's default TLS context, built once per test process, for ``verify=``.

    Every ``httpx.Client()`` and ``httpx.get()`` without it reads certifi's bundle into a
    new context: 30 to 50 ms of CPU, though these tests only speak plain HTTP to 127.0.0.1.
    Hundreds of seeders, readiness probes and pull checks made that seconds of the suite.
    """
    return httpx.create_ssl_context()


def free_port(*taken: int) -> int:
    """A free loopback port, none of ``taken``: ports already chosen and not yet bound,
    which the kernel may hand out again once their probe is closed (two listeners of one
    policy then collide, and the policy is refused)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port: int = probe.getsockname()[1]
        if port not in taken:
            return port


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base`` (nested mappings merge, rest replace)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class RegistryServer:
    """``docker-registry serve`` on a free port with its own storage under ``workdir``.

    The config is written as JSON, which is YAML too. ``config`` deep-merges into the
    defaults, e.g. ``{"storage": {"delete": {"enabled": False}}}``.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        binary: str,
        delete_enabled: bool = True,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.binary = binary
        self.root = workdir / "storage"
        self.config_path = workdir / "config.yml"
        self.log_path = workdir / "registry.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self.root.mkdir(parents=True, exist_ok=True)
        settings = _merge(self._defaults(delete_enabled), config or {})
        self.config_path.write_text(json.dumps(settings, indent=2))

    def _defaults(self, delete_enabled: bool) -> dict[str, Any]:
        return {
            "version": 0.1,
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root)},
                "delete": {"enabled": delete_enabled},
                # No blob-descriptor cache: GC tests run beside this server, which only a
                # restart would flush. Tests of that trap configure inmemory themselves.
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "retention-tests"},
        }

    @property
    def pid(self) -> int:
        """The server's process id (for benchmarks that count its CPU); it must be running."""
        assert self._process is not None, "the registry is not running"
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start (or restart) on the same port and storage, and wait until /v2/ answers."""
        if self.running:
            return
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.binary, "serve", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self._environment(),
            )
        self._wait_until_ready()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); storage stays for a restart or a GC."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def garbage_collect(self, *extra_args: str) -> subprocess.CompletedProcess[str]:
        """``garbage-collect`` with the server's own config, so it sweeps the same storage."""
        return subprocess.run(
            [self.binary, "garbage-collect", str(self.config_path), *extra_args],
            capture_output=True,
            text=True,
            timeout=120,
            env=self._environment(),
            check=False,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _environment(self) -> dict[str, str]:
        """Our environment minus REGISTRY_* overrides that would change the config under us."""
        return {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"registry exited at start:\n{self.log()}")
            if self._answers():
                return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"registry silent for {READY_TIMEOUT_SECONDS}s:\n{self.log()}")

    def _answers(self) -> bool:
        """Any HTTP answer on /v2/ counts: with auth configured, ready means 401."""
        try:
            httpx.get(f"{self.url}/v2/", timeout=1, trust_env=False, verify=public_tls())
        except httpx.TransportError:
            return False
        return True


def sha256_digest(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def rfc3339(moment: datetime) -> str:
    """The way Docker writes ``created``: UTC, nanoseconds, ``Z``."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond:06d}123Z"


class Seeder:
    """Pushes images, indexes and tags through the plain registry API (test-only, sync)."""

    def __init__(self, url: str, *, transport: httpx.BaseTransport | None = None) -> None:
        self._http = httpx.Client(
            base_url=url, timeout=30, trust_env=False, transport=transport, verify=public_tls()
        )

    def close(self) -> None:
        self._http.close()

    def blob(self, repo: str, data: bytes) -> tuple[str, int]:
        """Monolithic upload: POST to start, PUT the bytes with ``digest=`` merged in."""
        digest = sha256_digest(data)
        started = self._http.post(f"/v2/{repo}/blobs/uploads/")
        _expect(started, 202)
        # The Location carries _state=...; httpx 0.28's params= would drop it, so merge.
        target = started.url.join(started.headers["location"]).copy_merge_params({"digest": digest})
        finished = self._http.put(
            target, content=data, headers={"Content-Type": "application/octet-stream"}
        )
        _expect(finished, 201)
        return digest, len(data)

    def image(
        self,
        repo: str,
        tags: Sequence[str],
        created: datetime | None,
        layers: int = 1,
        media: Literal["docker", "oci"] = "docker",
        unique: str = "",
        platform: tuple[str, str] = PLATFORMS[0],
    ) -> str:
        """Push config, layers and manifest; tag it ``tags`` (by digest when there are none).

        With ``unique`` the bytes derive from it, so the same arguments give the same digest;
        without, layers are random and every call is a new image.
        """
        layer_data = [self._layer_bytes(unique, index) for index in range(layers)]
        config = self._config(created, platform, layer_data)
        config_descriptor = self._descriptor(repo, config, _config_type(media))
        layer_descriptors = [self._descriptor(repo, d, _layer_type(media)) for d in layer_data]
        manifest_type = _manifest_type(media)
        body = _dumps(
            {
                "schemaVersion": 2,
                "mediaType": manifest_type,
                "config": config_descriptor,
                "layers": layer_descriptors,
            }
        )
        return self.manifest(repo, tags, body, manifest_type)

    def index(
        self,
        repo: str,
        tags: Sequence[str],
        children: Sequence[str],
        media: Literal["oci", "docker"] = "oci",
    ) -> str:
        """A multi-platform index (or Docker manifest list) over manifests already in ``repo``."""
        entries = []
        for position, child in enumerate(children):
            served = self._get_manifest(repo, child)
            architecture, os_name = PLATFORMS[position % len(PLATFORMS)]
            entries.append(
                {
                    "mediaType": media_types.bare(served.headers["content-type"]),
                    "digest": child,
                    "size": len(served.content),
                    "platform": {"architecture": architecture, "os": os_name},
                }
            )
        index_type = media_types.OCI_INDEX if media == "oci" else media_types.DOCKER_MANIFEST_LIST
        body = _dumps({"schemaVersion": 2, "mediaType": index_type, "manifests": entries})
        return self.manifest(repo, tags, body, index_type)

    def manifest(self, repo: str, tags: Sequence[str], body: bytes, media_type: str) -> str:
        """PUT the same bytes under each tag (or once by digest); returns their digest."""
        digest = sha256_digest(body)
        for reference in tags or [digest]:
            stored = self._http.put(
                f"/v2/{repo}/manifests/{reference}",
                content=body,
                headers={"Content-Type": media_type},
            )
            _expect(stored, 201)
            assert stored.headers["docker-content-digest"] == digest
        return digest

    def tag(self, repo: str, tag: str, digest: str) -> None:
        """Point another tag at an existing manifest by re-PUTting its exact bytes."""
        served = self._get_manifest(repo, digest)
        self.manifest(repo, [tag], served.content, served.headers["content-type"])

    def manifest_status(self, repo: str, ref: str) -> int:
        response = self._http.head(
            f"/v2/{repo}/manifests/{ref}", headers={"Accept": media_types.MANIFEST_ACCEPT}
        )
        return response.status_code

    def blob_status(self, repo: str, digest: str) -> int:
        return self._http.head(f"/v2/{repo}/blobs/{digest}").status_code

    def manifest_bytes(self, repo: str, reference: str) -> bytes:
        """The manifest as served, with all four manifest types accepted."""
        return self._get_manifest(repo, reference).content

    def digest(self, repo: str, reference: str) -> str:
        """What a tag (or digest) resolves to now, by HEAD."""
        served = self._http.head(
            f"/v2/{repo}/manifests/{reference}", headers={"Accept": media_types.MANIFEST_ACCEPT}
        )
        _expect(served, 200)
        return served.headers["docker-content-digest"]

    def delete(self, repo: str, digest: str) -> int:
        """DELETE a manifest by digest, as an operator or another tool would by hand."""
        return self._http.delete(f"/v2/{repo}/manifests/{digest}").status_code

    def _get_manifest(self, repo: str, reference: str) -> httpx.Response:
        served = self._http.get(
            f"/v2/{repo}/manifests/{reference}", headers={"Accept": media_types.MANIFEST_ACCEPT}
        )
        _expect(served, 200)
        return served

    def _layer_bytes(self, unique: str, index: int) -> bytes:
        if unique:
            return f"layer {index} of {unique}".encode()
        return os.urandom(32)

    def _config(
        self, created: datetime | None, platform: tuple[str, str], layers: list[bytes]
    ) -> bytes:
        architecture, os_name = platform
        config: dict[str, Any] = {
            "architecture": architecture,
            "os": os_name,
            "rootfs": {"type": "layers", "diff_ids": [sha256_digest(d) for d in layers]},
            "config": {},
        }
        if created is not None:
            config["created"] = rfc3339(created)
        return _dumps(config)

    def _descriptor(self, repo: str, data: bytes, media_type: str) -> dict[str, Any]:
        digest, size = self.blob(repo, data)
        return {"mediaType": media_type, "digest": digest, "size": size}


def _manifest_type(media: str) -> str:
    return media_types.DOCKER_MANIFEST if media == "docker" else media_types.OCI_MANIFEST


def _config_type(media: str) -> str:
    return media_types.DOCKER_CONFIG if media == "docker" else media_types.OCI_CONFIG


def _layer_type(media: str) -> str:
    return media_types.DOCKER_LAYER if media == "docker" else media_types.OCI_LAYER


def _dumps(document: Mapping[str, Any]) -> bytes:
    """Indented on purpose: readers must hash the bytes served, not a re-serialisation."""
    return json.dumps(document, indent=3).encode()


def _expect(response: httpx.Response, status: int) -> None:
    if response.status_code != status:
        raise AssertionError(
            f"{response.request.method} {response.request.url} answered "
            f"{response.status_code}, expected {status}: {response.text}"
        )


Outcome = httpx.Response | Exception
FAKE_URL = "http://127.0.0.1:9"  # the discard port: a request that escapes the fake fails fast


class _FakeRepository:
    def __init__(self) -> None:
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.tags: dict[str, str] = {}
        self.blobs: dict[str, bytes] = {}
        self.had_manifests = False  # 2.8 keeps _manifests/ after the last delete: "tags": null


class Script:
    """Requests seen, and queued answers (responses or exceptions) for the next matching ones.

    Shared by the in-memory fake and the wrapper around the real transport, so a test
    scripts a 429 storm the same way against either.
    """

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self._scripts: dict[tuple[str, str], list[Outcome]] = {}

    def script(self, method: str, path: str, *outcomes: Outcome) -> None:
        self._scripts.setdefault((method, path), []).extend(outcomes)

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if (r.method, r.url.path) == (method, path))

    def scripted(self, request: httpx.Request) -> httpx.Response | None:
        """Record ``request``; the queued answer for it, raised if it is an exception."""
        self.requests.append(request)
        queued = self._scripts.get((request.method, request.url.path))
        if not queued:
            return None
        outcome = queued.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class FakeRegistry(Script):
    """Distribution 2.8's API in memory, for what a real registry cannot easily be made to do.

    Serve it with ``httpx.MockTransport(fake.handler)``. It copies what we measured on
    2.8.2: catalog pages of 100 with a relative ``Link`` only while more remain, ``n`` above
    1000 refused, names in directory-walk order; tag listings unpaged (``tag_page_size``
    pages them as v3 does) and ``null`` when empty; repositories with blobs but no manifests
    listed in the catalog while their tag listing answers 404 NAME_UNKNOWN; 405 UNSUPPORTED
    on DELETE when deletes are off; DELETE by tag refused with 400 DIGEST_INVALID; upload
    Locations carrying ``_state``.

    ``script(method, path, *outcomes)`` queues responses or exceptions that answer the next
    matching requests before the fake itself does: 429 storms, 503s, dropped connections.
    """

    def __init__(
        self,
        *,
        delete_enabled: bool = True,
        page_size: int = 100,
        tag_page_size: int | None = None,
    ) -> None:
        self.delete_enabled = delete_enabled
        self.page_size = page_size
        self.tag_page_size = tag_page_size
        super().__init__()
        self.repositories: dict[str, _FakeRepository] = {}
        self._uploads: dict[str, str] = {}

    def corrupt(self, repository: str, digest: str, body: bytes) -> None:
        """Serve ``body`` under ``digest``, as a damaged storage or a lying proxy would."""
        media_type, _ = self.repositories[repository].manifests[digest]
        self.repositories[repository].manifests[digest] = (media_type, body)

    def handler(self, request: httpx.Request) -> httpx.Response:
        answer = self.scripted(request)
        return self._route(request) if answer is None else answer

    def _route(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v2/":
            return httpx.Response(200, json={})
        if path == "/v2/_catalog":
            return self._catalog(request)
        for pattern, route in (
            (r"/v2/(.+)/tags/list", self._tags),
            (r"/v2/(.+)/manifests/([^/]+)", self._manifests),
            (r"/v2/(.+)/blobs/uploads/([^/]*)", self._uploads_route),
            (r"/v2/(.+)/blobs/([^/]+)", self._blobs),
        ):
            match = re.fullmatch(pattern, path)
            if match:
                return route(request, *match.groups())
        return _error(404, "NOT_FOUND", "no such route")

    def _catalog(self, request: httpx.Request) -> httpx.Response:
        size = int(request.url.params.get("n", self.page_size))
        if size > 1000:
            return _error(400, "PAGINATION_NUMBER_INVALID", "invalid number of results requested")
        last = request.url.params.get("last", "").split("/")
        # 2.8 walks directories: "a/b" comes before "a-c", unlike a plain string sort.
        names = sorted(self.repositories, key=lambda name: name.split("/"))
        names = [name for name in names if name.split("/") > last]
        page, more = names[:size], len(names) > size
        headers = {"Link": f'</v2/_catalog?last={page[-1]}&n={size}>; rel="next"'} if more else {}
        return httpx.Response(200, json={"repositories": page}, headers=headers)

    def _tags(self, request: httpx.Request, name: str) -> httpx.Response:
        repository = self.repositories.get(name)
        if repository is None or not repository.had_manifests:
            return _error(404, "NAME_UNKNOWN", "repository name not known to registry")
        tags = list(repository.tags)
        last = request.url.params.get("last")
        if last is not None:
            tags = tags[tags.index(last) + 1 :]
        headers: dict[str, str] = {}
        if self.tag_page_size is not None and len(tags) > self.tag_page_size:
            tags = tags[: self.tag_page_size]
            headers["Link"] = f'</v2/{name}/tags/list?last={tags[-1]}>; rel="next"'
        return httpx.Response(200, json={"name": name, "tags": tags or None}, headers=headers)

    def _manifests(self, request: httpx.Request, name: str, reference: str) -> httpx.Response:
        if request.method == "PUT":
            repository = self.repositories.setdefault(name, _FakeRepository())
            return self._put_manifest(request, name, repository, reference)
        repository = self.repositories.get(name, _FakeRepository())
        if request.method == "DELETE":
            return self._delete_manifest(repository, reference)
        digest = repository.tags.get(reference, reference)
        stored = repository.manifests.get(digest)
        accepted = request.headers.get("accept", "")
        if stored is None or stored[0] not in accepted:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown", request)
        media_type, body = stored
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest}
        return _body(request, body, headers)

    def _put_manifest(
        self, request: httpx.Request, name: str, repository: _FakeRepository, reference: str
    ) -> httpx.Response:
        body = request.content
        digest = sha256_digest(body)
        missing = [d for d in _references(body) if d not in repository.blobs | repository.manifests]
        if missing:
            return _error(400, "MANIFEST_BLOB_UNKNOWN", f"blob unknown to registry: {missing[0]}")
        repository.manifests[digest] = (request.headers["content-type"], body)
        repository.had_manifests = True
        if reference != digest:
            repository.tags[reference] = digest
        location = f"{FAKE_URL}/v2/{name}/manifests/{digest}"
        return httpx.Response(201, headers={"Docker-Content-Digest": digest, "Location": location})

    def _delete_manifest(self, repository: _FakeRepository, reference: str) -> httpx.Response:
        if not self.delete_enabled:
            return _error(405, "UNSUPPORTED", "The operation is unsupported.")
        if not reference.startswith("sha256:"):
            return _error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        if repository.manifests.pop(reference, None) is None:
            return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        for tag in [t for t, d in repository.tags.items() if d == reference]:
            del repository.tags[tag]
        return httpx.Response(202)

    def _blobs(self, request: httpx.Request, name: str, digest: str) -> httpx.Response:
        repository = self.repositories.get(name, _FakeRepository())
        data = repository.blobs.get(digest)
        if data is None:
            return _error(404, "BLOB_UNKNOWN", "blob unknown to registry", request)
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest}
        return _body(request, data, headers)

    def _uploads_route(self, request: httpx.Request, name: str, upload: str) -> httpx.Response:
        if request.method == "POST":
            upload = f"upload-{len(self._uploads)}"
            self._uploads[upload] = f"state-{upload}"
            self.repositories.setdefault(name, _FakeRepository())
            location = f"{FAKE_URL}/v2/{name}/blobs/uploads/{upload}?_state={self._uploads[upload]}"
            return httpx.Response(202, headers={"Location": location, "Range": "0-0"})
        if request.url.params.get("_state") != self._uploads.pop(upload, None):
            return _error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
        digest = request.url.params.get("digest", "")
        if sha256_digest(request.content) != digest:
            return _error(400, "DIGEST_INVALID", "provided digest did not match uploaded content")
        self.repositories[name].blobs[digest] = request.content
        return httpx.Response(201, headers={"Docker-Content-Digest": digest})


def _references(body: bytes) -> list[str]:
    """The blobs and child manifests a manifest needs to exist before it may be stored."""
    document = json.loads(body)
    descriptors = [document.get("config"), *document.get("layers", [])]
    descriptors += document.get("manifests", [])
    return [d["digest"] for d in descriptors if isinstance(d, dict)]


def _body(request: httpx.Request, data: bytes, headers: dict[str, str]) -> httpx.Response:
    """A GET answer with ``data``, or the same headers and no body for HEAD."""
    headers = {**headers, "Content-Length": str(len(data))}
    if request.method == "HEAD":
        return httpx.Response(200, headers=headers)
    return httpx.Response(200, headers=headers, content=data)


def _error(
    status: int, code: str, message: str, request: httpx.Request | None = None
) -> httpx.Response:
    """Distribution's error body; HEAD answers carry none, so neither does the fake."""
    if request is not None and request.method == "HEAD":
        return httpx.Response(status)
    return httpx.Response(status, json={"errors": [{"code": code, "message": message}]})


class RecordingTransport(Script, httpx.AsyncBaseTransport):
    """Wraps a real transport: records every request and can answer some with a script.

    Lets tests against the real registry count requests (one GET per distinct manifest) and
    inject the odd failure (a 503 on the catalog) while everything else stays real, the
    client's own transport (``registry/transport.py``) included.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__()
        self._inner = inner or Http1Transport(None)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = self.scripted(request)
        if answer is None:
            answer = await self._inner.handle_async_request(request)
        return answer

    async def aclose(self) -> None:
        await self._inner.aclose()
