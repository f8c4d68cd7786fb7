"""Test support: a private Docker engine, a registry image built without a network, containers.

Docker mode is tested against a real engine because what it must get right (the same image,
volumes and environment for the one-off GC container, the registry started again whatever
happened) lives in the engine's behaviour, not in our code. The engine is Debian's dockerd,
started for the session with everything under one short temporary directory: its own
containerd (in its own namespace), no iptables, no bridge, the vfs storage driver, an empty
daemon config, so it neither needs nor touches the host's Docker setup.

Nothing can be pulled, so the image is imported from a tar of this host's own files: the
registry binary, ``sh`` and ``du`` with the shared libraries ``ldd`` lists for them.

A skip is allowed only where no engine can start (not root, no dockerd, no cgroups); with
``RETENTION_TEST_REQUIRE_DOCKER=1`` (CI) that is a failure too.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import docker
import httpx
import pytest
from registry_server import free_port, public_tls, registry_binary

from retention.errors import RegistryUnreachable

REQUIRE_ENV = "RETENTION_TEST_REQUIRE_DOCKER"
REGISTRY_IMAGE = "retention-test/registry:2"
REGISTRY_COMMAND = ["/bin/registry", "serve", "/etc/docker/registry/config.yml"]
CONFIG_PATH = "/etc/docker/registry/config.yml"
STORAGE_PATH = "/var/lib/registry"
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ENGINE_PROGRAMS = ("dockerd", "containerd", "containerd-shim-runc-v2", "runc")
ENGINE_START_TIMEOUT_S = 30.0
ENGINE_STOP_TIMEOUT_S = 20.0
REGISTRY_READY_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 25


class EngineUnavailable(Exception):
    """No engine can run here; the message says exactly why."""


def unavailable(reason: str) -> NoReturn:
    """Skip, unless the run demands an engine (CI): then a missing engine is a failure."""
    if os.environ.get(REQUIRE_ENV, "") not in ("", "0"):
        pytest.fail(
            f"{REQUIRE_ENV} is set, so this fails instead of skipping: {reason}", pytrace=False
        )
    pytest.skip(reason)


# --- the engine -------------------------------------------------------------------------


@dataclass
class DockerEngine:
    """A running dockerd: ``client`` talks to it at ``host`` (a unix socket under ``root``)."""

    client: Any  # docker.DockerClient; the SDK is untyped
    host: str
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        return self.root / "dockerd.log"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return log_tail(self.log_path, lines)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    if not path.exists():
        return "(no log)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def engine_problems() -> list[str]:
    """Why dockerd cannot start here, found before trying (each fixable by the CI setup)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("dockerd needs root (rootless Docker is not set up by the tests)")
    missing = [name for name in ENGINE_PROGRAMS if not shutil.which(name, path=SYSTEM_PATH)]
    if missing:
        problems.append(f"not installed: {', '.join(missing)} (apt-get install docker.io)")
    if not cgroups_mounted():
        problems.append("no cgroup2 at /sys/fs/cgroup and no cgroup v1 devices/memory mounts")
    return problems


def cgroups_mounted() -> bool:
    """dockerd needs cgroup2 at /sys/fs/cgroup, or v1 with (at least) devices and memory."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    fields = [line.split() for line in mounts]
    if any(f[1] == "/sys/fs/cgroup" and f[2] == "cgroup2" for f in fields):
        return True
    options = {o for f in fields if f[2] == "cgroup" for o in f[3].split(",")}
    return {"devices", "memory"} <= options


def dockerd_argv(root: Path) -> list[str]:
    """Everything private under ``root``; nothing that edits the host's network or sysctls."""
    (root / "daemon.json").write_text("{}")
    return [
        shutil.which("dockerd", path=SYSTEM_PATH) or "dockerd",
        "--config-file", str(root / "daemon.json"),
        "--data-root", str(root / "data"),
        "--exec-root", str(root / "x"),
        "--pidfile", str(root / "dockerd.pid"),
        "--host", f"unix://{root}/docker.sock",
        "--containerd-namespace", "retention-test",
        "--containerd-plugins-namespace", "retention-test-plugins",
        "--iptables=false", "--ip-forward=false", "--ip-masq=false",
        "--bridge=none", "--storage-driver=vfs", "--log-level=info",
    ]  # fmt: skip


