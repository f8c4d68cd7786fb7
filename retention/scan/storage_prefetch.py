"""Read a registry's storage files ahead of the scan, in a process of its own.

A 100,000-tag storage scan is half file system calls (five files a tag: the tag's link,
the manifest's revision link and bytes, the config's layer link and bytes) and half Python
that turns the bytes into the model and plans them. In one process the two take turns; on
two cores they need not. ``storage_reader`` starts this module as a helper process
(``python -m retention.scan.storage_prefetch``) that does the calls and checks, and sends
each repository's verified bytes down a pipe while the scan parses and plans the one before.

It is only a prefetch, so it decides nothing: the reader trusts what it sends (each blob's
link was found with the right size and its bytes hash to their digest) and reads anything
else itself, by the rules it always follows. A repository the helper could not read whole
(a file missing or damaged, a link that is not a digest, anything unexpected) is sent as
incomplete and read again in the scan's own process, which then fails it with its usual
message, or reads it whole if the file has since appeared. The helper never fails a scan.

It imports only the standard library and orjson, and starts isolated and without
``site`` (``python -I -S``): this environment's ``.pth`` files import certifi and more, which
doubled the start (0.14 s against 0.08 s of CPU on the VM this was measured on). The scan
passes the folder orjson is installed in (``--path=``). The registry client (httpx) and the
model are the scan's business.

Protocol: the arguments are the ``docker/registry/v2`` directory, the manifest, config and
record size limits, ``--mtimes`` to send the tags' link times and ``--path=`` folders to import
from; standard input is the repository names, NUL-separated, read whole before anything
is sent (so neither side can block the other); standard output is one pickled
``Prefetched`` per name, in order, each as a plain tuple (the helper runs as ``__main__``,
where the class has another name).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import sys
from collections.abc import Callable
from typing import IO, NamedTuple

if __name__ == "__main__":  # started without site: where orjson is comes as an argument
    sys.path += [arg.removeprefix("--path=") for arg in sys.argv if arg.startswith("--path=")]

import orjson

DIGEST = re.compile(r"(sha256|sha384|sha512):([0-9a-f]{64,128})")
"""What a link file holds: the digest algorithms Distribution writes, lowercase hex."""

_HASHES: dict[str, Callable[[bytes], hashlib._Hash]] = {
    "sha256": hashlib.sha256,
    "sha384": hashlib.sha384,
    "sha512": hashlib.sha512,
}
LINK_LIMIT_BYTES = 1024  # a link holds a digest: far less
_CHUNK_BYTES = 64 * 1024


class Prefetched(NamedTuple):
    """One repository as the helper read it: a plain tuple of strings, bytes and floats, so
    that it pickles and unpickles in C (a ``Repository`` of model objects takes ten times
    as long, more than reading its files).

    ``tags`` are (name, digest, link mtime or None) in name order; ``manifests`` the bytes
    of every manifest reached from them whose revision link checked out, by digest;
    ``configs`` likewise for configs and their layer links. With ``complete`` False the
    reader reads the repository itself and uses none of it.
    """

    name: str
    complete: bool
    tags: tuple[tuple[str, str, float | None], ...]
    manifests: dict[str, bytes]
    configs: dict[str, bytes]


Limits = tuple[int, int, int]
"""Bytes of one manifest, of one config, and of one repository's record at most: a
repository whose manifests and configs come to more is left to the reader, so that one
giant repository is never held twice (as bytes here and in the pipe, as objects there)."""


class _Unreadable(Exception):
    """Anything the helper cannot vouch for: the reader reads that repository itself."""


class _Repository:
    """The files of one repository, opened relative to its directory and to ``blobs``."""

    def __init__(self, v2: str, blobs: int | None, name: str, limits: Limits) -> None:
        self._path = f"{v2}/repositories/{name}"
        self._directory = os.open(self._path, os.O_RDONLY | os.O_DIRECTORY)
        self._blobs = blobs
        self._manifest_limit, self._config_limit, self._record_limit = limits
        self._record_bytes = 0
        self.manifests: dict[str, bytes] = {}
        self.configs: dict[str, bytes] = {}

    def close(self) -> None:
        os.close(self._directory)

    def tags(self, mtimes: bool) -> tuple[tuple[str, str, float | None], ...]:
        try:
            with os.scandir(f"{self._path}/_manifests/tags") as listing:
                names = sorted(entry.name for entry in listing if entry.is_dir())
        except FileNotFoundError:
            return ()  # no tags at all, as the reader says too
        found = []
        for tag in names:
            link = f"_manifests/tags/{tag}/current/link"
            content, mtime = _read(self._directory, link, LINK_LIMIT_BYTES, mtimes)
            digest = content.decode("ascii", "replace")
            if DIGEST.fullmatch(digest) is None:
                raise _Unreadable
            found.append((tag, digest, mtime))
            self.manifest(digest)
        return tuple(found)

    def manifest(self, digest: str) -> None:
        """A manifest's bytes, then its config's, or its children's (an index)."""
        if digest in self.manifests:
            return
        body = self._linked("_manifests/revisions/", digest, self._manifest_limit)
        self.manifests[digest] = body
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return  # the reader reports it, in its own words
        if not isinstance(document, dict):
            return
        children, config = document.get("manifests"), document.get("config")
        if isinstance(children, list):
            for child in children:
                if isinstance(child, dict) and isinstance(child.get("digest"), str):
                    self.manifest(_checked(child["digest"]))
        elif isinstance(config, dict) and isinstance(config.get("digest"), str):
            config_digest = _checked(config["digest"])
            if config_digest not in self.configs:
                body = self._linked("_layers/", config_digest, self._config_limit)
                self.configs[config_digest] = body

    def _linked(self, directory: str, digest: str, limit: int) -> bytes:
        """A blob this repository links to, its link and its bytes checked as the reader
        checks them (a link holds exactly the digest; the bytes hash to it)."""
        algorithm, _, hex_digest = digest.partition(":")
        link = f"{directory}{algorithm}/{hex_digest}/link"
        if self._blobs is None or os.stat(link, dir_fd=self._directory).st_size != len(digest):
            raise _Unreadable
        data, _ = _read(
            self._blobs, f"{algorithm}/{hex_digest[:2]}/{hex_digest}/data", limit, False
        )
        if _HASHES[algorithm](data).hexdigest() != hex_digest:
            raise _Unreadable
        self._record_bytes += len(data)
        if self._record_bytes > self._record_limit:
            raise _Unreadable
        return data


