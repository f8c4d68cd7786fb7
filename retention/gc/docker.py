"""``gc.mode: docker``: garbage-collect a registry that runs in a container, through the Engine API.

Two strategies. ``exec`` runs the command inside the running registry container, then
restarts the container (unless ``gc.blob_cache: none``), because its in-memory
blob-descriptor cache still believes in the blobs it swept (distribution#1803); it races
with pushes, so ``retention check`` allows it only when ``gc.writes`` says who blocks them.
``offline`` stops the registry, runs the command in a one-off container of the *same*
image with the registry's volumes and environment (so it sweeps the same storage with the
same config), and starts the registry again whatever happened, then waits until it answers.

This module owns every Docker SDK call of the package: ``docker`` exceptions and types stop
here and become ``GarbageCollectionError`` or ``StorageError``. It never speaks HTTP to the
registry; readiness is the injected ``ReadyCheck``.
"""

from __future__ import annotations

import os
import secrets
import stat
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import TypeVar

import docker
from docker.errors import DockerException, NotFound
from docker.models.containers import Container

from retention.core.model import GcResult
from retention.core.policy import GarbageCollection
from retention.errors import GarbageCollectionError, RetentionError, StorageError
from retention.gc import ReadyCheck, count_deleted_blobs
from retention.gc.command import STOP_START_TIMEOUT_S, cause, gc_argv, last_lines, run_command
from retention.gc.disk_usage import parse_du

DOCKER_FAILURES = (DockerException, OSError)
"""What the SDK raises: its own errors, and requests' (which are OSErrors) for I/O and timeouts."""

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
T = TypeVar("T")


def docker_client(gc: GarbageCollection) -> docker.DockerClient:
    """A client for ``gc.docker_host`` (or the DOCKER_* environment), checked to answer now.

    The SDK asks the engine for its API version on construction, so an unreachable engine
    fails here, before anything is stopped, with one line that names the host.
    """
    where = gc.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST
    problem = socket_problem(where)
    if problem:
        raise GarbageCollectionError(f"cannot reach Docker at {where}: {problem}")
    try:
        if gc.docker_host:
            return docker.DockerClient(base_url=gc.docker_host)
        return docker.from_env()
    except DOCKER_FAILURES as exc:
        raise GarbageCollectionError(f"cannot reach Docker at {where}: {one_line(exc)}") from exc


def socket_problem(host: str) -> str | None:
    """Why a ``unix://`` host cannot be a Docker socket, checked before the SDK connects.

    The clearer message is half the reason; the other is that docker-py leaks the socket
    object when connecting to a missing unix socket fails.
    """
    if not host.startswith("unix://"):
        return None
    path = host.removeprefix("unix://")
    try:
        is_socket = stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    return None if is_socket else f"{path} is not a socket"


