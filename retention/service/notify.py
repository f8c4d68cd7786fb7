"""Say what a pass did to the people who asked: webhooks (generic, Slack, Teams) and commands.

Owns turning a finished pass into events (``deleted``, ``failed``, ``held``,
``verification_problem``), the payload each target type expects, and delivering them from
a background thread with retries and backoff. It must never block, slow or fail a pass:
``Notifier.send`` only puts work on a bounded queue, and a target that is down costs its
own thread's time, nobody else's.

HTTP goes through the standard library's urllib rather than through ``registry/``: a
webhook is not the registry, and a POST of a small JSON body needs none of the registry
client's auth flows, digests or pagination. Keeping it here keeps the rule "only registry/
imports httpx" free of exceptions. URLs are logged with their path and query cut off,
because Slack and Teams put the secret in the path.
"""

from __future__ import annotations

import contextlib
import json
import queue
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from retention.core import planner
from retention.core.model import Outcome, RunResult
from retention.core.policy import NotifyEvent, NotifyTarget, Policy
from retention.errors import DeliveryError
from retention.logs import get_logger

log = get_logger(__name__)

MAX_DETAILS = 20  # lines per message: a chat message listing 2,000 tags helps no one
QUEUE_SIZE = 100
BACKOFF_S = (1.0, 2.0, 5.0, 15.0, 60.0)


@dataclass(frozen=True)
class Notice:
    """One event of one pass, with a one-line title and a few detail lines."""

    event: NotifyEvent
    title: str
    details: tuple[str, ...] = ()
    registry: str = ""
    run_id: str | None = None
    dry_run: bool = False
    time: datetime = field(default_factory=lambda: datetime.now(UTC))

    def document(self) -> dict[str, Any]:
        """The generic webhook's body and a command's stdin."""
        return {
            "source": "retention",
            "event": self.event,
            "title": self.title,
            "details": list(self.details),
            "registry": self.registry,
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "time": self.time.isoformat().replace("+00:00", "Z"),
        }


# -- what happened ----------------------------------------------------------------------------


def notices(
    policy: Policy, result: RunResult | None, error: str | None = None, now: datetime | None = None
) -> list[Notice]:
    """Every event of one pass; ``result`` is None when the pass raised ``error``."""
    moment = now or datetime.now(UTC)
    registry = policy.registry.base_url
    if result is None:
        return [
            Notice("failed", f"retention pass failed: {error}", (), registry, None, False, moment)
        ]
    found = [
        _deleted(result),
        _failed(result),
        _held(policy, result),
        _verification(result),
    ]
    return [
        Notice(event, title, details, registry, result.run_id, result.dry_run, moment)
        for event, title, details in (f for f in found if f is not None)
    ]


_Found = tuple[NotifyEvent, str, tuple[str, ...]] | None


def _deleted(result: RunResult) -> _Found:
    gone = [a for a in result.applied if a.outcome is Outcome.DELETED]
    if not gone:
        return None
    tags = sum(len(a.tags) for a in gone)
    repositories = len({a.repository for a in gone})
    title = (
        f"retention deleted {_count(len(gone), 'manifest')} ({_count(tags, 'tag')}) "
        f"in {_count(repositories, 'repository', 'repositories')}"
    )
    lines = [f"{a.repository}:{','.join(a.tags) or a.digest}" for a in gone]
    return "deleted", title, _capped(lines)


def _failed(result: RunResult) -> _Found:
    lines = [f"{r.name}: {r.error}" for r in result.plan.repositories if r.error]
    lines += [
        f"{a.repository}@{a.digest}: {a.detail}"
        for a in result.applied
        if a.outcome is Outcome.FAILED
    ]
    lines += list(result.errors)
    if not lines:
        return None
    return "failed", f"retention pass had {_count(len(lines), 'failure')}", _capped(lines)


def _held(policy: Policy, result: RunResult) -> _Found:
    lines = [f"{r.name}: {r.held}" for r in result.plan.repositories if r.held]
    over = planner.check_budget(result.plan, policy.safety)
    if over is not None and not any(a.outcome is Outcome.DELETED for a in result.applied):
        lines.insert(0, over)
    if not lines:
        return None
    return "held", "retention held deletions back (safety limits)", _capped(lines)


def _verification(result: RunResult) -> _Found:
    if not result.verification:
        return None
    title = f"retention found {_count(len(result.verification), 'problem')} with kept images"
    return "verification_problem", title, _capped(list(result.verification))


def _count(number: int, singular: str, plural: str | None = None) -> str:
    return f"{number} {singular if number == 1 else plural or singular + 's'}"


def _capped(lines: list[str]) -> tuple[str, ...]:
    if len(lines) <= MAX_DETAILS:
        return tuple(lines)
    return (*lines[:MAX_DETAILS], f"... and {len(lines) - MAX_DETAILS} more")


# -- payloads -------------------------------------------------------------------------------


def payload(target: NotifyTarget, notice: Notice) -> dict[str, Any]:
    """The JSON body each target type expects."""
    if target.type == "slack":
        lines = "\n".join(f"• {line}" for line in notice.details)
        return {"text": f"*{notice.title}*\n{lines}".rstrip()}
    if target.type == "teams":
        return _teams_card(notice)
    return notice.document()


