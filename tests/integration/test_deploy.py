"""``deploy/``: every file parses, every policy passes ``retention check``, and the parts agree.

The deployment files repeat facts that must stay equal: the policy's ``server.listen`` port is
the port the probes, the Service and the published port name; its ``storage.path`` is where
the registry and the sidecar mount the storage and where the registry config keeps it; the
compose file's ``container_name`` is the policy's ``gc.container``. These tests read both
sides. No image is built (none can be pulled here): the Dockerfile's pip steps run in a
fresh venv instead, taken from the Dockerfile itself so they cannot drift.

External tools: ``docker-compose`` (or ``docker compose``), ``systemd-analyze`` and the
``kubernetes-validate`` package are used when installed. A missing one skips its test, unless
the CI install script (or the test extras) installs it: then it is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cli_support import retention
from registry_server import free_port, public_tls, registry_binary

from retention.cli import serve
from retention.config.load import load_policy
from retention.core.policy import Policy
from retention.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
CI_INSTALLERS = (ROOT / ".ci" / "run", ROOT / "tests" / "install.sh", ROOT / "pyproject.toml")
ENVIRONMENT = {"REGISTRY_PASSWORD": "test-password"}
POLICY_IN_CONTAINER = "/etc/retention/policies.yml"


def serve_stop_timeout_s() -> float:
    """How long ``retention serve`` waits on SIGTERM for a pass (whose GC may have the
    registry stopped); every supervisor here must wait longer before it kills."""
    option = next(p for p in serve.params if p.name == "stop_timeout")
    return float(option.default)  # type: ignore[arg-type]


# -- finding the policies -------------------------------------------------------------------


@dataclass(frozen=True)
class PolicySource:
    """A policy file under deploy/, or one embedded in a Kubernetes ConfigMap."""

    name: str
    text: str

    def write(self, directory: Path) -> Path:
        path = directory / "policies.yml"
        path.write_text(self.text, encoding="utf-8")
        return path

    def load(self) -> Policy:
        """The policy model, for the tests that compare it with the other files."""
        return load_policy_text(self.text)


def load_policy_text(text: str, environ: Mapping[str, str] = ENVIRONMENT) -> Policy:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "policies.yml"
        path.write_text(text, encoding="utf-8")
        return load_policy(path, environ=environ)


def looks_like_policy(document: object) -> bool:
    return isinstance(document, dict) and isinstance(document.get("registry"), dict)


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml"})


def documents(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def find_policies() -> list[PolicySource]:
    """Every policy under deploy/: whole files, and ConfigMap values that are policies."""
    found = []
    for path in yaml_files():
        name = str(path.relative_to(DEPLOY))
        text = path.read_text(encoding="utf-8")
        for document in documents(path):
            if looks_like_policy(document):
                found.append(PolicySource(name, text))
            elif isinstance(document, dict) and document.get("kind") == "ConfigMap":
                for key, value in document.get("data", {}).items():
                    if looks_like_policy(yaml.safe_load(value)):
                        found.append(PolicySource(f"{name}:{document['metadata']['name']}", value))
                        assert key == "policies.yml", f"{name}: mount the policy as policies.yml"
    return found


POLICIES = find_policies()
BY_NAME = {source.name: source for source in POLICIES}
WITH_PASSWORD = [s for s in POLICIES if "password" in yaml.safe_load(s.text)["registry"]]
# `retention run` (the CronJob) ignores schedule and server.
SERVED = [s for s in POLICIES if not s.name.startswith("kubernetes/cronjob.yaml")]


def policy(name: str) -> Policy:
    return BY_NAME[name].load()


def test_the_policies_of_every_deployment_are_found() -> None:
    assert set(BY_NAME) >= {
        "policies/compose-offline.yml",
        "policies/compose-command.yml",
        "kubernetes/configmap.yaml:retention-policy",
        "kubernetes/cronjob.yaml:retention-cronjob-policy",
        "systemd/policies.yml",
    }


# -- every policy passes `retention check` --------------------------------------------------


@pytest.mark.parametrize("source", POLICIES, ids=[s.name for s in POLICIES])
def test_policy_passes_retention_check_without_warnings(
    source: PolicySource, tmp_path: Path
) -> None:
    result = retention("check", "-c", str(source.write(tmp_path)), env=ENVIRONMENT)

    assert result.code == 0, result.stderr
    assert "ok" in result.stdout
    # A GC program that lives in the container, not on this host, is said, and only that.
    warnings = [w for w in result.stderr.splitlines() if w.startswith("warning:")]
    assert [w for w in warnings if "program not found" not in w] == [], result.stderr
    assert not source.load().gc.runs_beside_live_registry


@pytest.mark.parametrize("source", WITH_PASSWORD, ids=[s.name for s in WITH_PASSWORD])
def test_a_policy_password_comes_from_the_environment(source: PolicySource) -> None:
    with pytest.raises(ConfigError, match="REGISTRY_PASSWORD"):
        load_policy_text(source.text, environ={})


@pytest.mark.parametrize("source", SERVED, ids=[s.name for s in SERVED])
def test_serve_policies_start_with_a_dry_run_week_and_listen_where_they_can_be_reached(
    source: PolicySource,
) -> None:
    loaded = source.load()
    assert loaded.schedule.dry_run, "the deploy examples start with reports only"
    in_container = not source.name.startswith("systemd/")
    assert (loaded.server.host == "0.0.0.0") is in_container


# -- docker-compose -------------------------------------------------------------------------


COMPOSE_FILE = DEPLOY / "docker-compose.yml"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return loaded


def with_defaults(text: str) -> str:
    """``${VAR:-default}`` as compose reads it when VAR is unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def test_compose_serves_the_offline_policy_from_the_read_only_policies_directory() -> None:
    """The directory is mounted, not the file, so an edited policy reaches SIGHUP."""
    sidecar = compose()["services"]["retention"]
    assert "./policies:/etc/retention:ro" in sidecar["volumes"]
    serve_command = [with_defaults(word) for word in sidecar["command"]]
    assert serve_command == ["serve", "-c", "/etc/retention/compose-offline.yml"]


