"""A saved ``retention plan -o json`` report read back as the ``Plan`` it describes.

``retention apply`` carries out exactly a reviewed plan; this is the inverse of
``render.to_dict`` for the parts the executor needs (deletions, decisions, the registry),
and refuses anything else as a ``PlanFileError``. Pure: the CLI reads the file.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from retention.core.model import (
    Action,
    DeletionKind,
    ManifestDeletion,
    Plan,
    RepositoryPlan,
    TagDecision,
)
from retention.errors import PlanFileError


def plan_from_dict(data: Any) -> Plan:
    """The Plan a JSON report describes, for ``retention apply`` to carry out."""
    try:
        return Plan(
            registry=str(data["registry"]),
            created_at=_parse_time(data["generated_at"]),
            repositories=tuple(_repository_from(r) for r in data["repositories"]),
            reclaimable_bytes=int(data["summary"]["reclaimable_bytes"]),
            refused=data["summary"].get("refused"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise PlanFileError(f"not a retention plan report ({type(exc).__name__}: {exc})") from exc


def _repository_from(data: dict[str, Any]) -> RepositoryPlan:
    return RepositoryPlan(
        name=str(data["name"]),
        decisions=tuple(_decision_from(t) for t in [*data["tags"], *data.get("manifests", [])]),
        deletions=tuple(
            ManifestDeletion(
                digest=str(d["digest"]),
                kind=DeletionKind(d["kind"]),
                tags=tuple(d["tags"]),
                parents=tuple(d["parents"]),
            )
            for d in data["deletions"]
        ),
        error=data.get("error"),
        held=data.get("held"),
    )


def _decision_from(data: dict[str, Any]) -> TagDecision:
    return TagDecision(
        tag=str(data["tag"]),
        digest=str(data["digest"]),
        created=_optional_parse(data.get("created")),
        action=Action(data["action"]),
        rule=data.get("rule"),
        reason=str(data["reason"]),
        subject=data.get("subject"),
        pushed=_optional_parse(data.get("pushed_at")),
        pulled=_optional_parse(data.get("pulled_at")),
        ranked_by=data.get("ranked_by"),
        aged_by=data.get("aged_by"),
        kind=str(data.get("kind", "image")),
        size=data.get("size"),
    )


def _optional_parse(text: str | None) -> datetime | None:
    return _parse_time(text) if text else None


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
