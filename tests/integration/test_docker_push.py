"""``docker push`` from a real engine during a pass with GC, in each safe mode (issue #11).

The pushes come from the test engine (tests/docker_engine.py): distinct images of three
layers (a shared imported base, two built layers of random bytes). One pusher pushes them
in a loop under new tags, each image to two repositories (the second push mounts its
layers across), while a pass deletes old builds and runs the real garbage-collect; a
second one starts a push the moment the window is seen closed, so that at least one push
is refused for certain, and pushes it again until it is stored:

- through the write gate of ``retention serve`` (the registry is never down: a push in the
  window gets the gate's read-only 405);
- in command mode with read-only hooks (the registry restarts read-only and back: a push
  gets the read-only 405, or a connection error while it restarts);
- in docker mode's offline strategy (the registry container is stopped for GC: a push
  gets a connection error, the only refusal there is), with the API pusher beside it.

Where the registry restarts, dockerd's own retry (5 s after an upload is cut) can carry
one push over the whole window: the layers it uploaded before are swept, and the registry
refuses its manifest with "blob unknown" (``swept`` in push_support). Never a broken
image; pushed again, it goes up whole. The gate refuses such a push with its 405 instead.

Afterwards every tag in the registry pulls whole and holds the image pushed under it,
every push was stored or refused in one of those ways, the push refused in the window was
stored when tried again, and ``docker pull`` brings it back into the engine.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_support import retention, write_policy
from docker_engine import (
    CONFIG_PATH,
    DockerEngine,
    RegistryContainer,
    build_pushed_image,
    import_push_base,
    remove_images,
)
from push_support import DockerPusher, Pusher, fully_pullable, unpullable_tags
from registry_server import RegistryServer, Seeder, free_port, public_tls
from test_daemon import Served, ago, wait_for
from test_gate_pass import daemons, gated_policy  # noqa: F401 (daemons is a fixture)
from test_gc_window import (  # noqa: F401 (supervised is a fixture)
    BUILDS,
    Supervised,
    read_only_hooks,
    seed_builds,
    seed_supervised,
    supervised,
)

from retention.registry import media_types

pytestmark = [pytest.mark.docker, pytest.mark.slow]

IMAGES = 4  # pushed in turn; after that the same images go out again under new tags
REPOSITORIES = ("pushed", "mounted")  # each image's second push is a cross-repository mount
PUSH_WAIT_S = 120.0  # dockerd retries a layer upload cut by a stopped registry, 5 s later


@pytest.fixture(scope="session")
def push_base(docker_engine: DockerEngine) -> Iterator[str]:
    """The shared base; and the reason plain HTTP to the test registries works at all."""
    insecure = docker_engine.client.info()["RegistryConfig"]["InsecureRegistryCIDRs"]
    assert "127.0.0.0/8" in insecure, f"dockerd would insist on TLS for 127.0.0.1: {insecure}"
    base = import_push_base(docker_engine.client)
    yield base
    remove_images(docker_engine.client, [base])


@pytest.fixture(scope="session")
def images_to_push(docker_engine: DockerEngine, push_base: str) -> Iterator[list[str]]:
    """IMAGES distinct local images, built once: each test pushes them to its own registry."""
    images = [build_pushed_image(docker_engine.client, push_base) for _ in range(IMAGES)]
    yield images
    remove_images(docker_engine.client, images)


@contextmanager
def pushing(*pushers: DockerPusher | Pusher, window: DockerPusher) -> Iterator[None]:
    """Run the pushers' loops and ``window``'s push in threads; enter once each loop has
    stored a push; on leaving, wait for the window's push to be stored, then stop them."""
    threads = [threading.Thread(target=pusher.run, daemon=True) for pusher in pushers]
    threads.append(threading.Thread(target=window.run, daemon=True))
    for thread in threads:
        thread.start()
    try:
        for pusher in pushers:
            wait_for(lambda p=pusher: p.pushed, "a first push stored", PUSH_WAIT_S)
        yield
        threads[-1].join(PUSH_WAIT_S)
    finally:
        for pusher in [*pushers, window]:
            pusher.stop.set()
        for thread in threads:
            thread.join(PUSH_WAIT_S)
    stuck = [p.progress for p in [*pushers, window] if isinstance(p, DockerPusher)]
    assert not any(thread.is_alive() for thread in threads), f"a push never ended: {stuck}"


