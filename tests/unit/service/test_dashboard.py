"""``deploy/grafana/retention-dashboard.json`` asks only for metrics the daemon exports."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from retention.core.model import GcResult, Plan, RunResult, StorageUsage
from retention.service.event_receiver import Answer
from retention.service.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[3] / "deploy" / "grafana" / "retention-dashboard.json"
NOW = datetime(2026, 1, 15, tzinfo=UTC)
METRIC = re.compile(r"\bretention_[a-z_]+\b")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def expressions() -> list[str]:
    found = [t["expr"] for panel in dashboard()["panels"] for t in panel["targets"]]
    found += [v["query"] for v in dashboard()["templating"]["list"] if v["type"] == "query"]
    return found


def exported_sample_names() -> set[str]:
    """Every sample name /metrics can show, once a pass has filled every metric."""
    metrics = Metrics(CollectorRegistry())
    result = RunResult(
        Plan("http://r", NOW, ()),
        dry_run=False,
        storage=StorageUsage(10, 4),
        gc=GcResult("command", ran=True, blobs_deleted=1),
    )
    metrics.record(result, "success", 1.0, finished_at=NOW)
    metrics.set_next_pass(NOW)
    metrics.count_notification("slack", "sent")
    metrics.record_notification(Answer(401, {"error": "wrong secret"}), NOW)
    text = metrics.render().decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    exported = exported_sample_names()
    queried = {name for expr in expressions() for name in METRIC.findall(expr)}
    assert queried, "the dashboard queries no retention metric"
    assert sorted(queried - exported) == []


def test_every_exported_metric_has_a_panel() -> None:
    queried = {name for expr in expressions() for name in METRIC.findall(expr)}
    families = {
        f.name
        for f in text_string_to_metric_families(Metrics(CollectorRegistry()).render().decode())
    }
    shown = {name for name in queried for family in families if name.startswith(family)}
    assert {f for f in families if not any(s.startswith(f) for s in shown)} == set()


def test_panels_have_unique_ids_and_use_the_datasource_variable() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
