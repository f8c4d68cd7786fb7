"""Collect the image references that are in use, from the policy's ``in_use`` sources.

Reads only: a file (re-read every pass), a command's output, and the Kubernetes API
through the official client. What a reference means is ``core/image_reference.py``'s
business; what a kept tag is, the planner's. A source that cannot be read completely
raises ``InUseError`` naming it, and the runner then deletes nothing: an image we failed
to see running is still running.
"""

from __future__ import annotations

import importlib.util
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from retention.core import image_reference
from retention.core.image_reference import ImageReference
from retention.core.policy import InUseSource, KubernetesSource
from retention.errors import InUseError, NotAReference

# Pod templates of these (API group method, kind) pairs: a Deployment scaled to zero has no
# pods, yet scaling it up pulls its image. Old ReplicaSets are what `kubectl rollout undo`
# goes back to, so their images count too.
_WORKLOADS = (
    ("apps", "list_deployment_for_all_namespaces", "deployment"),
    ("apps", "list_replica_set_for_all_namespaces", "replicaset"),
    ("apps", "list_stateful_set_for_all_namespaces", "statefulset"),
    ("apps", "list_daemon_set_for_all_namespaces", "daemonset"),
    ("batch", "list_job_for_all_namespaces", "job"),
    ("batch", "list_cron_job_for_all_namespaces", "cronjob"),
)
PAGE_SIZE = 500
_STATUS_PREFIXES = ("docker-pullable://", "docker://")


def collect(sources: Sequence[InUseSource], registry_url: str) -> tuple[ImageReference, ...]:
    """Every reference to this registry that the sources name, with its origin."""
    host = image_reference.registry_host(registry_url)
    found: list[ImageReference] = []
    for source in sources:
        found.extend(_references(source, host))
    return tuple(found)


def _references(source: InUseSource, host: str) -> list[ImageReference]:
    if source.file is not None:
        text = _read_file(source.file, source)
        return _parsed(source, ((line, source.label) for line in _lines(text)), host)
    if source.command is not None:
        text = _run_command(source.command, source)
        return _parsed(source, ((line, source.label) for line in _lines(text)), host)
    assert source.kubernetes is not None  # the model requires exactly one kind
    return _parsed(source, _kubernetes_images(source.kubernetes, source), host)


def _lines(text: str) -> Iterator[str]:
    """Every reference line: blanks and ``#`` comments skipped."""
    for line in text.splitlines():
        reference = line.split("#", 1)[0].strip()
        if reference:
            yield reference


def _parsed(
    source: InUseSource, lines: Iterable[tuple[str, str]], host: str
) -> list[ImageReference]:
    """(text, origin) pairs to references of this registry; one bad line fails the source."""
    found = []
    for text, origin in lines:
        try:
            reference = image_reference.parse(text, origin, host)
        except NotAReference as exc:
            raise InUseError(f"in_use source {source.label}: {exc}") from exc
        if reference is not None:
            found.append(reference)
    return found


# -- file and command -----------------------------------------------------------------------


def _read_file(path: Path, source: InUseSource) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InUseError(f"in_use source {source.label}: cannot read it: {reason}") from exc


def _run_command(argv: Sequence[str], source: InUseSource) -> str:
    """The command's stdout; a non-zero exit, a timeout or a missing program is an error."""
    seconds = source.timeout.total_seconds()
    try:
        done = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=seconds, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise InUseError(
            f"in_use source {source.label}: no answer within {seconds:g}s (timeout)"
        ) from exc
    except OSError as exc:
        raise InUseError(
            f"in_use source {source.label}: cannot run {argv[0]!r}: {exc.strerror or exc}"
        ) from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        detail = f": {last}" if last else ""
        raise InUseError(f"in_use source {source.label}: exited {done.returncode}{detail}")
    return done.stdout


# -- kubernetes -----------------------------------------------------------------------------

KUBERNETES_MISSING = (
    "the Kubernetes client is not installed: pip install 'retention[kubernetes]' (the image has it)"
)