def start_engine() -> DockerEngine:
    """Start dockerd (which starts its own containerd) and wait until it answers."""
    problems = engine_problems()
    if problems:
        raise EngineUnavailable("; ".join(problems))
    # /tmp and a short prefix: containerd's socket lives under the exec root, and unix
    # socket paths are limited to 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="rd-", dir="/tmp"))
    environment = {**os.environ, "PATH": f"{SYSTEM_PATH}:{os.environ.get('PATH', '')}"}
    with (root / "dockerd.log").open("wb") as log:
        process = subprocess.Popen(
            dockerd_argv(root),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            start_new_session=True,  # a Ctrl-C of pytest must not kill it before cleanup
        )
    engine = DockerEngine(
        client=None, host=f"unix://{root}/docker.sock", root=root, process=process
    )
    engine.client = wait_for_engine(engine)
    return engine


def wait_for_engine(engine: DockerEngine) -> Any:
    """A client once the engine answers; stop and explain if it exits or stays silent."""
    deadline = time.monotonic() + ENGINE_START_TIMEOUT_S
    socket = engine.root / "docker.sock"
    while time.monotonic() < deadline:
        if engine.process.poll() is not None:
            tail = engine.log_tail()  # before stop_engine deletes the log with the root
            stop_engine(engine)
            raise EngineUnavailable(
                f"dockerd exited with {engine.process.returncode} at start:\n{tail}"
            )
        if socket.exists():
            try:
                return docker.DockerClient(base_url=engine.host, timeout=30)
            except docker.errors.DockerException:
                pass
        time.sleep(0.02)
    tail = engine.log_tail()
    stop_engine(engine)
    raise EngineUnavailable(f"dockerd silent for {ENGINE_START_TIMEOUT_S:.0f}s:\n{tail}")


