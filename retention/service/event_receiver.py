"""``POST /events``: Distribution's notifications, checked, parsed and stored.

Owns the endpoint's rules and nothing of HTTP itself (``http_api`` routes here and writes
the answer): the shared secret, the size limit, the envelope, which events matter.

What Distribution 2.8.2 sends (measured): one event per envelope,
``Content-Type: application/vnd.docker.distribution.events.v1+json``, the configured
``headers`` verbatim, and events for blobs as well as manifests. A manifest event's
``target.url`` names ``/manifests/``; blob events (layers, configs, mounts) are ignored,
since retention decides about manifests and tags only, and so are the pulls retention's
own scans make (its User-Agent), or every pass would look like a pull of every image.

Distribution retries a failed delivery forever and holds every later event behind it
(distribution#2422; measured on 2.8.2: an envelope answered 400 was sent 23 times in 4 s
and the next one never), so the answers are chosen with care:

- 200 as soon as the events are on disk (a duplicate id is a success too);
- 401 for a missing or wrong secret (compared in constant time), before reading the body;
- 413 for a body over ``MAX_BODY_BYTES``, 411 without a length, 415 for another type;
- 400 only when the body is not the envelope at all (not JSON, no ``events`` list of
  objects). An event inside a good envelope that cannot be used (no id, a timestamp that
  does not parse) is logged and skipped: answering 400 for it would block the registry's
  queue for good;
- 503 when the store cannot be written, so the registry sends the envelope again.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from retention.core.policy import Notifications
from retention.errors import ConfigError, EventStoreError, MalformedEnvelope
from retention.logs import get_logger
from retention.state.event_store import Action, EventStore, RegistryEvent

log = get_logger(__name__)

EVENTS_PATH = "/events"
# An envelope holds one event of about 1 KB in 2.8; 1 MiB leaves room for batches.
MAX_BODY_BYTES = 1024 * 1024
EVENT_TYPES = frozenset({"application/vnd.docker.distribution.events.v1+json", "application/json"})
_ACTIONS: frozenset[str] = frozenset({"push", "pull", "delete"})
# Our own registry client's User-Agent (registry/client.py): every pass HEADs every tag and
# verification GETs what it keeps; counted as pulls, they would make every image "in use".
OWN_USER_AGENT = "retention/"

Read = Callable[[int], bytes]


@dataclass(frozen=True)
class Answer:
    """What to send back: a status and a small JSON document."""

    status: int
    body: Mapping[str, Any]


def load_secret(settings: Notifications, environ: Mapping[str, str] | None = None) -> str:
    """The shared secret from ``secret_file`` (less one trailing newline) or ``secret_env``.

    Read when the daemon starts or reloads, not per request: a missing secret must stop
    the start with a line naming the key, not answer 401 to every event.
    """
    environ = os.environ if environ is None else environ
    if settings.secret_file is not None:
        key, where = "notifications.secret_file", str(settings.secret_file)
        try:
            secret = settings.secret_file.read_text().removesuffix("\n")
        except OSError as exc:
            raise ConfigError([f"{key}: cannot read {where}: {exc.strerror or exc}"]) from exc
    else:
        key, where = "notifications.secret_env", str(settings.secret_env)
        secret = environ.get(where, "")
    if not secret:
        raise ConfigError([f"{key}: {where} is empty or not set"])
    return secret


def expected_header(settings: Notifications, secret: str) -> str:
    """``Bearer <secret>`` in ``Authorization`` (as Distribution's ``headers`` send it), else
    the secret alone."""
    return f"Bearer {secret}" if settings.header.lower() == "authorization" else secret


Observer = Callable[[Answer], None]


class EventReceiver:
    """Checks and stores one envelope per call; called from the HTTP server's threads.

    ``observe`` sees every answer (the daemon counts them in its metrics).
    """

    def __init__(
        self,
        store: EventStore,
        settings: Notifications,
        secret: str,
        observe: Observer | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self._header = settings.header.lower()
        self._expected = expected_header(settings, secret).encode()
        self._observe = observe

    def receive(self, headers: Mapping[str, str], read: Read) -> Answer:
        """``headers`` with lower-case names; ``read(n)`` reads n bytes of the body."""
        answer = self._answer(headers, read)
        if self._observe is not None:
            self._observe(answer)
        return answer

    def _answer(self, headers: Mapping[str, str], read: Read) -> Answer:
        refused = self._refusal(headers)
        if refused is not None:
            return refused
        try:
            events, ignored = parse_envelope(read(int(headers["content-length"])))
        except MalformedEnvelope as exc:
            log.warning("notification refused", status=400, reason=str(exc))
            return Answer(400, {"error": str(exc)})
        try:
            stored = self.store.record(events)
        except EventStoreError as exc:
            log.error("notification not stored", error=str(exc))
            return Answer(503, {"error": "events not stored; send them again"})
        log.debug("notification stored", stored=stored, duplicates=len(events) - stored)
        return Answer(
            200, {"stored": stored, "duplicates": len(events) - stored, "ignored": ignored}
        )

    def _refusal(self, headers: Mapping[str, str]) -> Answer | None:
        """Everything that can be refused before the body is read."""
        given = headers.get(self._header, "").encode()
        if not hmac.compare_digest(given, self._expected):
            reason = "missing" if not given else "wrong"
            log.warning("notification refused", status=401, reason=f"{reason} {self._header}")
            return Answer(401, {"error": f"{reason} shared secret in {self.settings.header}"})
        length = headers.get("content-length", "")
        if not length.isdigit():
            return Answer(411, {"error": "Content-Length is required"})
        if int(length) > MAX_BODY_BYTES:
            return Answer(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type not in EVENT_TYPES:
            return Answer(415, {"error": f"Content-Type {media_type!r} is not an event envelope"})
        return None


def parse_envelope(body: bytes) -> tuple[list[RegistryEvent], int]:
    """The manifest events of an envelope, and how many others were skipped."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedEnvelope(f"not JSON: {exc}") from exc
    if not isinstance(document, dict) or not isinstance(document.get("events"), list):
        raise MalformedEnvelope('not an envelope: expected {"events": [...]}')
    raw = cast(list[Any], document["events"])
    if not all(isinstance(event, dict) for event in raw):
        raise MalformedEnvelope("events must be objects")
    events = [e for e in (_event(item) for item in raw) if e is not None]
    return events, len(raw) - len(events)


def _event(item: Mapping[str, Any]) -> RegistryEvent | None:
    """One manifest event, or None (logged when it is broken, silent for a blob event)."""
    target = item.get("target")
    action = item.get("action")
    if not isinstance(target, dict) or action not in _ACTIONS or not _is_manifest(target):
        return None
    request = item.get("request")
    request = request if isinstance(request, dict) else {}
    if action == "pull" and str(request.get("useragent", "")).startswith(OWN_USER_AGENT):
        return None
    problem = _problem(item, target)
    if problem is not None:
        log.warning("notification event skipped", id=item.get("id"), problem=problem)
        return None
    method = request.get("method")
    return RegistryEvent(
        id=item["id"],
        at=datetime.fromisoformat(item["timestamp"]),
        action=cast(Action, action),
        repository=target["repository"],
        tag=_text(target.get("tag")),
        digest=_text(target.get("digest")),
        method=method.upper() if isinstance(method, str) else "GET",
    )


def _is_manifest(target: Mapping[str, Any]) -> bool:
    """A push or pull names its URL; a delete has none (a blob's delete looks the same as a
    manifest's, and removes nothing here since no row names a blob)."""
    url = target.get("url")
    if isinstance(url, str) and url:
        return "/manifests/" in url
    return True


def _problem(item: Mapping[str, Any], target: Mapping[str, Any]) -> str | None:
    if not _text(item.get("id")):
        return "no id"
    if not _text(target.get("repository")):
        return "no target.repository"
    if item.get("action") != "delete" and not _text(target.get("digest")):
        return "no target.digest"
    timestamp = item.get("timestamp")
    try:
        moment = datetime.fromisoformat(timestamp) if isinstance(timestamp, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        return f"timestamp {timestamp!r} is not an RFC 3339 time"
    return None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