def test_compose_container_name_is_the_offline_policys_gc_container() -> None:
    registry = compose()["services"]["registry"]
    assert registry["container_name"] == policy("policies/compose-offline.yml").gc.container


def test_compose_registry_allows_deletes_and_shares_its_environment_with_the_sidecar() -> None:
    services = compose()["services"]
    assert services["registry"]["environment"]["REGISTRY_STORAGE_DELETE_ENABLED"] == "true"
    sidecar = services["retention"]["environment"]
    assert sidecar.items() >= services["registry"]["environment"].items()
    assert set(sidecar) - set(services["registry"]["environment"]) == {"RETENTION_SERVER_TOKEN"}


@pytest.mark.parametrize("source", SERVED, ids=[s.name for s in SERVED])
def test_every_policy_listening_beyond_loopback_takes_its_token_from_the_environment(
    source: PolicySource,
) -> None:
    server = source.load().server
    assert server.token_file is None
    assert (server.token_env == "RETENTION_SERVER_TOKEN") is (server.host != "127.0.0.1")


def mount_targets(service: Mapping[str, Any]) -> dict[str, str]:
    """target -> source, for short volume strings and for the long form that
    ``docker compose config`` prints."""
    mounts = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = with_defaults(volume).split(":")[:2]
            mounts[target] = source
        else:
            mounts[volume["target"]] = volume["source"]
    return mounts


def test_compose_sidecar_shares_the_storage_at_the_command_policys_storage_path() -> None:
    services = compose()["services"]
    storage = str(policy("policies/compose-command.yml").storage.path)
    sidecar = mount_targets(services["retention"])
    assert mount_targets(services["registry"])[storage] == sidecar[storage]
    assert sidecar["/var/run/docker.sock"] == "/var/run/docker.sock"


@pytest.mark.parametrize("name", ["policies/compose-offline.yml", "policies/compose-command.yml"])
def test_compose_publishes_the_policys_port_and_its_url_names_the_registry_service(
    name: str,
) -> None:
    loaded = policy(name)
    published = compose()["services"]["retention"]["ports"]
    assert loaded.gate is not None, "compose clients reach the registry through the gate"
    assert [p.rsplit(":", 1)[1] for p in published] == [
        str(loaded.gate.port),
        str(loaded.server.port),
    ]
    assert loaded.registry.base_url == loaded.gate.upstream == "http://registry:5000"
    assert "ports" not in compose()["services"]["registry"]


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