class DockerCollector:
    """Runs garbage-collect for the registry container ``settings.container``."""

    mode = "docker"

    def __init__(
        self, settings: GarbageCollection, ready: ReadyCheck, client: docker.DockerClient
    ) -> None:
        self.settings = settings
        self.ready = ready
        self.client = client

    def collect(self) -> GcResult:
        """Run the configured strategy; raise GarbageCollectionError if it failed."""
        started = time.monotonic()
        try:
            if self.settings.strategy == "exec":
                output = self._collect_by_exec()
            else:
                output = self._collect_offline()
        except GarbageCollectionError as exc:
            flushed = self._flush()
            raise GarbageCollectionError(f"{exc}; {flushed}" if flushed else str(exc)) from exc
        flushed = self._flush()
        if flushed:
            raise GarbageCollectionError(flushed)
        return GcResult(
            mode=self.mode,
            ran=True,
            blobs_deleted=count_deleted_blobs(output),
            duration_s=time.monotonic() - started,
            restarted=self.settings.strategy == "offline" or self._flushes_by_restart,
        )

    def _flush(self) -> str | None:
        """``gc.restart_command`` on this host (a redis cache outlives the container)."""
        if not self.settings.restart_command:
            return None
        try:
            run_command(self.settings.restart_command, STOP_START_TIMEOUT_S, "restart_command")
            self.ready(self.settings.ready_timeout.total_seconds())
        except GarbageCollectionError as exc:
            return str(exc)
        return None

    @property
    def _flushes_by_restart(self) -> bool:
        """exec leaves the registry running: restart it unless its config has no blob cache."""
        return self.settings.blob_cache != "none"

    @property
    def _timeout_s(self) -> float:
        return self.settings.timeout.total_seconds()

    def _registry(self) -> Container:
        """The registry container, fresh from the engine, or a clear error if it is not there."""
        return find_container(self.client, self.settings.container, GarbageCollectionError)

    def _collect_by_exec(self) -> str:
        """``docker exec`` GC in the running registry, then restart it to flush its cache.

        The restart runs whatever GC did: a GC that failed half way has swept some blobs.
        """
        registry = self._registry()
        if registry.status != "running":
            raise GarbageCollectionError(
                f"gc strategy exec: container {registry.name} is {registry.status}, not running"
            )
        output, failure = "", None
        try:
            output = self._exec_gc(registry)
        except GarbageCollectionError as exc:
            failure = str(exc)
        restart_problem = self._restart(registry) if self._flushes_by_restart else None
        if failure or restart_problem:
            raise GarbageCollectionError(join_problems(failure, restart_problem))
        return output

    def _exec_gc(self, registry: Container) -> str:
        argv = gc_argv(self.settings)
        try:
            exit_code, raw = within(self._timeout_s, lambda: registry.exec_run(argv))
        except DOCKER_FAILURES as exc:
            raise GarbageCollectionError(self._exec_failure(registry.name, exc)) from exc
        output = decode(raw)
        if exit_code != 0:
            raise GarbageCollectionError(
                f"garbage-collect exited {exit_code} in container {registry.name}: "
                f"{failure_lines(output)}"
            )
        return output

    def _restart(self, registry: Container) -> str | None:
        """Restart the container (a new process: an empty blob cache) and wait for it."""
        try:
            registry.restart()
        except DOCKER_FAILURES as exc:
            return f"restarting container {registry.name} failed: {one_line(exc)}"
        return self._wait_ready(registry)

    def _exec_failure(self, name: str, exc: BaseException) -> str:
        """Docker has no call to stop an exec, so a timed-out GC may still be running."""
        if is_timeout(exc):
            return (
                f"garbage-collect still running after {self._timeout_s:.0f}s in container "
                f"{name}; Docker cannot stop an exec, it may go on running"
            )
        return f"docker exec in container {name} failed: {one_line(exc)}"

    def _collect_offline(self) -> str:
        """Stop, collect in a one-off container, and always start the registry again."""
        registry = self._registry()
        one_off = self._create_one_off(registry)
        output, failure = "", None
        try:
            registry.stop()
            output = self._run_one_off(one_off)
        except GarbageCollectionError as exc:
            failure = str(exc)
        except DOCKER_FAILURES as exc:
            failure = f"stopping container {registry.name} failed: {one_line(exc)}"
        finally:
            remove_quietly(one_off)
            restart_problem = self._start_again(registry)
        if failure or restart_problem:
            raise GarbageCollectionError(join_problems(failure, restart_problem))
        return output

    def _create_one_off(self, registry: Container) -> Container:
        """A stopped container to run GC in: same image id, volumes, environment and user.

        Created before the registry stops, so a missing image costs no downtime. The
        entrypoint is the command's program, so an image's entrypoint script (registry:2
        has one) cannot rewrite the arguments; no network, because GC needs none.
        """
        argv = gc_argv(self.settings)
        config = registry.attrs.get("Config") or {}
        try:
            return self.client.containers.create(
                image=registry.attrs["Image"],
                entrypoint=argv[:1],
                command=argv[1:],
                environment=config.get("Env") or [],
                user=config.get("User") or "",
                volumes_from=[registry.id],
                network_mode="none",
                name=f"{registry.name}-retention-gc-{secrets.token_hex(3)}",
                labels={"retention.gc-for": registry.name},
            )
        except DOCKER_FAILURES as exc:
            raise GarbageCollectionError(
                f"cannot create a GC container from the image of {registry.name}: {one_line(exc)}"
            ) from exc

    def _run_one_off(self, one_off: Container) -> str:
        """Start it, wait at most ``timeout`` (then kill it), return its output or raise."""
        try:
            one_off.start()
            status = one_off.wait(timeout=self._timeout_s)
        except DOCKER_FAILURES as exc:
            kill_quietly(one_off)
            raise GarbageCollectionError(self._one_off_failure(exc)) from exc
        output = container_output(one_off)
        exit_code = status.get("StatusCode")
        if exit_code != 0:
            raise GarbageCollectionError(
                f"garbage-collect exited {exit_code} in a one-off container of "
                f"{self.settings.container}: {failure_lines(output)}"
            )
        return output

    def _one_off_failure(self, exc: BaseException) -> str:
        if is_timeout(exc):
            return f"garbage-collect still running after {self._timeout_s:.0f}s; killed it"
        return f"GC container failed: {one_line(exc)}"

    def _start_again(self, registry: Container) -> str | None:
        """Start the registry and wait until it answers; the problem as text, None if fine."""
        try:
            registry.start()
        except DOCKER_FAILURES as exc:
            return f"starting container {registry.name} again failed: {one_line(exc)}"
        return self._wait_ready(registry)

    def _wait_ready(self, registry: Container) -> str | None:
        try:
            self.ready(self.settings.ready_timeout.total_seconds())
        except (RetentionError, OSError) as exc:
            return f"container {registry.name} started but the registry is not ready: {exc}"
        return None


