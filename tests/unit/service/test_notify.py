"""Notifications: which events a pass makes, the payload per target type, retries, redaction."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from retention.config.load import load_policy_with_warnings
from retention.core.model import (
    DeletionResult,
    Outcome,
    Plan,
    RepositoryPlan,
    RunResult,
)
from retention.core.policy import NotifyTarget, Policy
from retention.service.notify import (
    DeliveryError,
    Notice,
    Notifier,
    notices,
    payload,
    redact,
)

NOW = datetime(2026, 1, 15, 3, 0, tzinfo=UTC)
POLICY = Policy.model_validate({"registry": {"url": "http://127.0.0.1:5000"}})
HELD = RepositoryPlan("web", held="would delete 95% of the images (max_delete_fraction 0.9)")
PLAN = Plan("http://127.0.0.1:5000", NOW, (RepositoryPlan("app"), HELD))


def deletion(outcome: Outcome, *tags: str, detail: str = "") -> DeletionResult:
    return DeletionResult("app", f"sha256:{len(tags):064x}", tags, outcome, detail)


def events(result: RunResult | None, error: str | None = None) -> dict[str, Notice]:
    return {n.event: n for n in notices(POLICY, result, error, NOW)}


def test_a_pass_that_deleted_says_how_many_manifests_tags_and_repositories() -> None:
    applied = (deletion(Outcome.DELETED, "v1", "v1-alias"), deletion(Outcome.SKIPPED, "v2"))
    found = events(RunResult(PLAN, dry_run=False, applied=applied, run_id="r1"))
    assert found["deleted"].title == "retention deleted 1 manifest (2 tags) in 1 repository"
    assert found["deleted"].details == ("app:v1,v1-alias",)
    assert found["deleted"].run_id == "r1"


def test_failures_holds_and_verification_problems_each_make_their_event() -> None:
    applied = (deletion(Outcome.FAILED, "v3", detail="500 from the registry"),)
    result = RunResult(PLAN, dry_run=False, applied=applied, verification=("app:v4 is missing",))
    found = events(result)
    assert set(found) == {"failed", "held", "verification_problem"}
    assert "500 from the registry" in found["failed"].details[0]
    assert found["held"].details == (f"web: {HELD.held}",)
    assert found["verification_problem"].details == ("app:v4 is missing",)


def test_a_pass_that_raised_is_one_failed_event_with_its_error() -> None:
    assert list(events(None, "registry unreachable")) == ["failed"]
    assert "registry unreachable" in events(None, "registry unreachable")["failed"].title


def test_a_quiet_pass_sends_nothing() -> None:
    assert notices(POLICY, RunResult(Plan("r", NOW, ()), dry_run=False), None, NOW) == []


def test_long_lists_are_cut_with_a_count_of_the_rest() -> None:
    applied = tuple(deletion(Outcome.DELETED, *[f"t{i}"] * 1) for i in range(30))
    details = events(RunResult(PLAN, dry_run=False, applied=applied))["deleted"].details
    assert len(details) == 21 and details[-1] == "... and 10 more"


def target(kind: str, **extra: object) -> NotifyTarget:
    url = None if kind == "command" else "https://hooks.example.com/services/T0/B0/secret"
    return NotifyTarget.model_validate({"name": kind, "type": kind, "url": url, **extra})


NOTICE = Notice("deleted", "retention deleted 1 manifest", ("app:v1",), "http://r", "run-1")


def test_each_target_type_gets_the_shape_its_receiver_expects() -> None:
    assert payload(target("slack"), NOTICE) == {"text": "*retention deleted 1 manifest*\n• app:v1"}
    card = payload(target("teams"), NOTICE)["attachments"][0]
    assert card["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert [b["text"] for b in card["content"]["body"]] == [
        "retention deleted 1 manifest",
        "app:v1",
    ]
    generic = payload(target("webhook"), NOTICE)
    assert generic["event"] == "deleted" and generic["run_id"] == "run-1"
    assert generic["details"] == ["app:v1"]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXX", "https://hooks.slack.com/***"),
        ("https://user:pw@example.com:8443/hook?token=x", "https://example.com:8443/***"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
    ],
)
def test_logged_urls_keep_only_scheme_host_and_port(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_failing_target_is_retried_with_backoff_then_given_up() -> None:
    sleeps: list[float] = []
    attempts: list[str] = []

    def send(t: NotifyTarget, n: Notice) -> None:
        attempts.append(t.name)
        raise DeliveryError("connection refused")

    counted: list[tuple[str, str]] = []
    notifier = Notifier(
        [target("webhook", retries=3)],
        send=send,
        sleep=sleeps.append,
        outcomes=lambda name, outcome: counted.append((name, outcome)),
    )
    notifier.send([NOTICE])
    assert notifier.close(5)
    assert attempts == ["webhook"] * 4
    assert sleeps == [1.0, 2.0, 5.0]
    assert (notifier.delivered, notifier.failed) == (0, 1)
    assert counted == [("webhook", "failed")]


def test_send_returns_at_once_while_a_target_hangs_and_filters_by_event() -> None:
    release = threading.Event()
    seen: list[tuple[str, str]] = []

    def send(t: NotifyTarget, n: Notice) -> None:
        release.wait(5)
        seen.append((t.name, n.event))

    only_failures = target("slack", events=["failed"])
    notifier = Notifier([target("webhook"), only_failures], send=send)
    notifier.send([NOTICE])  # would block here if sending were not in the background
    release.set()
    assert notifier.close(5)
    assert seen == [("webhook", "deleted")]


def test_a_target_that_is_down_delays_no_other_target() -> None:
    delivered = threading.Event()
    backoff_over = threading.Event()

    def send(t: NotifyTarget, n: Notice) -> None:
        if t.name == "webhook":
            raise DeliveryError("connection refused")
        delivered.set()

    def sleep(seconds: float) -> None:
        backoff_over.wait(seconds)

    notifier = Notifier([target("webhook", retries=1), target("slack")], send=send, sleep=sleep)
    notifier.send([NOTICE])
    assert delivered.wait(2), "slack waited behind the webhook's retries"
    assert not notifier.close(0.2)  # the webhook is still backing off
    backoff_over.set()
    assert notifier.close(2)
    assert (notifier.delivered, notifier.failed) == (1, 1)


def warnings_for(tmp_path: Path, url_line: str, kind: str = "slack") -> tuple[str, ...]:
    policy = tmp_path / "p.yml"
    policy.write_text(
        "registry:\n  url: http://127.0.0.1:5000\nrules:\n  - {name: a, keep_last: 3}\n"
        f"notify:\n  - name: n\n    type: {kind}\n    url: {url_line}\n"
    )
    environ = {"HOOK": "https://hooks.slack.com/services/T/B/x"}
    return load_policy_with_warnings(policy, environ=environ).warnings


def test_a_chat_webhook_url_written_in_the_file_is_warned_about_at_its_line(
    tmp_path: Path,
) -> None:
    (warning,) = warnings_for(tmp_path, "https://hooks.slack.com/services/T/B/x")
    assert warning.startswith(f"{tmp_path / 'p.yml'}:8 notify[0].url: a slack webhook URL")
    assert "${SLACK_WEBHOOK_URL}" in warning
    assert warnings_for(tmp_path, "${HOOK}") == ()
    assert warnings_for(tmp_path, "https://hooks.example.com/x", kind="webhook") == ()


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"type": "slack"}, "a slack target needs url"),
        ({"type": "command", "url": "http://x"}, "a command target needs command"),
        ({"type": "webhook", "url": "ftp://x/y"}, "not an http:// or https:// URL"),
        ({"type": "command", "command": ["x"], "headers": {"a": "b"}}, "headers are for webhooks"),
        ({"type": "webhook", "url": "http://x", "events": ["pushed"]}, "events"),
    ],
)
def test_a_target_that_cannot_work_is_a_policy_error(
    entry: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        NotifyTarget.model_validate({"name": "n", **entry})