def require_tool(found: object, tool: str, package: str, source: str = "Debian package") -> None:
    """Skip without the tool, unless CI installs it (install script, test extras): then fail."""
    if found:
        return
    named = re.compile(rf"(?<![\w-]){re.escape(package)}(?![\w-])")
    installed_by_ci = any(named.search(p.read_text()) for p in CI_INSTALLERS if p.exists())
    reason = f"{tool} is not installed ({source} {package})"
    if installed_by_ci:
        pytest.fail(f"{reason}, although the CI install script installs it")
    pytest.skip(reason)


@pytest.mark.parametrize("name", ["compose-offline.yml", "compose-command.yml"])
def test_compose_file_passes_compose_config(name: str) -> None:
    command = compose_command()
    require_tool(command, "docker-compose / docker compose", "docker-compose")
    assert command is not None
    environment = {**os.environ, "RETENTION_POLICY": name}
    done = subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    sidecar = mount_targets(services["retention"])
    assert services["retention"]["command"] == ["serve", "-c", f"/etc/retention/{name}"]
    assert (Path(sidecar["/etc/retention"]) / name).is_file()
    assert sidecar["/var/lib/registry"] == mount_targets(services["registry"])["/var/lib/registry"]


# -- Kubernetes -----------------------------------------------------------------------------


def kubernetes_objects() -> list[dict[str, Any]]:
    return [d for path in sorted(KUBERNETES.glob("*.yaml")) for d in documents(path)]


def kubernetes_object(kind: str, name: str) -> dict[str, Any]:
    for document in kubernetes_objects():
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise AssertionError(f"no {kind} {name} in deploy/kubernetes")


def container(pod_spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in pod_spec["containers"] if c["name"] == name)
    return found


def mounts_by_path(spec: Mapping[str, Any]) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in spec.get("volumeMounts", [])}


def container_port(spec: Mapping[str, Any], port: str | int) -> int:
    if isinstance(port, int):
        return port
    return int(next(p["containerPort"] for p in spec["ports"] if p["name"] == port))


