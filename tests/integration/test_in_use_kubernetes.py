"""``in_use: kubernetes`` with the real ``kubernetes`` client against a local API stand-in.

No cluster is reachable here (see the README): ``tests/kubernetes_api.py`` serves list
responses shaped like the API's, paged with ``continue`` tokens, on 127.0.0.1.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_support import actions, no_traceback, retention, write_policy
from kubernetes_api import Cluster, free_port_url, kubernetes_api, pod, workload, write_kubeconfig
from registry_server import RegistryServer, Seeder

from retention.core.policy import InUseSource
from retention.errors import InUseError
from retention.scan.in_use import collect

HOST = "registry.example:5000"
REGISTRY = f"http://{HOST}"
DIGEST = "sha256:" + "ab" * 32
KINDS = {
    "/apis/apps/v1/deployments": "Deployment",
    "/apis/apps/v1/replicasets": "ReplicaSet",
    "/apis/apps/v1/statefulsets": "StatefulSet",
    "/apis/apps/v1/daemonsets": "DaemonSet",
    "/apis/batch/v1/jobs": "Job",
    "/apis/batch/v1/cronjobs": "CronJob",
}


@pytest.fixture
def cluster() -> Cluster:
    """Five pods (three pages of two) and one scaled-to-zero workload of every kind."""
    cluster = Cluster(page_size=2)
    cluster.add(
        "/api/v1/pods",
        pod("shop", "web-1", [f"{HOST}/shop/web:v1"], init=[f"{HOST}/shop/migrate:v3"]),
        pod(
            "shop",
            "web-2",
            [f"{HOST}/shop/web:v1"],
            image_ids=[f"docker-pullable://{HOST}/shop/web@{DIGEST}"],
        ),
        pod(
            "shop",
            "debugged",
            ["docker.io/library/nginx:1.25"],
            ephemeral=[f"{HOST}/tools/debug:1"],
        ),
        pod(
            "kube-system",
            "dns",
            ["registry.k8s.io/coredns:v1.11"],
            image_ids=["sha256:" + "cd" * 32],
        ),
        pod("ops", "last-page", ["ops/agent:2"]),
    )
    for path, kind in KINDS.items():
        cluster.add(
            path, workload(kind, "apps", kind.lower() + "-a", [f"{HOST}/apps/{kind.lower()}:v9"])
        )
    return cluster


@pytest.fixture
def api(cluster: Cluster) -> Iterator[str]:
    with kubernetes_api(cluster) as url:
        yield url


def source(kubeconfig: Path, **extra: Any) -> InUseSource:
    return InUseSource.model_validate({"kubernetes": {"kubeconfig": str(kubeconfig)}, **extra})


def test_pods_and_every_workload_template_are_read_across_pages(
    tmp_path: Path, cluster: Cluster, api: str
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api)

    found = collect([source(kubeconfig)], REGISTRY)

    assert sorted(((r.repository, r.tag, r.digest, r.origin) for r in found), key=repr) == sorted(
        [
            ("shop/web", "v1", None, "kubernetes: shop/web-1"),
            ("shop/migrate", "v3", None, "kubernetes: shop/web-1"),
            ("shop/web", "v1", None, "kubernetes: shop/web-2"),
            ("shop/web", None, DIGEST, "kubernetes: shop/web-2"),
            ("tools/debug", "1", None, "kubernetes: shop/debugged"),
            ("ops/agent", "2", None, "kubernetes: ops/last-page"),
            *[
                (
                    f"apps/{kind.lower()}",
                    "v9",
                    None,
                    f"kubernetes: apps/{kind.lower()}/{kind.lower()}-a",
                )
                for kind in KINDS.values()
            ],
        ],
        key=repr,
    )
    pod_requests = [query for path, query in cluster.requests if path == "/api/v1/pods"]
    assert [q.get("continue") for q in pod_requests] == [None, ["page-2"], ["page-4"]]
    assert all(q["limit"] == ["500"] for q in pod_requests)
    assert {path for path, _ in cluster.requests} == {"/api/v1/pods", *KINDS}


def test_the_context_named_in_the_policy_is_the_one_used(tmp_path: Path, api: str) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api)
    chosen = {"kubeconfig": str(kubeconfig), "context": "other"}  # its user has a bad token
    with pytest.raises(InUseError, match="401 Unauthorized"):
        collect([InUseSource.model_validate({"kubernetes": chosen})], REGISTRY)
    current = {"kubeconfig": str(kubeconfig), "context": "test"}
    assert collect([InUseSource.model_validate({"kubernetes": current})], REGISTRY)


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("forbidden", "in_use source kubernetes: the API answered 403 Forbidden"),
        ("bad token", "in_use source kubernetes: the API answered 401 Unauthorized"),
        (
            "no kubeconfig",
            "in_use source kubernetes: Invalid kube-config file. No configuration found.",
        ),
    ],
)
def test_an_api_that_refuses_or_a_missing_kubeconfig_fails_the_source(
    tmp_path: Path, cluster: Cluster, api: str, breakage: str, message: str
) -> None:
    token = "wrong" if breakage == "bad token" else "test-token"
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api, token=token)
    if breakage == "forbidden":
        cluster.failures["/apis/batch/v1/cronjobs"] = 403
    if breakage == "no kubeconfig":
        kubeconfig = tmp_path / "absent"

    with pytest.raises(InUseError) as raised:
        collect([source(kubeconfig)], REGISTRY)

    assert str(raised.value) == message


def test_an_unreachable_api_fails_the_source_in_one_line(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", free_port_url())
    with pytest.raises(InUseError) as raised:
        collect([source(kubeconfig, timeout="5s")], REGISTRY)
    assert str(raised.value).startswith("in_use source kubernetes: ")
    assert "\n" not in str(raised.value)


def test_the_cli_keeps_images_the_cluster_runs_and_deletes_the_rest(
    tmp_path: Path, registry_server: RegistryServer, seeder: Seeder, cluster: Cluster
) -> None:
    now = datetime.now(UTC)
    digests = {
        tag: seeder.image("shop/web", [tag], now - timedelta(days=30 + i), unique=tag)
        for i, tag in enumerate(["v1", "v2", "v3", "v4"])
    }
    host = registry_server.url.removeprefix("http://")
    cluster.items.clear()
    cluster.add(
        "/api/v1/pods",
        pod("shop", "web-1", [f"{host}/shop/web:v1"]),
        pod("shop", "web-2", ["shop/web:latest"], image_ids=[f"{host}/shop/web@{digests['v2']}"]),
    )
    cluster.add(
        "/apis/apps/v1/deployments",
        workload("Deployment", "shop", "old-web", [f"{host}/shop/web:v3"]),
    )
    rule = {"name": "all", "keep_last": 0}
    with kubernetes_api(cluster) as url:
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", url)
        policy = write_policy(
            tmp_path / "p.yml",
            registry_server.url,
            rule,
            in_use=[{"kubernetes": {"kubeconfig": str(kubeconfig)}}],
            safety={"max_delete_fraction": 1.0},
        )
        result = retention("run", "-c", str(policy), "-o", "json")

        assert result.code == 0, result.stderr
        report = result.json()
        assert actions(report, "shop/web") == {
            "v1": "keep",
            "v2": "keep",
            "v3": "keep",
            "v4": "delete",
        }
        (web,) = report["repositories"]
        reasons = {t["tag"]: t["reason"] for t in web["tags"]}
        assert reasons["v1"] == "in use (kubernetes: shop/web-1)"
        assert reasons["v2"] == "in use (kubernetes: shop/web-2)"
        assert reasons["v3"] == "in use (kubernetes: shop/deployment/old-web)"
        assert seeder.manifest_status("shop/web", digests["v4"]) == 404

        cluster.failures["/apis/apps/v1/daemonsets"] = 403
        failed = retention("run", "-c", str(policy), "-o", "json")

    assert failed.code == 1
    assert failed.error_lines == ["error: in_use source kubernetes: the API answered 403 Forbidden"]
    no_traceback(failed)
    assert [seeder.manifest_status("shop/web", digests[t]) for t in ("v1", "v2", "v3")] == [200] * 3


def test_without_the_kubernetes_extra_check_warns_and_a_run_deletes_nothing_in_one_line(
    tmp_path: Path,
    registry_server: RegistryServer,
    seeder: Seeder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``kubernetes`` is an extra (``retention[kubernetes]``): a plain install lacks it."""
    now = datetime.now(UTC)
    digests = [
        seeder.image("shop/web", [tag], now - timedelta(days=30 + i), unique=tag)
        for i, tag in enumerate(["v1", "v2"])
    ]
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # what import finds when not installed
    policy = write_policy(
        tmp_path / "p.yml",
        registry_server.url,
        {"name": "all", "keep_last": 0},
        in_use=[{"kubernetes": {"kubeconfig": str(tmp_path / "kubeconfig")}}],
        safety={"max_delete_fraction": 1.0},
    )
    missing = "the Kubernetes client is not installed: pip install 'retention[kubernetes]'"

    checked = retention("check", "-c", str(policy))
    ran = retention("run", "-c", str(policy))

    assert checked.code == 0, checked.stderr
    assert f"warning: in_use kubernetes: {missing}" in checked.stderr
    assert ran.code == 1
    (line,) = [line for line in ran.stderr.splitlines() if line.startswith("error:")]
    assert missing in line
    no_traceback(ran)
    assert [seeder.manifest_status("shop/web", d) for d in digests] == [200, 200]