def _teams_card(notice: Notice) -> dict[str, Any]:
    """An Adaptive Card message, what Teams' Workflows webhooks take (connectors retired)."""
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": notice.title, "weight": "Bolder", "wrap": True}
    ]
    body += [{"type": "TextBlock", "text": line, "wrap": True} for line in notice.details]
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": "application/vnd.microsoft.card.adaptive",
                "content": {
                    "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                    "type": "AdaptiveCard",
                    "version": "1.4",
                    "body": body,
                },
            }
        ],
    }


def redact(url: str) -> str:
    """Scheme, host and port only: Slack and Teams URLs carry their secret in the path."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    hidden = "/***" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{hidden}"


# -- delivery -------------------------------------------------------------------------------


def deliver(target: NotifyTarget, notice: Notice) -> None:
    """One attempt; raises DeliveryError with a message that holds no secret."""
    body = json.dumps(payload(target, notice)).encode()
    if target.type == "command":
        _run_command(target, body)
    else:
        _post(target, body)


def _post(target: NotifyTarget, body: bytes) -> None:
    assert target.url is not None  # the model requires it for every non-command type
    headers = {"Content-Type": "application/json", "User-Agent": "retention", **target.headers}
    request = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=target.timeout.total_seconds()) as answer:
            answer.read(1024)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeliveryError(str(reason)) from None


def _run_command(target: NotifyTarget, body: bytes) -> None:
    assert target.command is not None
    try:
        done = subprocess.run(
            list(target.command),
            input=body,
            capture_output=True,
            timeout=target.timeout.total_seconds(),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DeliveryError(str(exc)) from None
    if done.returncode != 0:
        first = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[0]
        raise DeliveryError(f"exit {done.returncode}: {first}"[:300])


def where(target: NotifyTarget) -> str:
    return target.command[0] if target.command else redact(target.url or "")


Deliver = Callable[[NotifyTarget, Notice], None]
Sleep = Callable[[float], None]
# Told each notice's fate per target: "sent", "failed" (retries used up) or "dropped".
Outcomes = Callable[[str, str], None]


def _ignore(target: str, outcome: str) -> None:
    """The default: nobody counts."""


class Notifier:
    """One background lane per target: a queue and a thread that delivers, retries and logs.

    A lane is sequential, so one target sees a pass's events in order; lanes are apart, so
    a target that is down (retrying with backoff) delays no other target. ``close`` waits a
    bounded time for every lane to empty.
    """

    def __init__(
        self,
        targets: Sequence[NotifyTarget],
        *,
        send: Deliver = deliver,
        sleep: Sleep = time.sleep,
        outcomes: Outcomes = _ignore,
    ) -> None:
        self.targets = tuple(targets)
        self._send = send
        self._sleep = sleep
        self._outcomes = outcomes
        self._lanes: dict[str, _Lane] = {}
        self._lock = threading.Lock()

    @property
    def delivered(self) -> int:
        return sum(lane.delivered for lane in self._lanes.values())

    @property
    def failed(self) -> int:
        return sum(lane.failed for lane in self._lanes.values())

    def send(self, found: Sequence[Notice]) -> None:
        """Queue each notice for each target that wants its event; never blocks."""
        for notice in found:
            for target in self.targets:
                if notice.event in target.events:
                    self._lane(target).put(notice)

    def _lane(self, target: NotifyTarget) -> _Lane:
        key = target.model_dump_json()  # a reloaded, changed target gets a lane of its own
        with self._lock:
            if key not in self._lanes:
                self._lanes[key] = _Lane(target, self._send, self._sleep, self._outcomes)
            return self._lanes[key]

    def close(self, timeout_s: float) -> bool:
        """Stop after what is queued; True when everything was tried within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        lanes = list(self._lanes.values())
        for lane in lanes:
            lane.stop()
        for lane in lanes:
            lane.join(max(0.0, deadline - time.monotonic()))
        return not any(lane.alive for lane in lanes)


class _Lane:
    def __init__(
        self, target: NotifyTarget, send: Deliver, sleep: Sleep, outcomes: Outcomes
    ) -> None:
        self.target = target
        self._send = send
        self._sleep = sleep
        self._outcomes = outcomes
        self._queue: queue.Queue[Notice | None] = queue.Queue(QUEUE_SIZE)
        self._thread = threading.Thread(
            target=self._work, name=f"retention-notify-{target.name}", daemon=True
        )
        self._thread.start()
        self.delivered = 0
        self.failed = 0

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def put(self, notice: Notice) -> None:
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            log.warning("notification dropped", target=self.target.name, reason="queue full")
            self._outcomes(self.target.name, "dropped")

    def stop(self) -> None:
        with contextlib.suppress(queue.Full):  # a full lane's daemonic thread dies with us
            self._queue.put_nowait(None)

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _work(self) -> None:
        while (notice := self._queue.get()) is not None:
            self._attempt(notice)

    def _attempt(self, notice: Notice) -> None:
        target = self.target
        for attempt in range(target.retries + 1):
            try:
                self._send(target, notice)
            except DeliveryError as exc:
                last = attempt == target.retries
                log.warning(
                    "notification failed" if last else "notification failed, will retry",
                    target=target.name,
                    to=where(target),
                    kind=notice.event,
                    attempt=attempt + 1,
                    error=str(exc),
                )
                if not last:
                    self._sleep(BACKOFF_S[min(attempt, len(BACKOFF_S) - 1)])
                continue
            self.delivered += 1
            log.info("notification sent", target=target.name, to=where(target), kind=notice.event)
            self._outcomes(target.name, "sent")
            return
        self.failed += 1
        self._outcomes(target.name, "failed")
