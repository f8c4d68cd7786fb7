"""Image references (``host/repo:tag``, ``repo@sha256:...``) that something is running.

Pure. The ``in_use`` sources (``scan/in_use.py``) read text from a file, a command or the
Kubernetes API; this module turns each line into a repository, tag and digest of THIS
registry, or says it belongs to another registry. Parsing follows Distribution's
``reference`` grammar: the first path component is a host when it contains ``.`` or ``:``
or is ``localhost``; without a host a reference is taken to mean this registry, because
that is how people write them in a file (and keeping one tag too many is the safe error).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from retention.errors import NotAReference

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(?::\d+)?|\[[0-9a-fA-F:]+\](?::\d+)?")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclass(frozen=True)
class ImageReference:
    """One image something uses: a tag, a digest or both, and who uses it.

    ``origin`` is the reason's words: ``kubernetes: ns/pod``, ``file: /etc/in-use.txt``,
    ``command: deployed-images``.
    """

    repository: str
    tag: str | None
    digest: str | None
    origin: str


def registry_host(url: str) -> str:
    """The ``host[:port]`` references to this registry start with, default port dropped."""
    parts = urlsplit(url)
    host = parts.netloc.lower()
    default = _DEFAULT_PORTS.get(parts.scheme)
    return host.removesuffix(f":{default}") if default else host


def parse(text: str, origin: str, host: str) -> ImageReference | None:
    """The reference ``text`` names in the registry at ``host``, or None for another registry.

    Raises ``NotAReference`` for text that is no reference at all: the source is then not
    trusted, because a line it meant may be one we cannot read.
    """
    name, digest = _split_digest(text.strip())
    name, tag = _split_tag(name)
    own, repository = _split_host(name, host)
    if not _REPOSITORY.fullmatch(repository):
        raise NotAReference(f"{text.strip()!r} is not an image reference (repository name)")
    if tag is None and digest is None:
        tag = "latest"  # what a runtime pulls for a bare name
    return ImageReference(repository, tag, digest, origin) if own else None


def _split_digest(text: str) -> tuple[str, str | None]:
    name, at, digest = text.partition("@")
    if not at:
        return text, None
    if not _DIGEST.fullmatch(digest):
        raise NotAReference(f"{text!r} is not an image reference (digest)")
    return name, digest


def _split_tag(name: str) -> tuple[str, str | None]:
    head, colon, tag = name.rpartition(":")
    if not colon or "/" in tag:
        return name, None  # no tag, or the colon was a host's port
    if not _TAG.fullmatch(tag):
        raise NotAReference(f"{name!r} is not an image reference (tag)")
    return head, tag


def _split_host(name: str, host: str) -> tuple[bool, str]:
    first, slash, rest = name.partition("/")
    if not slash or not ("." in first or ":" in first or first == "localhost"):
        return True, name
    if not _HOST.fullmatch(first):
        raise NotAReference(f"{name!r} is not an image reference (host)")
    return _bare(first) == _bare(host), rest


def _bare(host: str) -> str:
    """``registry:443`` and ``registry`` are one host to a client; compare them so."""
    lowered = host.lower()
    for port in _DEFAULT_PORTS.values():
        lowered = lowered.removesuffix(f":{port}")
    return lowered