@pytest.mark.parametrize("path", sorted(KUBERNETES.glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_file_holds_named_objects(path: Path) -> None:
    for document in documents(path):
        assert {"apiVersion", "kind", "metadata"} <= set(document), path.name
        assert document["metadata"]["name"]


def test_kubernetes_objects_match_the_api_schemas_strictly() -> None:
    """Unknown fields (a typo such as concurrencyPolicyy) fail; 1.29 is the oldest we target."""
    found = importlib.util.find_spec("kubernetes_validate")
    require_tool(found, "kubernetes_validate", "kubernetes-validate", source="PyPI package")
    files = [str(p) for p in sorted(KUBERNETES.glob("*.yaml"))]
    validate = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", "-k", "1.29.0"]
    done = subprocess.run(
        [*validate, *files], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_files_hold_the_expected_kinds() -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in kubernetes_objects()}
    assert kinds == {
        ("Secret", "registry-credentials"),
        ("ConfigMap", "registry-config"),
        ("ConfigMap", "retention-policy"),
        ("ConfigMap", "retention-cronjob-policy"),
        ("PersistentVolumeClaim", "registry-data"),
        ("Deployment", "registry"),
        ("Service", "registry"),
        ("Service", "registry-retention"),
        ("CronJob", "retention"),
    }


def registry_pod() -> dict[str, Any]:
    spec: dict[str, Any] = kubernetes_object("Deployment", "registry")["spec"]["template"]["spec"]
    return spec


def sidecar_policy() -> Policy:
    return policy("kubernetes/configmap.yaml:retention-policy")


def test_sidecar_probes_healthz_and_readyz_on_the_policys_listen_port() -> None:
    sidecar = container(registry_pod(), "retention")
    listen = sidecar_policy().server
    liveness, readiness = sidecar["livenessProbe"]["httpGet"], sidecar["readinessProbe"]["httpGet"]
    assert (liveness["path"], readiness["path"]) == ("/healthz", "/readyz")
    assert container_port(sidecar, liveness["port"]) == listen.port
    assert container_port(sidecar, readiness["port"]) == listen.port
    assert listen.host == "0.0.0.0"


def test_sidecar_and_registry_share_the_storage_volume_at_the_policys_storage_path() -> None:
    pod = registry_pod()
    storage = str(sidecar_policy().storage.path)
    registry_mounts = mounts_by_path(container(pod, "registry"))
    sidecar_mounts = mounts_by_path(container(pod, "retention"))
    assert registry_mounts[storage] == sidecar_mounts[storage]
    volume = next(v for v in pod["volumes"] if v["name"] == sidecar_mounts[storage])
    assert volume["persistentVolumeClaim"]["claimName"] == "registry-data"


def registry_config() -> dict[str, Any]:
    text = kubernetes_object("ConfigMap", "registry-config")["data"]["config.yml"]
    loaded: dict[str, Any] = yaml.safe_load(text)
    return loaded


def test_the_registry_config_stores_where_the_policy_measures_and_allows_deletes() -> None:
    storage = registry_config()["storage"]
    assert storage["filesystem"]["rootdirectory"] == str(sidecar_policy().storage.path)
    assert storage["delete"]["enabled"] is True
    assert "cache" not in storage, "GC runs beside this registry: no inmemory blob cache"


def test_gc_reads_the_registry_config_that_both_containers_mount() -> None:
    pod = registry_pod()
    config_file = Path(sidecar_policy().gc.command[-1])
    registry_mounts = mounts_by_path(container(pod, "registry"))
    sidecar_mounts = mounts_by_path(container(pod, "retention"))
    directory = str(config_file.parent)
    assert registry_mounts[directory] == sidecar_mounts[directory]
    volume = next(v for v in pod["volumes"] if v["name"] == sidecar_mounts[directory])
    assert volume["configMap"]["name"] == "registry-config"
    assert config_file.name == "config.yml"


def test_the_registry_binary_accepts_the_kubernetes_registry_config(tmp_path: Path) -> None:
    binary = registry_binary()
    if binary is None:
        pytest.fail("docker-registry (CNCF Distribution) is not installed; the tests need it")
    config = registry_config()
    config["storage"]["filesystem"]["rootdirectory"] = str(tmp_path / "storage")
    for directory in ("repositories", "blobs"):  # GC refuses a storage without them
        (tmp_path / "storage/docker/registry/v2" / directory).mkdir(parents=True)
    (tmp_path / "config.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [binary, "garbage-collect", "--dry-run", str(tmp_path / "config.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_sidecar_password_and_the_registry_htpasswd_come_from_one_secret(
    tmp_path: Path,
) -> None:
    secret = kubernetes_object("Secret", "registry-credentials")
    environment = {e["name"]: e for e in container(registry_pod(), "retention")["env"]}
    reference = environment["REGISTRY_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert reference["name"] == secret["metadata"]["name"]
    password = secret["stringData"][reference["key"]]
    htpasswd_tool = shutil.which("htpasswd")
    require_tool(htpasswd_tool, "htpasswd", "apache2-utils")
    assert htpasswd_tool is not None
    htpasswd = tmp_path / "htpasswd"
    htpasswd.write_text(secret["stringData"]["htpasswd"])
    username = str(sidecar_policy().registry.username)
    verify = [htpasswd_tool, "-vb", str(htpasswd), username, password]
    done = subprocess.run(verify, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"the example htpasswd does not match the password: {done.stderr}"
    assert "$2y$" in htpasswd.read_text(), "the registry accepts bcrypt only"


def test_the_deployment_runs_one_replica_recreated_and_as_one_uid() -> None:
    spec = kubernetes_object("Deployment", "registry")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    assert registry_pod()["securityContext"]["runAsUser"] == 10001


def test_the_metrics_service_is_annotated_for_prometheus_at_the_sidecar_port() -> None:
    service = kubernetes_object("Service", "registry-retention")
    annotations = service["metadata"]["annotations"]
    sidecar = container(registry_pod(), "retention")
    port = service["spec"]["ports"][0]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == sidecar_policy().server.port
    assert container_port(sidecar, port["targetPort"]) == sidecar_policy().server.port
    pod_labels = kubernetes_object("Deployment", "registry")["spec"]["template"]["metadata"]
    assert service["spec"]["selector"].items() <= pod_labels["labels"].items()


def test_the_cronjob_never_runs_two_passes_and_shares_the_registry_storage() -> None:
    cronjob = kubernetes_object("CronJob", "retention")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]
    job = container(pod["spec"], "retention")
    job_policy = policy("kubernetes/cronjob.yaml:retention-cronjob-policy")
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert job["args"][0] == "run"
    volume_name = mounts_by_path(job)[str(job_policy.storage.path)]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == volume_name)
    assert volume["persistentVolumeClaim"]["claimName"] == "registry-data"
    assert job_policy.registry.base_url == "http://registry:5000"
    registry_selector = kubernetes_object("Service", "registry")["spec"]["selector"]
    assert not registry_selector.items() <= pod["metadata"]["labels"].items()


# -- systemd --------------------------------------------------------------------------------


UNIT = DEPLOY / "systemd" / "retention.service"


def unit_settings() -> dict[str, list[str]]:
    """Key -> every value given to it, over all sections (systemd allows repeats)."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_the_unit_serves_the_policy_reloads_on_hup_and_restarts_on_failure() -> None:
    settings = unit_settings()
    start = shlex.split(settings["ExecStart"][0])
    assert start[-3:] == ["serve", "-c", POLICY_IN_CONTAINER]
    assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert settings["Restart"] == ["on-failure"]


def test_the_unit_can_write_the_storage_and_state_and_does_not_stop_with_the_registry() -> None:
    settings = unit_settings()
    host_policy = policy("systemd/policies.yml")
    assert str(host_policy.storage.path) in settings["ReadWritePaths"][0].split()
    assert host_policy.state_dir == Path("/var/lib") / settings["StateDirectory"][0]
    assert host_policy.gc.readonly_start == ("systemctl", "start", "docker-registry-readonly")
    assert host_policy.gc.readonly_stop == ("systemctl", "start", "docker-registry")
    for dependency in ("Requires", "BindsTo", "PartOf", "Requisite"):
        assert dependency not in settings, f"{dependency}= would stop retention mid-GC"


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    require_tool(analyze, "systemd-analyze", "systemd")
    assert analyze is not None
    # verify insists that ExecStart's program exists; /opt/retention is not installed here.
    program = shlex.split(unit_settings()["ExecStart"][0])[0]
    stand_in = tmp_path / "retention"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text(encoding="utf-8").replace(program, str(stand_in)))
    readonly = tmp_path / READONLY_UNIT.name
    registry = tmp_path / "docker-registry"
    registry.write_text("#!/bin/sh\n")
    registry.chmod(0o755)
    readonly.write_text(
        READONLY_UNIT.read_text(encoding="utf-8").replace("/usr/bin/docker-registry", str(registry))
    )
    for path in (unit, readonly):
        done = subprocess.run(
            [analyze, "verify", str(path)], capture_output=True, text=True, timeout=30, check=False
        )
        # verify exits 0 on unknown keys and bad values too, and only says so: any output fails.
        assert done.returncode == 0, done.stderr
        assert (done.stdout + done.stderr).strip() == "", path.name


READONLY_UNIT = DEPLOY / "systemd" / "docker-registry-readonly.service"


def readonly_unit_environment() -> dict[str, str]:
    """The read-only unit's Environment=, unquoted the way systemd does it."""
    environment = {}
    for line in READONLY_UNIT.read_text(encoding="utf-8").splitlines():
        if line.startswith("Environment="):
            for assignment in shlex.split(line.removeprefix("Environment=")):
                key, _, value = assignment.partition("=")
                environment[key] = value
    return environment


def test_the_read_only_unit_conflicts_with_the_registry_and_serves_its_config() -> None:
    settings = {}
    for line in READONLY_UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    assert settings["Conflicts"] == "docker-registry.service"
    assert settings["User"] == "docker-registry"
    assert "[Install]" not in READONLY_UNIT.read_text(encoding="utf-8"), "never enabled"
    assert settings["ExecStart"].endswith("serve /etc/docker/registry/config.yml")


def test_the_read_only_units_environment_makes_registry_2_8_refuse_pushes_and_serve_pulls(
    tmp_path: Path,
) -> None:
    """The unit's exact value, given to the real binary: 405 on a push, 200 on /v2/."""
    binary = registry_binary()
    if binary is None:
        pytest.fail("docker-registry (CNCF Distribution) is not installed; the tests need it")
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(
        json.dumps(
            {
                "version": 0.1,
                "storage": {"filesystem": {"rootdirectory": str(tmp_path / "storage")}},
                "http": {"addr": f"127.0.0.1:{port}"},
            }
        )
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    environment.update(readonly_unit_environment())
    assert environment["REGISTRY_STORAGE_MAINTENANCE_READONLY"] == '{"enabled":true}'
    with subprocess.Popen(
        [binary, "serve", str(config)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as server:
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and server.poll() is None:
                try:
                    assert (
                        httpx.get(f"{url}/v2/", trust_env=False, verify=public_tls()).status_code
                        == 200
                    )
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            assert server.poll() is None, "the registry did not start with that environment"
            push = httpx.post(f"{url}/v2/app/blobs/uploads/", trust_env=False, verify=public_tls())
            assert push.status_code == 405
        finally:
            server.terminate()
            server.wait(timeout=10)


def test_every_supervisor_waits_longer_than_serve_waits_for_a_running_pass() -> None:
    compose_grace = compose()["services"]["retention"]["stop_grace_period"]
    systemd_grace = unit_settings()["TimeoutStopSec"][0]
    pod = registry_pod()
    assert compose_grace.endswith("s") and systemd_grace.endswith("s")
    for seconds in (compose_grace[:-1], systemd_grace[:-1], pod["terminationGracePeriodSeconds"]):
        assert int(seconds) > serve_stop_timeout_s()
    assert unit_settings()["KillMode"] == ["mixed"], "SIGTERM to retention, not to its GC"


# -- the Dockerfile -------------------------------------------------------------------------


DOCKERFILE = DEPLOY / "Dockerfile"


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """(INSTRUCTION, arguments) per stage, continuation lines joined, comments dropped."""
    stages: list[list[tuple[str, str]]] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stages.append([])
        stages[-1].append((keyword.upper(), arguments.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [arguments for name, arguments in stage if name == keyword]


def pip_arguments(stage: list[tuple[str, str]], wheels: Path) -> list[str]:
    """The arguments of the stage's one ``python -m pip`` RUN, with our wheel directory.

    ``--no-cache-dir`` only keeps pip's cache out of an image layer; the host's cache makes
    this test fast. ``--mount`` flags are BuildKit's, not the command's.
    """
    (command,) = [run for run in instructions(stage, "RUN") if " pip " in run]
    argv = [word for word in shlex.split(command) if not word.startswith("--mount=")]
    assert argv[:3] == ["python", "-m", "pip"], command
    replaced = {"/wheels": str(wheels)}
    return [replaced.get(word, word) for word in argv[3:] if word != "--no-cache-dir"]


def copy_build_context(stage: list[tuple[str, str]], destination: Path) -> None:
    """What the build stage COPYs from the context, and nothing else."""
    for arguments in instructions(stage, "COPY"):
        *sources, target = shlex.split(arguments)
        assert not any(s.startswith("--") for s in sources), "the build stage copies the context"
        for source in sources:
            origin, to = ROOT / source, destination / target
            if origin.is_dir():  # COPY copies a directory's contents into the target
                ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                shutil.copytree(origin, to, ignore=ignore, dirs_exist_ok=True)
            else:
                assert target.endswith("/"), "copy files into a directory"
                to.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, to / origin.name)


@pytest.fixture(scope="module")
def image_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The image's two pip steps, run here: wheels from the copied context, then a venv."""
    work = tmp_path_factory.mktemp("image")
    build, final = dockerfile_stages()
    source, wheels, venv = work / "src", work / "wheels", work / "venv"
    copy_build_context(build, source)
    pip = [sys.executable, "-m", "pip"]
    run_checked([*pip, *pip_arguments(build, wheels)], cwd=source)
    # A venv without its own pip (ensurepip takes seconds); this pip installs into it.
    run_checked([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    # --no-compile: the image's bytecode is not under test, and compiling the kubernetes
    # client's thousand modules was a third of this fixture's CPU.
    venv_pip = [*pip, "--python", str(venv / "bin" / "python")]
    run_checked([*venv_pip, *pip_arguments(final, wheels), "--no-compile"], cwd=work, isolated=True)
    yield venv


def run_checked(argv: list[str], cwd: Path, isolated: bool = False) -> None:
    """Run a pip step; ``isolated`` drops the host's pip settings (extra find-links, indexes),
    so the offline install proves that the wheel directory alone is complete."""
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
    if isolated:
        environment = {k: v for k, v in environment.items() if not k.startswith("PIP_")}
        environment["PIP_CONFIG_FILE"] = os.devnull
    done = subprocess.run(
        argv, cwd=cwd, env=environment, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, f"{shlex.join(argv)}\n{done.stdout}\n{done.stderr}"


@pytest.mark.slow
def test_the_image_install_gives_a_working_retention_command(image_venv: Path) -> None:
    program = image_venv / "bin" / "retention"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    policy_file = DEPLOY / "policies" / "compose-offline.yml"

    version = subprocess.run([program, "--version"], capture_output=True, text=True, check=False)
    check = subprocess.run(
        [program, "check", "-c", str(policy_file)], capture_output=True, text=True, check=False
    )

    client = subprocess.run(
        [image_venv / "bin" / "python", "-c", "import kubernetes"], capture_output=True, check=False
    )

    assert version.returncode == 0, version.stderr
    assert project["version"] in version.stdout
    assert check.returncode == 0, check.stderr
    assert client.returncode == 0, "the image has the kubernetes extra (in_use: kubernetes)"


def test_the_image_copies_the_registry_binary_and_runs_serve_as_a_non_root_user() -> None:
    final = dockerfile_stages()[-1]
    copies = instructions(final, "COPY")
    assert "--from=registry:2 /bin/registry /bin/registry" in copies
    assert any(c.endswith("/etc/docker/registry/config.yml") for c in copies)
    assert json.loads(instructions(final, "ENTRYPOINT")[0]) == ["retention"]
    assert json.loads(instructions(final, "CMD")[0]) == ["serve", "-c", POLICY_IN_CONTAINER]
    user = instructions(final, "USER")[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0


def dockerfile_environment() -> dict[str, str]:
    pairs = [w for env in instructions(dockerfile_stages()[-1], "ENV") for w in shlex.split(env)]
    return dict(pair.split("=", 1) for pair in pairs)


def healthcheck_argv() -> list[str]:
    (healthcheck,) = instructions(dockerfile_stages()[-1], "HEALTHCHECK")
    argv: list[str] = json.loads(healthcheck.split(" CMD ", 1)[1])
    return argv


class _Healthz(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def healthz_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/healthz"
    finally:
        server.shutdown()
        server.server_close()


def test_the_healthcheck_needs_no_curl_and_asks_healthz_on_the_policy_port(
    healthz_url: str,
) -> None:
    port = policy("policies/compose-offline.yml").server.port
    assert dockerfile_environment()["HEALTHCHECK_URL"] == f"http://127.0.0.1:{port}/healthz"
    argv = healthcheck_argv()
    assert argv[0] == "python"
    command = [sys.executable, *argv[1:]]

    healthy = subprocess.run(
        command, env={**os.environ, "HEALTHCHECK_URL": healthz_url}, capture_output=True, timeout=30
    )
    closed = f"http://127.0.0.1:{free_port()}/healthz"
    unhealthy = subprocess.run(
        command, env={**os.environ, "HEALTHCHECK_URL": closed}, capture_output=True, timeout=30
    )

    assert healthy.returncode == 0, healthy.stderr
    assert unhealthy.returncode == 1, "Docker reads 1 as unhealthy (other codes are reserved)"


def test_the_dockerignore_lets_through_everything_the_build_stage_copies() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text(encoding="utf-8").splitlines()
    for arguments in instructions(dockerfile_stages()[0], "COPY"):
        for source in shlex.split(arguments)[:-1]:
            assert f"!{source}" in ignore, source


def test_kubernetes_clients_reach_the_registry_only_through_the_write_gate() -> None:
    """The Service's registry port is the gate's; the registry itself listens on loopback."""
    gate = sidecar_policy().gate
    assert gate is not None
    service = kubernetes_object("Service", "registry")["spec"]["ports"][0]
    assert container_port(container(registry_pod(), "retention"), service["targetPort"]) == (
        gate.port
    )
    assert gate.host == "0.0.0.0"
    addr = registry_config()["http"]["addr"]
    assert addr.startswith("127.0.0.1:")
    assert gate.upstream == sidecar_policy().registry.base_url == f"http://{addr}"
    assert "ports" not in container(registry_pod(), "registry")
