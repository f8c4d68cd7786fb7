"""The policy model: what an operator can say in ``policies.yml``, and nothing more.

Pure: no file or network access. ``config.py`` turns YAML into these models and maps
validation errors back to file lines; the planner reads them. Every model is frozen and
forbids unknown keys, because a typo such as ``keep_lst`` must not silently disable a rule.
"""

from __future__ import annotations

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


class Safety(_Strict):
    """Budgets that stop a wrong policy from emptying a registry."""

    max_deletions: Annotated[int, Field(ge=0)] = 1000
    max_delete_fraction: Annotated[float, Field(gt=0, le=1)] = 0.9
    grace_period: Duration = timedelta(hours=1)


class Artifacts(_Strict):
    """Signatures, attestations and SBOMs (cosign tags, OCI ``subject``) follow their image."""

    delete_orphans: bool = False


class Trash(_Strict):
    """Deleted manifests are saved in ``state_dir/trash`` and pruned after ``keep``."""

    keep: Duration = timedelta(days=14)


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
    (exec) or a one-off container of its image (offline) in docker mode.
    """

    mode: Literal["none", "command", "docker"] = "none"
    command: Command = ("registry", "garbage-collect", "/etc/docker/registry/config.yml")
    stop_command: Command | None = None
    start_command: Command | None = None
    delete_untagged: bool = False
    timeout: PositiveDuration = timedelta(hours=1)
    container: str = "registry"
    strategy: Literal["exec", "offline"] = "offline"
    docker_host: str | None = None
    ready_timeout: PositiveDuration = timedelta(seconds=60)
    delay: Duration = timedelta(0)

    @property
    def runs_beside_live_registry(self) -> bool:
        """GC while the registry serves pushes, with no restart to flush its blob cache."""
        if self.mode == "command":
            return self.stop_command is None
        return self.mode == "docker" and self.strategy == "exec"


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


class Server(_Strict):
    """The daemon's HTTP endpoint: health, readiness, metrics, reports, manual runs."""

    listen: str = "127.0.0.1:9090"

    @model_validator(mode="after")
    def _host_and_port(self) -> Server:
        match = _LISTEN.fullmatch(self.listen)
        if match is None or not 0 < int(match.group(2)) < 65536:
            raise PydanticCustomError(
                "listen",
                "{value} is not host:port (e.g. 127.0.0.1:9090)",
                {"value": repr(self.listen)},
            )
        return self

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
    safety: Safety = Safety()
    artifacts: Artifacts = Artifacts()
    gc: GarbageCollection = GarbageCollection()
    trash: Trash = Trash()
    verify: Verify = Verify()
    storage: Storage = Storage()
    # Where tags and manifests are read: the registry's API, or its filesystem storage
    # (storage.path, on this host) when the registry's volume is mounted here.
    scan: Literal["api", "storage"] = "api"
    schedule: Schedule = Schedule()
    server: Server = Server()
    reports: Reports = Reports()
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

    def protecting_pattern(self, tag: str) -> str | None:
        """The first ``protect`` pattern that fully matches ``tag``, if any."""
        return next((p.pattern for p in self.protect if p.fullmatch(tag)), None)

    def rule_for(self, repository: str, tag: str) -> Rule | None:
        return next((r for r in self.rules if r.claims(repository, tag)), None)


def policy_from_mapping(data: Any) -> Policy:
    """Validate already-parsed data; raises pydantic's ValidationError with every problem."""
    return Policy.model_validate(data)
