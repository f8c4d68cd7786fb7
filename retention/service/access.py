"""Who may use the daemon's endpoints that change state: a shared bearer token.

Owns reading a secret from where the policy points (a file or an environment variable,
never the policy itself) and checking an ``Authorization`` header against it in constant
time. It knows nothing of routes: the HTTP code asks a ``BearerToken`` per request, so a
second endpoint with its own secret (registry notifications, say) builds a second one.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from retention.core.policy import Server
from retention.errors import SecretError

# A token shorter than this is guessable; a longer one costs nothing to generate.
MIN_TOKEN_LENGTH = 16
CHALLENGE = 'Bearer realm="retention"'


@dataclass(frozen=True)
class BearerToken:
    """One secret; ``repr`` never shows it, so a logged object cannot leak it."""

    secret: bytes

    def __repr__(self) -> str:
        return "BearerToken(***)"

    def allows(self, authorization: str | None) -> bool:
        """True when the header is ``Bearer <the secret>``; compared in constant time."""
        if authorization is None:
            return False
        scheme, _, presented = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(presented.strip().encode(), self.secret)


def read_secret(
    file: Path | None, env: str | None, what: str, environ: Mapping[str, str] | None = None
) -> BearerToken | None:
    """The token from ``file`` or the variable ``env``; None when neither is set.

    Read when the daemon starts, so a missing file or an empty variable stops it there
    rather than leaving the endpoint open or locked for good.
    """
    if file is not None:
        return _checked(_read_file(file, what), f"{what} file {file}")
    if env is not None:
        value = (os.environ if environ is None else environ).get(env, "")
        return _checked(value.strip(), f"{what} variable {env}")
    return None


def server_token(server: Server, environ: Mapping[str, str] | None = None) -> BearerToken | None:
    """The token guarding ``POST /run`` (and ``/report`` when protected)."""
    return read_secret(server.token_file, server.token_env, "server token", environ)


def _read_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretError(f"cannot read the {what} file {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise SecretError(f"the {what} file {path} is not UTF-8 text") from exc


def _checked(value: str, where: str) -> BearerToken:
    if not value:
        raise SecretError(f"the {where} is empty")
    if len(value) < MIN_TOKEN_LENGTH:
        raise SecretError(f"the {where} holds fewer than {MIN_TOKEN_LENGTH} characters")
    if any(c.isspace() for c in value):
        raise SecretError(f"the {where} contains whitespace")
    return BearerToken(value.encode())
