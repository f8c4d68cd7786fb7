"""The policy model: what an operator can say in ``policies.yml``, and nothing more.

Pure: no file or network access. ``config.py`` turns YAML into these models and maps
validation errors back to file lines; the planner reads them. Every model is frozen and
forbids unknown keys, because a typo such as ``keep_lst`` must not silently disable a rule.
"""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

_DURATION = re.compile(r"(\d+)([smhdw])")
_URL = re.compile(r"https?://[^/\s]+/?")
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: object) -> timedelta:
    """Read ``30d``, ``12h``, ``2w``: the unit is required so ``30`` cannot mean 30 seconds."""
    if isinstance(value, timedelta):
        return value
    match = _DURATION.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if match is None:
        raise PydanticCustomError(
            "duration", "{value} is not a duration (use 30d, 12h, 2w)", {"value": repr(value)}
        )
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def format_duration(value: timedelta) -> str:
    """An exact spelling of a duration in days, hours or minutes (``14d``, not ``2w``)."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNIT_SECONDS[unit] == 0:
            return f"{seconds // _UNIT_SECONDS[unit]}{unit}"
    return f"{seconds}s"


def _compile(value: object) -> re.Pattern[str]:
    if isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise PydanticCustomError("regex", "{value} is not a regex string", {"value": repr(value)})
    try:
        return re.compile(value)
    except re.error as exc:
        raise PydanticCustomError(
            "regex",
            "{value} is not a valid regex: {error}",
            {"value": repr(value), "error": str(exc)},
        ) from exc


def _registry_url(value: str) -> str:
    if not _URL.fullmatch(value):
        raise PydanticCustomError(
            "url",
            "{value} is not a registry URL (use http://host:port or https://host)",
            {"value": repr(value)},
        )
    return value


def _non_empty_command(value: tuple[str, ...]) -> tuple[str, ...]:
    if not value or not value[0]:
        raise PydanticCustomError("command", "a command needs at least the program", {})
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise PydanticCustomError("duration", "must be longer than 0s", {})
    return value


def _repository_name(value: str) -> str:
    if not _REPOSITORY.fullmatch(value):
        raise PydanticCustomError(
            "repository",
            "{value} is not a repository name (lower-case words joined by . _ - or /)",
            {"value": repr(value)},
        )
    return value


RepositoryName = Annotated[str, AfterValidator(_repository_name)]


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
PositiveDuration = Annotated[timedelta, BeforeValidator(parse_duration), AfterValidator(_positive)]
Regex = Annotated[re.Pattern[str], BeforeValidator(_compile)]
RegistryUrl = Annotated[str, AfterValidator(_registry_url)]
Command = Annotated[tuple[str, ...], AfterValidator(_non_empty_command)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RegistrySettings(_Strict):
    """Where the registry is and how to talk to it: credentials and TLS included.

    Only the shape is checked here (which keys go together); whether the files exist is
    for the registry client to find out when it starts, because this module does no I/O
    and the files may only exist where the pass runs (a Kubernetes Secret, say).
    Fields are validated in order, so each cross-check sits on the later key of a pair
    and the error points at the line that makes the combination wrong.
    """

    url: RegistryUrl
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    credentials: Literal["docker"] | None = None
    ca_cert: Path | None = None
    insecure: bool = False
    client_cert: Path | None = None
    client_key: Path | None = None
    concurrency: Annotated[int, Field(ge=1, le=256)] = 8
    timeout: PositiveDuration = timedelta(seconds=30)
    retries: Annotated[int, Field(ge=0, le=20)] = 4

    @field_validator("password_file")
    @classmethod
    def _one_password_source(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is None:
            return value
        if info.data.get("password") is not None:
            raise PydanticCustomError("credentials", "set password or password_file, not both", {})
        if "username" in info.data and info.data["username"] is None:
            raise PydanticCustomError("credentials", "password_file needs username too", {})
        return value

    @field_validator("credentials")
    @classmethod
    def _docker_config_alone(cls, value: str | None, info: ValidationInfo) -> str | None:
        explicit = ("username", "password", "password_file")  # what Docker's config replaces
        given = [key for key in explicit if info.data.get(key) is not None]
        if value is not None and given:
            raise PydanticCustomError(
                "credentials",
                "credentials: docker takes the username and password from the Docker "
                "config; remove {keys}",
                {"keys": " and ".join(given)},
            )
        return value

    @field_validator("ca_cert", "insecure", "client_cert", "client_key")
    @classmethod
    def _tls_needs_https(cls, value: object, info: ValidationInfo) -> object:
        url = info.data.get("url")
        if value and isinstance(url, str) and not url.startswith("https://"):
            raise PydanticCustomError(
                "tls", "{key} needs an https:// registry.url", {"key": info.field_name}
            )
        return value

    @field_validator("insecure")
    @classmethod
    def _verify_or_not(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("ca_cert") is not None:
            raise PydanticCustomError(
                "tls",
                "insecure: true skips verification, so ca_cert would be ignored; set one of them",
                {},
            )
        return value

    @field_validator("client_key")
    @classmethod
    def _key_with_certificate(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and "client_cert" in info.data and info.data["client_cert"] is None:
            raise PydanticCustomError("tls", "client_key needs client_cert too", {})
        return value

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")


class Rule(_Strict):
    """One retention rule; a tag belongs to the first rule whose patterns fully match it."""

    name: Annotated[str, Field(min_length=1)]
    repositories: Regex = re.compile(".*")
    match: Regex = re.compile(".*")
    exclude: Regex | None = None
    keep_last: Annotated[int, Field(ge=0)] | None = None
    max_age: Duration | None = None
    # None (the default): the push time where known, else a believable created time.
    order_by: Literal["pushed", "created", "semver"] | None = None
    age_by: Literal["pushed", "created", "pulled"] | None = None
    pulled_within: PositiveDuration | None = None

    @model_validator(mode="after")
    def _needs_a_limit(self) -> Rule:
        if self.keep_last is None and self.max_age is None:
            raise PydanticCustomError("rule_limit", "a rule needs keep_last and/or max_age", {})
        return self

    def claims(self, repository: str, tag: str) -> bool:
        """True when this rule governs ``tag`` in ``repository`` (full matches, exclude wins)."""
        if not self.repositories.fullmatch(repository) or not self.match.fullmatch(tag):
            return False
        return self.exclude is None or not self.exclude.fullmatch(tag)


class UntaggedManifests(_Strict):
    """``untagged:``: delete manifests no tag points at, by digest, once untagged long enough.

    A tag pushed again to a new digest leaves the old manifest stored and untagged. The
    registry API cannot list those, so this needs ``storage.path`` on this host (with
    either ``scan``). ``max_age`` is how long a manifest must have been untagged: counted
    from the first pass that saw it untagged, never from its push. Off when absent.
    """

    repositories: Regex = re.compile(".*")
    max_age: PositiveDuration

    def covers(self, repository: str) -> bool:
        return self.repositories.fullmatch(repository) is not None


class KubernetesSource(_Strict):
    """Where the cluster is: a kubeconfig file (and context), or the pod's service account."""

    kubeconfig: Path | None = None
    context: str | None = None

    @field_validator("context")
    @classmethod
    def _context_needs_file(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("kubeconfig") is None:
            raise PydanticCustomError("in_use", "context needs kubeconfig too", {})
        return value


class InUseSource(_Strict):
    """One source of image references that are in use: exactly one of the three kinds.

    ``name`` labels a command in reasons and errors (default: the program's name).
    ``timeout`` bounds a command and each Kubernetes request.
    """

    file: Path | None = None
    command: Command | None = None
    kubernetes: KubernetesSource | None = None
    name: Annotated[str, Field(min_length=1)] | None = None
    timeout: PositiveDuration = timedelta(seconds=30)

    @model_validator(mode="after")
    def _one_kind(self) -> InUseSource:
        given = [k for k in ("file", "command", "kubernetes") if getattr(self, k) is not None]
        if len(given) != 1:
            raise PydanticCustomError(
                "in_use",
                "an in_use source needs exactly one of file, command and kubernetes{got}",
                {"got": f" (got {' and '.join(given)})" if given else ""},
            )
        return self

    @property
    def label(self) -> str:
        """How reasons and errors name this source: ``file: PATH``, ``command: NAME``."""
        if self.file is not None:
            return f"file: {self.file}"
        if self.command is not None:
            return f"command: {self.name or Path(self.command[0]).name}"
        return f"kubernetes: {self.name}" if self.name else "kubernetes"


class Safety(_Strict):
    """Budgets that stop a wrong policy from emptying a registry."""

    max_deletions: Annotated[int, Field(ge=0)] = 1000
    max_delete_fraction: Annotated[float, Field(gt=0, le=1)] = 0.9
    grace_period: Duration = timedelta(hours=1)


class Artifacts(_Strict):
    """Signatures, attestations and SBOMs (cosign tags, OCI ``subject``) follow their image."""

    delete_orphans: bool = False


class Trash(_Strict):
    """Deleted manifests are saved in ``state_dir/trash`` and pruned after ``keep``.

    Tags brought back by ``retention restore`` are kept by every pass for
    ``hold_restored`` (0s: not at all), or until ``retention trash release``.
    """

    keep: Duration = timedelta(days=14)
    hold_restored: Duration = timedelta(days=7)


class Verify(_Strict):
    """After deletion and after GC, check that every kept tag is still whole.

    ``blobs`` is how many config and layer blobs to HEAD: ``all`` (default) or a number
    sampled from all of them.
    """

    enabled: bool = True
    blobs: Literal["all"] | Annotated[int, Field(ge=0)] = "all"


class GarbageCollection(_Strict):
    """How blobs are reclaimed after manifests are deleted (see the README on each mode).

    ``command`` is run on this host in command mode, and inside the registry's container
    (exec) or a one-off container of its image (offline) in docker mode. Around it, in
    command mode: ``readonly_start`` / ``readonly_stop`` (restart the registry read-only and
    back) or ``stop_command`` / ``start_command``, then ``restart_command`` to flush the
    registry's blob-descriptor cache, then a probe push into the repository ``probe``.

    ``writes`` says who keeps pushes away from the storage while GC runs: ``retention``
    itself (the hooks above, or docker's offline strategy), the write ``gate``, or ``none``
    when nothing pushes during a pass at all (the operator vouches for it).
    ``blob_cache`` is the registry config's ``storage.cache.blobdescriptor``.
    """

    mode: Literal["none", "command", "docker"] = "none"
    command: Command = ("registry", "garbage-collect", "/etc/docker/registry/config.yml")
    stop_command: Command | None = None
    start_command: Command | None = None
    readonly_start: Command | None = None
    readonly_stop: Command | None = None
    restart_command: Command | None = None
    blob_cache: Literal["inmemory", "redis", "none"] = "inmemory"
    writes: Literal["retention", "gate", "none"] = "retention"
    probe: RepositoryName = "retention-probe"
    delete_untagged: bool = False
    timeout: PositiveDuration = timedelta(hours=1)
    container: str = "registry"
    strategy: Literal["exec", "offline"] = "offline"
    docker_host: str | None = None
    ready_timeout: PositiveDuration = timedelta(seconds=60)
    delay: Duration = timedelta(0)

    @property
    def stops_registry(self) -> bool:
        """Retention stops the registry for GC (and so restarts it afterwards)."""
        if self.mode == "docker":
            return self.strategy == "offline"
        return self.stop_command is not None and self.start_command is not None

    @property
    def makes_read_only(self) -> bool:
        """Retention switches the registry to read-only mode for GC, and back."""
        return self.readonly_start is not None and self.readonly_stop is not None

    @property
    def restarts_registry(self) -> bool:
        """The registry process is new after GC, so an in-memory cache starts empty.

        ``readonly_stop`` counts: Distribution reads maintenance mode only at start, so
        leaving read-only mode is a restart. Docker mode restarts the container either way.
        """
        return (
            self.mode == "docker"
            or self.stops_registry
            or self.readonly_stop is not None
            or self.restart_command is not None
        )

    @property
    def runs_beside_live_registry(self) -> bool:
        """GC while the registry accepts pushes: nothing stops them, and nobody vouches."""
        if self.mode == "none" or self.writes != "retention":
            return False
        return not (self.stops_registry or self.makes_read_only)


def _passes_delete_untagged(word: str) -> bool:
    """The flag as a word, ``--delete-untagged=true``, or inside ``sh -c '...'`` text."""
    return "--delete-untagged" in word or "-m" in word.split()


def gc_problems(
    gc: GarbageCollection, *, gated: bool | None = None
) -> list[tuple[tuple[str, ...], str]]:
    """GC settings that would break images, as (key path under ``gc``, reason and fix).

    These are errors, not warnings: each one loses data on a registry in ordinary use
    (distribution#3045, #1803/#4569, #3178). ``config.load`` places them
    on their lines; kept here because the judgement is about the model, not the file.
    ``gated`` says whether the policy puts a write gate in front of the registry: True
    keeps writes away like ``writes: gate``; False makes ``writes: gate`` an error; None
    (no gate to look at) takes ``writes: gate`` at its word.
    """
    problems = _untagged_problems(gc)
    if gc.mode == "none":
        return problems
    problems += _pairing_problems(gc)
    if gated is False and gc.writes == "gate":
        problems.append((("writes",), "says gate, but the policy has no gate: section"))
    if gc.runs_beside_live_registry and not gated:
        problems.append(_live_registry_problem(gc))
    cache = _cache_problem(gc)
    if cache is not None:
        problems.append(cache)
    return problems


def _untagged_problems(gc: GarbageCollection) -> list[tuple[tuple[str, ...], str]]:
    why = (
        "on Distribution 2.x garbage-collect --delete-untagged deletes the platform manifests "
        "of multi-arch images whose index is still tagged (distribution#3178); retention "
        "deletes untagged manifests itself, by digest"
    )
    problems: list[tuple[tuple[str, ...], str]] = []
    if gc.delete_untagged:
        problems.append((("delete_untagged",), f"{why}: remove it or set false"))
    flags = [word for word in gc.command if _passes_delete_untagged(word)]
    if flags:
        problems.append((("command",), f"{why}: remove {' and '.join(flags)}"))
    return problems


def _pairing_problems(gc: GarbageCollection) -> list[tuple[tuple[str, ...], str]]:
    pairs = (("readonly_start", "readonly_stop"), ("stop_command", "start_command"))
    problems: list[tuple[tuple[str, ...], str]] = []
    for first, second in pairs:
        given = [key for key in (first, second) if getattr(gc, key) is not None]
        if len(given) == 1:
            missing = second if given[0] == first else first
            problems.append(((given[0],), f"needs gc.{missing} too, or the registry stays changed"))
    if gc.mode == "docker":
        hooks = ("readonly_start", "readonly_stop", "stop_command", "start_command")
        problems += [
            ((key,), "is for gc.mode command; docker mode stops the container itself")
            for key in hooks
            if getattr(gc, key) is not None
        ]
    return problems


def _live_registry_problem(gc: GarbageCollection) -> tuple[tuple[str, ...], str]:
    where = ("strategy",) if gc.mode == "docker" else ("mode",)
    fix = (
        "use strategy: offline"
        if gc.mode == "docker"
        else "set gc.readonly_start and gc.readonly_stop (restart the registry with "
        "REGISTRY_STORAGE_MAINTENANCE_READONLY='{\"enabled\":true}' and back), or "
        "gc.stop_command and gc.start_command"
    )
    return (
        where,
        "garbage collection would run beside a registry that accepts pushes, and can delete "
        f"layers of a push in progress (distribution#3045); {fix}, or declare who blocks "
        "writes with gc.writes: gate (the write gate) or none (nothing pushes during a pass)",
    )


def _cache_problem(gc: GarbageCollection) -> tuple[tuple[str, ...], str] | None:
    """A blob-descriptor cache that outlives GC makes the registry accept broken pushes."""
    stale = (
        "after GC the registry still answers 'present' for swept blobs and accepts "
        "manifests over them (distribution#1803, #4569)"
    )
    if gc.blob_cache == "redis" and gc.restart_command is None:
        return (
            ("blob_cache",),
            f"a redis blob-descriptor cache survives a restart: {stale}; set "
            "gc.restart_command to flush it (e.g. [redis-cli, -n, '0', FLUSHDB])",
        )
    if gc.blob_cache == "inmemory" and not gc.restarts_registry:
        return (
            ("blob_cache",),
            f"the registry's inmemory blob-descriptor cache is kept: {stale}; set "
            "gc.restart_command (or stop/start or read-only hooks), or blob_cache: none "
            "if the registry's config has no storage.cache.blobdescriptor",
        )
    return None


class Storage(_Strict):
    """Where the registry keeps its data, for ``du`` (inside the container in docker mode)."""

    path: Path | None = None


_CRON_FIELDS = 5
_LISTEN = re.compile(r"(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.\-]+):(\d{1,5})")


class Schedule(_Strict):
    """When ``retention serve`` runs a pass: a crontab line or a fixed interval."""

    cron: str | None = None
    interval: PositiveDuration | None = None
    timezone: str = "UTC"
    jitter: Duration | None = None
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_trigger(self) -> Schedule:
        if self.cron is not None and self.interval is not None:
            raise PydanticCustomError("schedule", "set cron or interval, not both", {})
        if self.cron is not None and len(self.cron.split()) != _CRON_FIELDS:
            raise PydanticCustomError(
                "schedule",
                "cron {value} needs 5 fields (minute hour day month weekday)",
                {"value": repr(self.cron)},
            )
        return self

    @property
    def effective_cron(self) -> str | None:
        """The crontab line in force: the default is 03:00 daily when neither is set."""
        if self.interval is not None:
            return None
        return self.cron or "0 3 * * *"


DEFAULT_PORT = 9478  # not Prometheus's own 9090, which a sidecar next to it would clash with
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _env_name(value: str) -> str:
    if not _ENV_NAME.fullmatch(value):
        raise PydanticCustomError(
            "token", "{value} is not an environment variable name", {"value": repr(value)}
        )
    return value


EnvName = Annotated[str, AfterValidator(_env_name)]


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


class Server(_Strict):
    """The daemon's HTTP endpoint: health, readiness, metrics, reports, manual runs.

    The token that guards the state-changing endpoints (``POST /run``) is read from a file
    or an environment variable, never written here: a policy file is shared, reviewed and
    committed. Fields are validated in order, so the token keys come before ``listen``
    and the refusal of an open, unguarded port points at the ``listen`` line.
    """

    token_file: Path | None = None
    token_env: EnvName | None = None
    protect_report: bool = False
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    request_timeout: PositiveDuration = timedelta(seconds=10)
    max_body_bytes: Annotated[int, Field(ge=0, le=1 << 20)] = 64 * 1024

    @field_validator("token_env")
    @classmethod
    def _one_token_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("token_file") is not None:
            raise PydanticCustomError("token", "set token_file or token_env, not both", {})
        return value

    @field_validator("protect_report")
    @classmethod
    def _report_needs_token(cls, value: bool, info: ValidationInfo) -> bool:
        tokens = (info.data.get("token_file"), info.data.get("token_env"))
        if value and all(t is None for t in tokens):
            raise PydanticCustomError(
                "token", "protect_report needs server.token_file or server.token_env", {}
            )
        return value

    @field_validator("listen")
    @classmethod
    def _host_and_port(cls, value: str, info: ValidationInfo) -> str:
        match = _LISTEN.fullmatch(value)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise PydanticCustomError(
                "listen",
                "{value} is not host:port (e.g. 127.0.0.1:{port})",
                {"value": repr(value), "port": DEFAULT_PORT},
            )
        tokens = (info.data.get("token_file"), info.data.get("token_env"))
        host = value.rsplit(":", 1)[0].strip("[]")
        if not is_loopback(host) and all(t is None for t in tokens):
            raise PydanticCustomError(
                "listen",
                "{value} is reachable from other machines and POST /run deletes images: set "
                "server.token_file or server.token_env (a bearer token), or listen on "
                "127.0.0.1",
                {"value": repr(value)},
            )
        return value

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def has_token(self) -> bool:
        return self.token_file is not None or self.token_env is not None


NotifyEvent = Literal["deleted", "failed", "held", "verification_problem"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = ("deleted", "failed", "held", "verification_problem")


def _http_url(value: str) -> str:
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", value):
        raise PydanticCustomError(
            "notify", "{value} is not an http:// or https:// URL", {"value": repr(value)}
        )
    return value


class NotifyTarget(_Strict):
    """Where to say what a pass did: a webhook (generic JSON, Slack, Teams) or a command.

    Secrets belong in the URL's path (Slack) or a header: write them as ``${VAR}``.
    """

    name: Annotated[str, Field(min_length=1)]
    type: Literal["webhook", "slack", "teams", "command"]
    url: Annotated[str, AfterValidator(_http_url)] | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    command: Command | None = None
    events: tuple[NotifyEvent, ...] = NOTIFY_EVENTS
    timeout: PositiveDuration = timedelta(seconds=10)
    retries: Annotated[int, Field(ge=0, le=10)] = 3

    @model_validator(mode="after")
    def _target_fits_type(self) -> NotifyTarget:
        if self.type == "command":
            if self.command is None or self.url is not None:
                raise PydanticCustomError(
                    "notify", "a command target needs command (and no url)", {}
                )
        elif self.url is None or self.command is not None:
            raise PydanticCustomError(
                "notify", "a {type} target needs url (and no command)", {"type": self.type}
            )
        if self.headers and self.type == "command":
            raise PydanticCustomError("notify", "headers are for webhooks, not commands", {})
        return self


class Audit(_Strict):
    """``state_dir/audit.jsonl``: one line per deleted or restored manifest, kept by size."""

    max_bytes: Annotated[int, Field(ge=1024)] = 10 * 1024 * 1024
    keep: Annotated[int, Field(ge=1, le=100)] = 5


_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")  # an HTTP token (RFC 9110)


def _header_name(value: str) -> str:
    if not _HEADER_NAME.fullmatch(value):
        raise PydanticCustomError(
            "header", "{value} is not an HTTP header name", {"value": repr(value)}
        )
    return value


class Notifications(_Strict):
    """``retention serve`` receives Distribution's webhook events on ``POST /events``.

    They give push and pull times on every storage backend. The shared secret the
    registry sends in ``header`` is named here (a file or an environment variable), never
    written here: the policy file is often committed. ``Authorization`` carries it as
    ``Bearer <secret>``, any other header carries the secret alone. ``pull_events``:
    Distribution reports a HEAD on a manifest as a pull, and kubelet's freshness checks
    (``imagePullPolicy: Always``) are HEADs, so by default they count as pulls.
    """

    enabled: bool = False
    secret_file: Path | None = None
    secret_env: Annotated[str, Field(min_length=1)] | None = None
    header: Annotated[str, AfterValidator(_header_name)] = "Authorization"
    pull_events: Literal["get", "get_and_head"] = "get_and_head"

    @field_validator("secret_env")
    @classmethod
    def _one_secret_source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("secret_file") is not None:
            raise PydanticCustomError("secret", "set secret_file or secret_env, not both", {})
        return value

    @model_validator(mode="after")
    def _secret_when_enabled(self) -> Notifications:
        if self.enabled and self.secret_file is None and self.secret_env is None:
            raise PydanticCustomError(
                "secret",
                "enabled needs secret_file or secret_env: the registry must authenticate",
                {},
            )
        return self

    @property
    def counts_head(self) -> bool:
        return self.pull_events == "get_and_head"


def _listen_address(value: str) -> str:
    match = _LISTEN.fullmatch(value)
    if match is None or not 0 < int(match.group(2)) < 65536:
        raise PydanticCustomError(
            "listen", "{value} is not host:port (e.g. 0.0.0.0:5000)", {"value": repr(value)}
        )
    return value


ListenAddress = Annotated[str, AfterValidator(_listen_address)]


class Gate(_Strict):
    """The write gate: a reverse proxy in front of the registry, run by ``retention serve``.

    Clients talk to ``listen``; the gate forwards to ``upstream`` (the registry, which
    should listen on loopback only). Around GC it drains writes for at most
    ``drain_timeout`` and then answers them as a read-only registry does; an upload
    session idle for ``abandon_after`` no longer holds the drain up.
    """

    listen: ListenAddress
    upstream: RegistryUrl
    drain_timeout: PositiveDuration = timedelta(minutes=5)
    abandon_after: PositiveDuration = timedelta(minutes=30)

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class Reports(_Strict):
    """How many pass reports the daemon keeps in ``state_dir/reports``."""

    keep: Annotated[int, Field(ge=1)] = 30


class Policy(_Strict):
    """A whole policy file."""

    registry: RegistrySettings
    rules: tuple[Rule, ...] = ()
    protect: tuple[Regex, ...] = ()
    in_use: tuple[InUseSource, ...] = ()
    safety: Safety = Safety()
    artifacts: Artifacts = Artifacts()
    gc: GarbageCollection = GarbageCollection()
    trash: Trash = Trash()
    verify: Verify = Verify()
    storage: Storage = Storage()
    # Where tags and manifests are read: the registry's API, or its filesystem storage
    # (storage.path, on this host) when the registry's volume is mounted here.
    scan: Literal["api", "storage"] = "api"
    untagged: UntaggedManifests | None = None
    schedule: Schedule = Schedule()
    server: Server = Server()
    gate: Gate | None = None
    reports: Reports = Reports()
    notifications: Notifications = Notifications()
    notify: tuple[NotifyTarget, ...] = ()
    audit: Audit = Audit()
    state_dir: Path = Path("/var/lib/retention")

    @model_validator(mode="after")
    def _storage_scan_needs_a_local_path(self) -> Policy:
        if self.scan == "storage" and (self.storage.path is None or self.gc.mode == "docker"):
            raise PydanticCustomError(
                "storage_scan",
                "scan: storage reads storage.path on this host; set storage.path to the "
                "registry's rootdirectory (with gc.mode docker it is a path in the container)",
            )
        return self

    @field_validator("untagged")
    @classmethod
    def _untagged_needs_a_local_path(
        cls, value: UntaggedManifests | None, info: ValidationInfo
    ) -> UntaggedManifests | None:
        storage, gc = info.data.get("storage"), info.data.get("gc")
        if value is None or not isinstance(storage, Storage):
            return value
        if storage.path is None or (isinstance(gc, GarbageCollection) and gc.mode == "docker"):
            raise PydanticCustomError(
                "untagged",
                "untagged: needs storage.path on this host: the registry API cannot list "
                "manifests no tag points at, only the filesystem storage can (with gc.mode "
                "docker, storage.path is a path in the container)",
            )
        return value

    @model_validator(mode="after")
    def _unique_rule_names(self) -> Policy:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise PydanticCustomError(
                    "rule_name", "rule name {name} is used twice", {"name": repr(rule.name)}
                )
            seen.add(rule.name)
        return self

    @field_validator("gate")
    @classmethod
    def _gate_apart_from_server(cls, value: Gate | None, info: ValidationInfo) -> Gate | None:
        server = info.data.get("server")
        if value is not None and isinstance(server, Server) and server.port == value.port:
            raise PydanticCustomError(
                "listen",
                "gate.listen and server.listen use the same port {port}",
                {"port": value.port},
            )
        return value

    def protecting_pattern(self, tag: str) -> str | None:
        """The first ``protect`` pattern that fully matches ``tag``, if any."""
        return next((p.pattern for p in self.protect if p.fullmatch(tag)), None)

    def rule_for(self, repository: str, tag: str) -> Rule | None:
        return next((r for r in self.rules if r.claims(repository, tag)), None)


def policy_from_mapping(data: Any) -> Policy:
    """Validate already-parsed data; raises pydantic's ValidationError with every problem."""
    return Policy.model_validate(data)