def stop_engine(engine: DockerEngine) -> None:
    """SIGTERM, wait, SIGKILL; then end what it left behind and delete its directory."""
    if engine.client is not None:
        engine.client.close()
    if engine.process.poll() is None:
        engine.process.send_signal(signal.SIGTERM)
        try:
            engine.process.wait(timeout=ENGINE_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            engine.process.kill()
            engine.process.wait()
    kill_leftovers(engine.root)
    remove_engine_root(engine.root)


def kill_leftovers(root: Path) -> None:
    """containerd and shims outlive a killed dockerd; ours are the ones naming our root."""
    marker = str(root).encode()
    for pid in processes_mentioning(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def processes_mentioning(marker: bytes) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def remove_engine_root(root: Path) -> None:
    """Unmount what the engine left mounted (netns files) before deleting, never through it."""
    for mount_point in mounts_under(root):
        subprocess.run(["umount", "-l", mount_point], check=False, capture_output=True)
    if not mounts_under(root):
        shutil.rmtree(root, ignore_errors=True)


def mounts_under(root: Path) -> list[str]:
    prefix = f"{root}/"
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    points = [line.split()[4] for line in lines]
    return sorted((p for p in points if p.startswith(prefix)), reverse=True)


# --- the registry image -----------------------------------------------------------------


def shared_libraries(binary: str) -> list[str]:
    """The absolute paths ``ldd`` prints: libraries and the dynamic loader ([] if static)."""
    done = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
    return re.findall(r"(/\S+) \(0x", done.stdout)


def image_files() -> dict[str, str]:
    """Path in the image -> file on this host (symlinks followed when copied)."""
    registry = registry_binary()
    shell = os.path.realpath(shutil.which("sh") or "/bin/sh")
    du = os.path.realpath(shutil.which("du") or "/usr/bin/du")
    sleep = os.path.realpath(shutil.which("sleep") or "/usr/bin/sleep")  # a GC that hangs
    if registry is None:
        pytest.fail("docker-registry (CNCF Distribution) is not installed; the tests need it")
    files = {"bin/registry": registry, "bin/sh": shell, "bin/du": du, "usr/bin/du": du}
    files["bin/sleep"] = sleep
    for library in {lib for b in (registry, shell, du, sleep) for lib in shared_libraries(b)}:
        files[library.lstrip("/")] = library
        files[os.path.realpath(library).lstrip("/")] = library
    return files


def rootfs_tar(files: dict[str, str]) -> bytes:
    """A root filesystem as a tar: the files plus the directories the registry expects."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as tar:
        for directory in ("etc/docker/registry", "var/lib/registry", "tmp"):
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if directory == "tmp" else 0o755
            tar.addfile(info)
        for target, source in sorted(files.items()):
            tar.add(source, arcname=target)
    return buffer.getvalue()


def build_registry_image(client: Any) -> str:
    """``docker import`` of the tar, tagged REGISTRY_IMAGE; returns the image id."""
    client.api.import_image_from_data(
        rootfs_tar(image_files()),
        repository=REGISTRY_IMAGE.split(":")[0],
        tag=REGISTRY_IMAGE.split(":")[1],
        changes=["ENV PATH=/usr/bin:/bin", "WORKDIR /"],
    )
    image_id: str = client.images.get(REGISTRY_IMAGE).id
    return image_id


# --- images to push ---------------------------------------------------------------------


PUSHED_BASE = "retention-test/push-base"
PUSHED_FILE_BYTES = 1024 * 1024


def file_tar(files: dict[str, bytes]) -> bytes:
    """A tar of regular files (name -> content): a root filesystem or a build context."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def import_push_base(client: Any) -> str:
    """A one-layer base of random bytes (``docker import``), shared by the pushed images.

    Shared, so that a push finds that layer in the registry already and skips it, as most
    real pushes do; random, so that no two test sessions share it. Returns its tag.
    """
    tag = f"{PUSHED_BASE}:{secrets.token_hex(3)}"
    client.api.import_image_from_data(
        file_tar({"base": os.urandom(PUSHED_FILE_BYTES)}),
        repository=PUSHED_BASE,
        tag=tag.rsplit(":", 1)[1],
    )
    return tag


def build_pushed_image(client: Any, base: str, layers: int = 2) -> str:
    """An image of ``base`` plus ``layers`` layers of random bytes, built offline; its id.

    ``docker import`` makes one layer only, so the layers come from a build ``FROM`` the
    local base (no pull; each COPY is a layer). The id is the config's digest.
    """
    names = [f"layer-{number}" for number in range(layers)]
    dockerfile = f"FROM {base}\n" + "".join(f"COPY {name} /{name}\n" for name in names)
    context = {"Dockerfile": dockerfile.encode()}
    context.update({name: os.urandom(PUSHED_FILE_BYTES) for name in names})
    image, _ = client.images.build(
        fileobj=io.BytesIO(file_tar(context)), custom_context=True, rm=True, pull=False
    )
    image_id: str = image.id
    return image_id


def remove_images(client: Any, images: Iterable[str]) -> None:
    """Every tag of each image and the image itself (a test's pushes add tags to them)."""
    for image in images:
        with contextlib.suppress(docker.errors.NotFound):
            client.images.remove(image, force=True)


# --- a registry in a container ----------------------------------------------------------


@dataclass
class RegistryContainer:
    """A registry serving on ``url`` from container ``name``; its storage is ``host_root``."""

    url: str
    name: str
    host_root: Path
    config_path: Path
    container: Any  # docker.models.containers.Container

    def wait_until_ready(self, seconds: float = REGISTRY_READY_TIMEOUT_S) -> None:
        """The ``ReadyCheck`` for the collector: poll ``/v2/``, raise if it never answers."""
        wait_for_registry(self.url, seconds)

    def running(self) -> bool:
        self.container.reload()
        return bool(self.container.status == "running")

    def logs(self) -> str:
        return bytes(self.container.logs()).decode(errors="replace")


def registry_config(port: int) -> dict[str, Any]:
    """What the issue asks for: filesystem storage, deletes on, the in-memory descriptor cache."""
    return {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": STORAGE_PATH},
            "delete": {"enabled": True},
            "cache": {"blobdescriptor": "inmemory"},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "retention-tests"},
    }


def container_name(test_name: str) -> str:
    """Unique and readable in ``docker ps``: the test's name, sanitised, plus a random tail."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-.")[:40]
    return f"{readable or 'registry'}-{secrets.token_hex(3)}"


def run_registry_container(
    client: Any,
    workdir: Path,
    name: str,
    *,
    environment: dict[str, str] | None = None,
    image_entrypoint: list[str] | None = None,
) -> RegistryContainer:
    """Start the registry image on the host network with config and storage bind-mounted.

    ``environment`` reaches the registry (``REGISTRY_*`` overrides its config). With
    ``image_entrypoint`` the container runs from an image whose own entrypoint is that (as
    registry:2's entrypoint script is), the container overriding it to serve.
    """
    port = free_port()
    host_root = workdir / "storage"
    host_root.mkdir(parents=True)
    config_path = workdir / "config.yml"
    config_path.write_text(json.dumps(registry_config(port), indent=2))  # JSON is YAML
    image = REGISTRY_IMAGE
    if image_entrypoint is not None:
        image = image_with_entrypoint(client, image_entrypoint)
    container = client.containers.run(
        image,
        REGISTRY_COMMAND[1:],
        entrypoint=REGISTRY_COMMAND[:1],
        name=name,
        detach=True,
        network_mode="host",
        environment=environment or {},
        volumes={
            str(config_path): {"bind": CONFIG_PATH, "mode": "ro"},
            str(host_root): {"bind": STORAGE_PATH, "mode": "rw"},
        },
    )
    url = f"http://127.0.0.1:{port}"
    registry = RegistryContainer(url, name, host_root, config_path, container)
    wait_for_container(registry)
    return registry


def image_with_entrypoint(client: Any, entrypoint: list[str]) -> str:
    """REGISTRY_IMAGE with another ENTRYPOINT: a build from the local image, no network."""
    dockerfile = f"FROM {REGISTRY_IMAGE}\nENTRYPOINT {json.dumps(entrypoint)}\n"
    tag = f"{REGISTRY_IMAGE.split(':')[0]}:entrypoint-{secrets.token_hex(3)}"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, pull=False)
    return tag


def wait_for_container(registry: RegistryContainer) -> None:
    """Until ``/v2/`` answers; if the container dies first, say so with its logs."""
    deadline = time.monotonic() + REGISTRY_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if answers(registry.url):
            return
        if not registry.running():
            raise AssertionError(f"registry container exited at start:\n{registry.logs()}")
        time.sleep(0.02)
    raise AssertionError(f"registry container silent for 15s:\n{registry.logs()}")


def remove_registry_container(client: Any, registry: RegistryContainer) -> None:
    """The registry and any GC container left for it (the tests assert there are none)."""
    leftovers = client.containers.list(
        all=True, filters={"label": f"retention.gc-for={registry.name}"}
    )
    for container in [registry.container, *leftovers]:
        with contextlib.suppress(docker.errors.NotFound):
            container.remove(force=True)


def gc_containers(client: Any, registry: RegistryContainer) -> list[str]:
    """Names of every container but the registry itself (a GC container left behind)."""
    names: Iterable[str] = (c.name for c in client.containers.list(all=True))
    return sorted(n for n in names if n != registry.name)


def answers(url: str) -> bool:
    try:
        return (
            httpx.get(f"{url}/v2/", timeout=1, trust_env=False, verify=public_tls()).status_code
            == 200
        )
    except httpx.TransportError:
        return False


def wait_for_registry(url: str, seconds: float) -> None:
    """Poll ``/v2/`` every 20 ms until it answers 200; RegistryUnreachable after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not answers(url):
        if time.monotonic() >= deadline:
            raise RegistryUnreachable(
                f"registry not answering after {seconds:.0f}s", method="GET", url=f"{url}/v2/"
            )
        time.sleep(0.02)


def engine_session() -> Iterator[DockerEngine]:
    """The body of the session fixture: start, or skip/fail with the reason; always stop."""
    try:
        engine = start_engine()
    except EngineUnavailable as exc:
        unavailable(f"no Docker engine: {exc}")
    try:
        yield engine
    finally:
        stop_engine(engine)
