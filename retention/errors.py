"""Every failure the tool expects, as one exception tree.

The CLI and the daemon turn these into one-line messages; anything that is not a
``RetentionError`` is a bug and may show a traceback.

    RetentionError
    ├── ConfigError            the policy file is wrong (exit 2); carries every problem
    ├── RegistryError          an HTTP exchange failed: method, URL, status, registry code
    │   ├── RegistryUnreachable    connection refused, DNS, TLS, timeout after retries
    │   ├── AuthenticationError    401/403
    │   ├── NotFound               404 (a repository or manifest vanished)
    │   ├── DeleteDisabled         405 UNSUPPORTED: storage.delete.enabled is false
    │   ├── WriteRefused           405 on a push: read-only maintenance mode
    │   └── InvalidManifest        a body that is not what its digest or media type says
    ├── PlanFileError          a saved plan file is not a ``retention plan`` JSON report
    ├── PlanMismatch           a saved plan is for another registry than the policy's
    ├── LockError              another pass holds the lock
    ├── TrashError             the trash cannot be read or written, or a bin is missing
    ├── GarbageCollectionError a GC command or container failed
    ├── ProbeFailed            the registry did not take a test push back whole after GC
    ├── StorageError           storage could not be measured
    ├── StorageReadError       the registry's storage could not be read for a scan
    ├── SecretError            a token file or variable named in the policy cannot be read
    ├── AuditError             the audit log cannot be written or read
    ├── EventStoreError        the notification event store cannot be read or written
    ├── MalformedEnvelope      a notification body that is not Distribution's envelope
    ├── InUseError             an in_use source could not be read: the pass deletes nothing
    ├── NotAReference          text in an in_use source that is not an image reference
    ├── DeliveryError          one attempt to deliver a notify: message failed (retried)
    ├── HoldsError             the file of restored tags' holds cannot be read or written
    ├── PassInterrupted        Ctrl-C (or a cancel) during deletion: how far it got
    ├── GateError              the write gate could not start (gate.listen taken, say)
    ├── UpstreamProtocolError  the registry's answer on an HTTP/1.1 connection is not HTTP/1
    │   └── UpstreamTimeout        ... or it left a read (or a write) waiting too long
    └── DemoError              the demo's throwaway registry could not be started

Every module raises these and nothing defines its own, so this drawing is the whole list.
"""

from __future__ import annotations

from typing import TypeVar


class RetentionError(Exception):
    """Base of every expected failure; ``str()`` is the one-line message."""


class ConfigError(RetentionError):
    """The policy file is invalid; ``problems`` holds one line per mistake."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class RegistryError(RetentionError):
    """An exchange with the registry failed after retries."""

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        url: str = "",
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.code = code
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = f"{self.method} {self.url}".strip()
        parts = [self.message]
        if where:
            parts.append(f"({where}")
            detail = ", ".join(str(x) for x in (self.status, self.code) if x is not None)
            parts[-1] += f": {detail})" if detail else ")"
        return " ".join(parts)


class RegistryUnreachable(RegistryError):
    """No HTTP answer at all: connection refused, DNS, TLS or timeout."""


class AuthenticationError(RegistryError):
    """The registry refused our credentials (401) or permissions (403)."""


class NotFound(RegistryError):
    """404: the repository, tag, manifest or blob does not exist (any more)."""


class DeleteDisabled(RegistryError):
    """405 UNSUPPORTED on DELETE: the registry has deletes switched off."""


class WriteRefused(RegistryError):
    """405 on an upload or manifest PUT: the registry is read-only (maintenance mode)."""


class InvalidManifest(RegistryError):
    """A manifest whose bytes do not match its digest, or that cannot be parsed."""


class PlanFileError(RetentionError):
    """A saved plan that is not a ``retention plan --format json`` report."""


class PlanMismatch(RetentionError):
    """A saved plan is for another registry than the policy's."""


class LockError(RetentionError):
    """Another retention pass holds the lock on this storage."""


class GarbageCollectionError(RetentionError):
    """Garbage collection failed; the registry has been started again if we stopped it."""


class TrashError(RetentionError):
    """The trash cannot be read or written, or a bin does not exist."""


class ProbeFailed(RetentionError):
    """After GC, a test image could not be pushed, pulled back whole, or deleted."""


class StorageError(RetentionError):
    """Storage size could not be measured."""


class StorageReadError(RetentionError):
    """A file of the registry's storage is missing, partial or not what its link says.

    Inside one repository it fails that repository only (the scan fails closed); a storage
    root that is not there at all fails the pass.
    """


class SecretError(RetentionError):
    """A secret the policy points at (``server.token_file``, ``token_env``) is unusable."""


class AuditError(RetentionError):
    """``state_dir/audit.jsonl`` cannot be appended to or read."""


class EventStoreError(RetentionError):
    """The sqlite file of received registry events failed; the sender will retry."""


class MalformedEnvelope(RetentionError):
    """A ``POST /events`` body that is not ``{"events": [...]}`` JSON; answered 400."""


class InUseError(RetentionError):
    """An ``in_use`` source failed; the message names it. Nothing is deleted in that pass."""


class NotAReference(RetentionError):
    """Text that is not an image reference; the message says what is wrong with it."""


class DeliveryError(RetentionError):
    """One attempt to deliver a notification failed; the notifier retries it, and it never
    leaves ``service/notify.py`` (a pass is never failed by a notification)."""


class HoldsError(RetentionError):
    """``state_dir/holds.json`` cannot be read or written; the pass stops (fail closed)."""


class PassInterrupted(RetentionError):
    """The pass was cancelled while deleting; the trash bin holds what was confirmed."""

    def __init__(self, deleted: int, planned: int, run_id: str) -> None:
        self.deleted = deleted
        self.planned = planned
        self.run_id = run_id
        noun = "deletion" if planned == 1 else "deletions"
        super().__init__(
            f"interrupted after {deleted} of {planned} {noun} "
            f"(the trash of run {run_id} lists the confirmed ones)"
        )


class GateError(RetentionError):
    """The write gate of ``retention serve`` could not start."""


class UpstreamProtocolError(RetentionError):
    """The registry sent a malformed answer on one of ``registry/http1.py``'s connections.

    The gate answers its client 502 (or drops the connection once the answer's head has
    gone to it); the registry client's transport turns it into httpx's protocol error.
    """


class UpstreamTimeout(UpstreamProtocolError):
    """The registry sent nothing for the read timeout while it had a request to answer (or
    took nothing for the write timeout); never sent again: the registry may have it."""


class DemoError(RetentionError):
    """The demo registry could not be started."""


E = TypeVar("E", bound=BaseException)


def first_in(group: BaseExceptionGroup[BaseException], kind: type[E]) -> E | None:
    """The first ``kind`` in a (possibly nested) exception group, for a one-line message.

    Found by hand rather than with ``except*``: before Python 3.11.4 (Debian 12 has 3.11.2)
    an exception raised inside ``except*`` comes out wrapped in a new ExceptionGroup
    (CPython gh-103590), so the caller would miss it.
    """
    for found in group.exceptions:
        if isinstance(found, kind):
            return found
        if isinstance(found, BaseExceptionGroup):
            nested = first_in(found, kind)
            if nested is not None:
                return nested
    return None