def kubernetes_client_installed() -> bool:
    """Whether ``kubernetes`` can be imported here, without importing it (that takes seconds)."""
    try:
        return importlib.util.find_spec("kubernetes") is not None
    except (ImportError, ValueError):  # a None in sys.modules, or a broken installation
        return False


def _kubernetes_images(settings: KubernetesSource, source: InUseSource) -> list[tuple[str, str]]:
    """(image, origin) for every container of every pod and workload template.

    The client is imported here: it is slow to import, only this source needs it, and it is
    an extra (``retention[kubernetes]``) that may not be installed.
    """
    if not kubernetes_client_installed():
        raise InUseError(f"in_use {source.label}: {KUBERNETES_MISSING}")
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException
    from urllib3.exceptions import HTTPError

    try:
        api = _api_client(settings, client, config)
        with api:
            return _cluster_images(api, client, source)
    except (ApiException, ConfigException, HTTPError, OSError, ValueError) as exc:
        raise InUseError(f"in_use source {source.label}: {_one_line(exc)}") from exc


def _api_client(settings: KubernetesSource, client: Any, config: Any) -> Any:
    if settings.kubeconfig is not None:
        return config.new_client_from_config(
            config_file=str(settings.kubeconfig), context=settings.context
        )
    configuration = client.Configuration()
    config.load_incluster_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def _cluster_images(api: Any, client: Any, source: InUseSource) -> list[tuple[str, str]]:
    timeout = source.timeout.total_seconds()
    found: list[tuple[str, str]] = []
    core = client.CoreV1Api(api)
    for pod in _all_pages(core.list_pod_for_all_namespaces, timeout):
        origin = f"kubernetes: {pod.metadata.namespace}/{pod.metadata.name}"
        found.extend((image, origin) for image in _pod_images(pod))
    groups = {"apps": client.AppsV1Api(api), "batch": client.BatchV1Api(api)}
    for group, method, kind in _WORKLOADS:
        for workload in _all_pages(getattr(groups[group], method), timeout):
            origin = f"kubernetes: {workload.metadata.namespace}/{kind}/{workload.metadata.name}"
            found.extend((image, origin) for image in _template_images(workload, kind))
    return found


def _all_pages(method: Any, timeout: float) -> Iterator[Any]:
    """Every item of a list call, following ``metadata.continue`` until it is empty."""
    token: str | None = None
    while True:
        page = method(limit=PAGE_SIZE, _continue=token, _request_timeout=timeout)
        yield from page.items or ()
        token = page.metadata._continue if page.metadata is not None else None
        if not token:
            return


def _pod_images(pod: Any) -> list[str]:
    """Images of containers, init and ephemeral containers, and the digests they run."""
    images = _spec_images(pod.spec)
    status = pod.status
    if status is not None:
        for statuses in (
            status.container_statuses,
            status.init_container_statuses,
            status.ephemeral_container_statuses,
        ):
            for container in statuses or ():
                images.extend(_status_images(container))
    return images


def _template_images(workload: Any, kind: str) -> list[str]:
    spec = workload.spec
    if kind == "cronjob":
        spec = spec.job_template.spec if spec.job_template is not None else None
    template = spec.template if spec is not None else None
    return _spec_images(template.spec) if template is not None else []


def _spec_images(spec: Any) -> list[str]:
    if spec is None:
        return []
    containers = [
        *(spec.containers or ()),
        *(spec.init_containers or ()),
        *(spec.ephemeral_containers or ()),
    ]
    return [c.image for c in containers if c.image]


def _status_images(container: Any) -> list[str]:
    """``imageID`` names the digest running (``docker-pullable://repo@sha256:...`` under
    dockershim); a bare ``sha256:`` there is an image ID, not a manifest digest: skipped."""
    found = []
    image_id = container.image_id or ""
    for prefix in _STATUS_PREFIXES:
        image_id = image_id.removeprefix(prefix)
    if "@" in image_id:
        found.append(image_id)
    return found


def _one_line(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None)
    if status and reason:
        return f"the API answered {status} {reason}"
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__
