"""Where the registry username and password come from: the policy, a file, or Docker's config.

Owns reading ``registry.password_file`` (a mounted Kubernetes Secret, say) and the
``auths`` entries of Docker's ``config.json``, so that ``retention`` can use the login an
operator already made with ``docker login``. It runs when the client starts, not when the
policy is loaded: the files may only exist where the pass runs, and a rotated Secret is
read again on the next pass.

It must never put a secret into a message: errors name the file and the key, never the
value, and ``Credentials`` hides its password from ``repr``. Docker credential helpers
(``credsStore``, ``credHelpers``) run external programs and are not supported; the errors
say so rather than pretending the entry is missing.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from retention.core.policy import RegistrySettings
from retention.errors import ConfigError


@dataclass(frozen=True)
class Credentials:
    """A username and password for Basic auth, at the registry or at its token service."""

    username: str
    password: str = field(repr=False)


def resolve(
    settings: RegistrySettings,
    *,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> Credentials | None:
    """The credentials the settings ask for, or None for anonymous access.

    ``environ`` and ``home`` are injected so tests never read the real ``~/.docker``.
    """
    if settings.credentials == "docker":
        environ = os.environ if environ is None else environ
        return docker_credentials(settings.url, docker_config_path(environ, home))
    if settings.username is None:
        return _from_url(settings.url)
    if settings.password_file is not None:
        return Credentials(settings.username, read_password_file(settings.password_file))
    password = settings.password.get_secret_value() if settings.password else ""
    return Credentials(settings.username, password)


def _from_url(url: str) -> Credentials | None:
    """``https://user:password@host`` still works, as it did when httpx read it itself."""
    parts = urlsplit(url)
    if not parts.username:
        return None
    return Credentials(unquote(parts.username), unquote(parts.password or ""))


def read_password_file(path: Path) -> str:
    """The file's text less one trailing newline (``echo`` and most editors add one)."""
    text = _read(path, "registry.password_file", "the password file")
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ConfigError([f"registry.password_file: {path} is empty"])
    return text


def docker_config_path(environ: Mapping[str, str], home: Path | None = None) -> Path:
    """``$DOCKER_CONFIG/config.json``, else ``~/.docker/config.json``, as Docker looks."""
    directory = environ.get("DOCKER_CONFIG")
    if directory:
        return Path(directory) / "config.json"
    return (home or Path.home()) / ".docker" / "config.json"


def docker_credentials(registry_url: str, config_path: Path) -> Credentials:
    """The ``auths`` entry for the registry's host[:port] in a Docker config file."""
    config = _docker_config(config_path)
    host = registry_host(registry_url)
    entries = config.get("auths") or {}
    if not isinstance(entries, dict):
        raise _docker_error(config_path, "'auths' is not a mapping")
    entry = next((v for k, v in entries.items() if registry_host(k) == host), None)
    if not entry:  # missing, or {} as `docker login` leaves it when a helper holds the secret
        raise _docker_error(config_path, _no_entry_reason(config, host))
    return _entry_credentials(entry, host, config_path)


def registry_host(reference: str) -> str:
    """``host[:port]`` of a URL or a Docker config key, lower-cased, for matching.

    Docker writes keys as ``host:port``, ``https://host:port`` or ``https://host/v1/``.
    """
    text = reference.strip()
    if "://" not in text:
        text = "//" + text
    netloc = urlsplit(text).netloc
    return netloc.rpartition("@")[2].lower()


def _read(path: Path, key: str, what: str) -> str:
    """A file's text, or a one-line error naming the key that points at it."""
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{key}: cannot read {what} {path}: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{key}: {what} {path} is not UTF-8 text"]) from exc


def _docker_config(path: Path) -> dict[str, Any]:
    """Docker's config.json as a mapping; every failure names the file, never its content."""
    text = _read(path, "registry.credentials", "the Docker config")
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        # from None: a JSONDecodeError carries the whole document, logins included.
        raise _docker_error(path, f"not valid JSON (line {exc.lineno})") from None
    if not isinstance(config, dict):
        raise _docker_error(path, "not a JSON object")
    return config


def _no_entry_reason(config: Mapping[str, Any], host: str) -> str:
    """Why there is nothing to use; a credential helper gets named, not hidden."""
    helpers = config.get("credHelpers")
    helper = None
    if isinstance(helpers, dict):
        helper = next((v for k, v in helpers.items() if registry_host(k) == host), None)
    helper = helper or config.get("credsStore")
    if helper:
        return (
            f"the login for {host} is kept by the credential helper "
            f"'docker-credential-{helper}', which retention does not support; "
            "use username with password_file instead"
        )
    return f"no login for {host} in 'auths' (run docker login {host})"


def _entry_credentials(entry: object, host: str, path: Path) -> Credentials:
    """Read ``auth`` (base64 user:password) or ``username``/``password`` from one entry."""
    if not isinstance(entry, dict):
        raise _docker_error(path, f"the entry for {host} is not a mapping")
    encoded = entry.get("auth")
    if isinstance(encoded, str) and encoded:
        return _decode_auth(encoded, host, path)
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(password, str) and username:
        return Credentials(username, password)
    if entry.get("identitytoken"):
        reason = f"the entry for {host} holds an identity token, which retention does not support"
        raise _docker_error(path, reason)
    raise _docker_error(path, f"the entry for {host} has neither auth nor username and password")


def _decode_auth(encoded: str, host: str, path: Path) -> Credentials:
    """``auth`` is base64 of ``user:password``; the password may itself contain colons."""
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        decoded = ""
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise _docker_error(path, f"the auth of {host} is not base64 of user:password")
    return Credentials(username, password)


def _docker_error(path: Path, reason: str) -> ConfigError:
    return ConfigError([f"registry.credentials: Docker config {path}: {reason}"])