def assert_stored_whole_or_refused(
    url: str, loop: DockerPusher, window: DockerPusher, refusals: set[str]
) -> None:
    """Only these refusals, each pushed again until stored; the window was hit; every tag
    in the registry pulls whole and holds the image pushed under it."""
    print("docker push outcomes:", Counter(outcome for _, outcome in loop.outcomes))
    print("in the window:", Counter(o for _, o in window.outcomes), "mounted:", loop.mounted)
    assert {outcome for _, outcome in loop.outcomes} <= {"ok", *refusals}, loop.outcomes
    assert window.outcomes[0][1] in refusals, window.outcomes
    assert loop.mounted, "no push mounted a layer from the other repository"
    assert window.retried == ["pushed:in-the-window"], window.outcomes
    assert unpullable_tags(url) == []
    pushed = {**loop.pushed, **window.pushed}
    stored = {name: config_digest(url, *name.split(":")) for name in pushed}
    assert stored == pushed, "each push that succeeded is there, holding the image pushed"


def config_digest(url: str, repository: str, tag: str) -> str | None:
    """The image id a tag names (its config's digest), as ``docker images`` shows it."""
    answer = httpx.get(
        f"{url}/v2/{repository}/manifests/{tag}",
        headers={"Accept": media_types.MANIFEST_ACCEPT},
        trust_env=False,
        verify=public_tls(),
    )
    return str(answer.json()["config"]["digest"]) if answer.status_code == 200 else None


def assert_pulls_back(client: Any, registry: str, image: str) -> None:
    """Delete the image pushed in the window from the engine, ``docker pull`` it back."""
    remove_images(client, [image])
    reference = f"{registry}/pushed"
    messages = list(client.api.pull(reference, tag="in-the-window", stream=True, decode=True))
    assert not [message for message in messages if "error" in message], messages
    assert client.images.get(f"{reference}:in-the-window").id == image
    remove_images(client, [image])


# --- through the gate -------------------------------------------------------------------


def test_docker_pushes_through_the_gate_during_a_pass_are_stored_whole_or_refused(
    tmp_path: Path,
    registry_server: RegistryServer,
    seeder: Seeder,
    daemons: Callable[[Path], Served],  # noqa: F811
    docker_engine: DockerEngine,
    push_base: str,
    images_to_push: list[str],
) -> None:
    for number in (1, 2, 3):
        seeder.image("app", [f"build-{number}"], ago(10 - number), layers=2)
    gate_port = free_port()
    daemon = daemons(gated_policy(tmp_path, registry_server, gate_port))
    gate, client = f"127.0.0.1:{gate_port}", docker_engine.client
    loop = DockerPusher(client, gate, images_to_push, REPOSITORIES)
    window = DockerPusher(
        client,
        gate,
        [build_pushed_image(client, push_base)],
        window_closed=lambda: bool(daemon.events("write window closed")),
    )

    with pushing(loop, window=window):
        assert daemon.post("/run").status_code == 202
        daemon.wait_passes("success", 1)

    report = daemon.http.get("/report").json()
    assert report["gc"]["ran"] is True and report["gc"]["error"] is None, report["gc"]
    assert_stored_whole_or_refused(registry_server.url, loop, window, {"read-only"})
    assert seeder.manifest_status("app", "build-1") == 404
    assert_pulls_back(client, gate, window.images[0])


# --- command mode with read-only hooks --------------------------------------------------