def _checked(digest: str) -> str:
    if DIGEST.fullmatch(digest) is None:
        raise _Unreadable
    return digest


def _read(directory: int, name: str, limit: int, mtime: bool) -> tuple[bytes, float | None]:
    """The whole file (at most ``limit`` bytes) and, when asked, its mtime."""
    descriptor = os.open(name, os.O_RDONLY, dir_fd=directory)
    try:
        data = read_up_to(descriptor, limit)
        modified = os.fstat(descriptor).st_mtime if mtime else None
    finally:
        os.close(descriptor)
    if len(data) > limit:
        raise _Unreadable
    return data, modified


def read_up_to(descriptor: int, limit: int) -> bytes:
    """An open file's bytes to its end, or ``limit + 1`` of them at most: one byte too many
    says it is larger than ``limit`` (both the scan and this helper read files this way).

    One system call for a file up to one chunk: a regular file returns less than asked only
    at its end, so a short read is the whole file. A chunk, not ``limit``, is asked for,
    which would allocate (and map) 4 MiB per file; ``limit + 1`` when that is smaller (a
    link).
    """
    first = os.read(descriptor, min(limit + 1, _CHUNK_BYTES))
    if len(first) < _CHUNK_BYTES:
        return first
    chunks, received = [first], len(first)
    while len(chunks[-1]) == _CHUNK_BYTES and received <= limit:
        chunks.append(os.read(descriptor, _CHUNK_BYTES))
        received += len(chunks[-1])
    return b"".join(chunks)


def prefetch(v2: str, name: str, blobs: int | None, limits: Limits, mtimes: bool) -> Prefetched:
    """One repository, or an incomplete record when any of it could not be vouched for."""
    try:
        repository = _Repository(v2, blobs, name, limits)
    except OSError:
        return Prefetched(name, False, (), {}, {})
    try:
        tags = repository.tags(mtimes)
    except (OSError, _Unreadable, KeyError, RecursionError):
        return Prefetched(name, False, (), {}, {})
    finally:
        repository.close()
    return Prefetched(name, True, tags, repository.manifests, repository.configs)


def serve(v2: str, limits: Limits, mtimes: bool, names: list[str], out: IO[bytes]) -> None:
    """Each name's record, in order; a record is flushed as soon as it is whole.

    Without a ``blobs`` directory (a registry whose first upload never finished) every
    repository with a tag is incomplete: the reader fails those itself.
    """
    try:
        blobs: int | None = os.open(f"{v2}/blobs", os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        blobs = None
    try:
        for name in names:
            record = tuple(prefetch(v2, name, blobs, limits, mtimes))  # run as __main__: no class
            pickle.dump(record, out, pickle.HIGHEST_PROTOCOL)
            out.flush()
    finally:
        if blobs is not None:
            os.close(blobs)


def main(argv: list[str]) -> int:
    v2, manifest_limit, config_limit, record_limit, *flags = argv
    names = [n for n in sys.stdin.buffer.read().decode().split("\0") if n]
    try:
        serve(
            v2,
            (int(manifest_limit), int(config_limit), int(record_limit)),
            "--mtimes" in flags,
            names,
            sys.stdout.buffer,
        )
    except BrokenPipeError:
        return 0  # the scan stopped early and closed its end: nothing more is wanted
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
