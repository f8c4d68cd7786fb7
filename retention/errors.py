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
    │   └── InvalidManifest        a body that is not what its digest or media type says
    ├── SafetyLimitExceeded    the plan deletes more than the configured budget
    ├── LockError              another pass holds the lock
    ├── GarbageCollectionError a GC command or container failed
    ├── StorageError           storage could not be measured
    └── StorageReadError       the registry's storage could not be read for a scan
"""

from __future__ import annotations


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


class InvalidManifest(RegistryError):
    """A manifest whose bytes do not match its digest, or that cannot be parsed."""


class SafetyLimitExceeded(RetentionError):
    """The plan would delete more than a configured budget allows."""


class LockError(RetentionError):
    """Another retention pass holds the lock on this storage."""


class GarbageCollectionError(RetentionError):
    """Garbage collection failed; the registry has been started again if we stopped it."""


class StorageError(RetentionError):
    """Storage size could not be measured."""


class StorageReadError(RetentionError):
    """A file of the registry's storage is missing, partial or not what its link says.

    Inside one repository it fails that repository only (the scan fails closed); a storage
    root that is not there at all fails the pass.
    """