def test_docker_pushes_during_a_pass_with_read_only_hooks_are_stored_whole_or_refused(
    tmp_path: Path,
    supervised: Supervised,  # noqa: F811
    docker_engine: DockerEngine,
    push_base: str,
    images_to_push: list[str],
) -> None:
    """The registry restarts read-only and back: a push meets a 405 or a connection error,
    or, carried over the window by dockerd's retry, a swept layer."""
    seed_supervised(supervised, count=4)
    gc = read_only_hooks(supervised)
    policy = write_policy(tmp_path / "p.yml", supervised.url, BUILDS, **gc)
    registry, client = supervised.url.removeprefix("http://"), docker_engine.client
    loop = DockerPusher(client, registry, images_to_push, REPOSITORIES)
    window = DockerPusher(
        client,
        registry,
        [build_pushed_image(client, push_base)],
        window_closed=(supervised.directory / "readonly").exists,
    )

    with pushing(loop, window=window):
        result = retention("run", "-c", str(policy), "--format", "json")

    assert result.code == 0, result.stderr
    assert result.json()["gc"]["ran"] is True and result.json()["gc"]["probe"] == "passed"
    assert supervised.hooks_run() == ["readonly", "gc", "writable"]
    refusals = {"read-only", "unavailable", "swept"}
    assert_stored_whole_or_refused(supervised.url, loop, window, refusals)
    assert fully_pullable(supervised.url, "app", "build-3")
    assert_pulls_back(client, registry, window.images[0])


# --- docker mode, offline ---------------------------------------------------------------


def test_docker_and_api_pushes_during_an_offline_docker_gc_are_stored_whole_or_refused(
    tmp_path: Path,
    registry_container: RegistryContainer,
    docker_engine: DockerEngine,
    push_base: str,
    images_to_push: list[str],
) -> None:
    """The registry is stopped for GC: a connection error is the refusal there (or, for a
    push dockerd carried over the window by its retry, a swept layer)."""
    seeder = Seeder(registry_container.url)
    try:
        seed_builds(seeder, count=4)
    finally:
        seeder.close()
    collect = f"sleep 1; exec /bin/registry garbage-collect {CONFIG_PATH}"  # a wider window
    gc = {
        "mode": "docker",
        "container": registry_container.name,
        "strategy": "offline",
        "command": ["/bin/sh", "-c", collect],
    }
    policy = write_policy(
        tmp_path / "p.yml",
        registry_container.url,
        BUILDS,
        gc=gc,
        storage={"path": "/var/lib/registry"},
    )
    registry, client = registry_container.url.removeprefix("http://"), docker_engine.client
    loop = DockerPusher(client, registry, images_to_push, REPOSITORIES)
    window = DockerPusher(
        client,
        registry,
        [build_pushed_image(client, push_base)],
        window_closed=lambda: not registry_container.running(),
    )
    api_pusher = Pusher(registry_container.url)

    with pushing(loop, api_pusher, window=window):
        result = retention(
            "run", "-c", str(policy), "--format", "json", env={"DOCKER_HOST": docker_engine.host}
        )

    assert result.code == 0, result.stderr
    report = result.json()
    assert report["gc"]["ran"] is True and report["gc"]["blobs_deleted"] > 0, report["gc"]
    assert report["gc"]["restarted"] is True and report["gc"]["probe"] == "passed"
    assert_stored_whole_or_refused(registry_container.url, loop, window, {"unavailable", "swept"})
    print("API push outcomes:", Counter(outcome for _, outcome in api_pusher.outcomes))
    assert {outcome for _, outcome in api_pusher.outcomes} == {"ok", "unavailable"}
    tags = httpx.get(
        f"{registry_container.url}/v2/load/tags/list", trust_env=False, verify=public_tls()
    ).json()
    assert set(api_pusher.pushed) <= set(tags["tags"])
    with httpx.Client(
        base_url=registry_container.url, trust_env=False, verify=public_tls(), timeout=30
    ) as http:
        assert api_pusher.push(http, "after-the-window") == "ok"
    assert fully_pullable(registry_container.url, "load", "after-the-window")
    assert fully_pullable(registry_container.url, "app", "build-3")
    assert_pulls_back(client, registry, window.images[0])