class ContainerStorage:
    """The registry's storage as seen inside its container: ``du -sb PATH`` by docker exec.

    In docker mode the storage may be a named volume this host cannot see, so the number
    comes from where the registry sees it (its image needs ``du``; registry:2 has busybox).
    """

    def __init__(self, client: docker.DockerClient, container: str, path: str) -> None:
        self.client = client
        self.container = container
        self.path = path

    def measure(self) -> int:
        container = find_container(self.client, self.container, StorageError)
        if container.status != "running":
            raise StorageError(
                f"cannot measure {self.path}: container {self.container} is not running"
            )
        try:
            exit_code, raw = container.exec_run(["du", "-sb", self.path])
        except DOCKER_FAILURES as exc:
            raise StorageError(f"du in container {self.container} failed: {one_line(exc)}") from exc
        output = decode(raw)
        if exit_code != 0:
            raise StorageError(
                f"du -sb {self.path} in container {self.container} exited {exit_code}: "
                f"{last_lines(output)}"
            )
        return parse_du(output, self.path)


def find_container(
    client: docker.DockerClient, name: str, error: type[RetentionError]
) -> Container:
    """The named container with its current state, or ``error`` saying why not."""
    try:
        return client.containers.get(name)
    except NotFound as exc:
        raise error(f"no container named {name}") from exc
    except DOCKER_FAILURES as exc:
        raise error(f"cannot inspect container {name}: {one_line(exc)}") from exc


def within(seconds: float, call: Callable[[], T]) -> T:
    """``call()``, or TimeoutError once ``seconds`` pass while it still runs.

    ``exec_run`` has no timeout: the SDK polls the exec's output socket without one. The
    call runs in a daemon thread, which we leave blocked on that socket if the deadline
    passes (Docker has no call to stop an exec), so the interpreter can still exit.
    """
    outcome: list[T] = []
    failure: list[Exception] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # handed over to the caller's thread, not handled here
            failure.append(exc)

    worker = threading.Thread(target=run, name="retention-docker-exec", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(f"still running after {seconds:.0f}s")
    if failure:
        raise failure[0]
    return outcome[0]


def container_output(container: Container) -> str:
    """stdout and stderr of a finished container, as text ('' if the engine lost them)."""
    try:
        return decode(container.logs(stdout=True, stderr=True))
    except DOCKER_FAILURES:
        return ""


def kill_quietly(container: Container) -> None:
    """Best effort: the caller is already reporting a failure that matters more."""
    with suppress(*DOCKER_FAILURES):
        container.kill()


def remove_quietly(container: Container) -> None:
    """Best effort: a leftover stopped GC container must not hide the GC's own outcome."""
    with suppress(*DOCKER_FAILURES):
        container.remove(force=True)


def join_problems(failure: str | None, restart_problem: str | None) -> str:
    """One message: the GC's failure first, then whether the registry came back."""
    if failure and restart_problem:
        return f"{failure}; and {restart_problem}"
    if failure:
        return f"{failure} (registry started again and answering)"
    return f"garbage-collect succeeded but {restart_problem}"


def failure_lines(output: str) -> str:
    """Why the registry failed: its first error line, not the usage text it prints after.

    ``registry garbage-collect`` (cobra) answers a bad config with ``configuration error:
    ...`` and then its whole usage; the tail alone would show only the flags.
    """
    return cause(output)


def is_timeout(exc: BaseException) -> bool:
    """A socket timeout, or requests' ReadTimeout (no stubs here, so known by its message)."""
    return isinstance(exc, TimeoutError) or "timed out" in str(exc).lower()


def decode(raw: bytes | None) -> str:
    return (raw or b"").decode("utf-8", errors="replace")


def one_line(exc: BaseException) -> str:
    """SDK messages can span lines (engine errors quote output); messages here are one line."""
    return " ".join(str(exc).split())[:400] or type(exc).__name__
