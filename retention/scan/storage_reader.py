"""Read the inventory straight from the registry's filesystem storage; reads only.

For the sidecar that already mounts the registry's volume: instead of two requests per tag,
the files the registry itself would read, under ``<root>/docker/registry/v2`` (the layout of
Distribution's filesystem driver, which ``registry garbage-collect`` walks the same way):

* a repository is a directory under ``repositories/`` holding ``_layers`` (walked depth
  first in sorted order, as the catalog is), its tags the directories of
  ``_manifests/tags/``, a tag's digest the content of ``<tag>/current/link``;
* a manifest is readable in a repository when ``_manifests/revisions/<alg>/<hex>/link``
  names it, a config when ``_layers/<alg>/<hex>/link`` does; the bytes of either are
  ``blobs/<alg>/<hex[:2]>/<hex>/data``.

The result is the same ``Inventory`` the API scan gives (a test checks equality on one
registry), because the same parser reads the same bytes. The same rules fail closed: a
file that disappears mid-scan, a partial write (bytes that do not hash to their digest, a
link that is not a digest) or a link to a missing blob fails that repository, so nothing
is deleted there; the others go on.

Why this cannot delete a moved tag: it only reads. Deletions go through the API, and the
executor re-resolves every tag over the API right before deleting, so a tag moved after
this read is skipped. It uses no cache: reading two small files costs about what a cache
lookup does.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson

from retention.core.model import Inventory, Manifest, Repository, Tag
from retention.errors import InvalidManifest, StorageReadError
from retention.logs import get_logger
from retention.registry import FetchedManifest, parse_created
from retention.registry.client import MANIFEST_LIMIT_BYTES
from retention.registry.digests import digest_matches
from retention.registry.manifests import BlobTable, parse_parts
from retention.scan import storage_prefetch
from retention.scan.inventory import ProgressCallback
from retention.scan.storage_prefetch import DIGEST, LINK_LIMIT_BYTES, Prefetched, read_up_to

log = get_logger(__name__)

V2 = Path("docker/registry/v2")
CONFIG_LIMIT_BYTES = 4 * 1024 * 1024
PREFETCH_RECORD_LIMIT_BYTES = 64 * 1024 * 1024
"""A repository whose manifests and configs come to more is read by the scan itself: the
helper's bytes of it would be held beside the scan's objects (about 1 KB a tag)."""
PREFETCH_AFTER_TAGS = 1000
"""Tags a scan reads itself before it starts the prefetch helper (``storage_prefetch``)
for the repositories left. The helper overlaps their file reads with the planning of the
one before; its start costs about 0.08 s of CPU, what reading some 600 tags costs, so a
scan that ends sooner never pays it."""


def storage_root_problem(root: Path) -> str | None:
    """Why ``root`` cannot be scanned (None when it can): for ``retention check`` and the pass."""
    repositories = root / V2 / "repositories"
    if not repositories.is_dir():
        return f"{repositories} is not a directory (is storage.path the registry's rootdirectory?)"
    if not os.access(repositories, os.R_OK | os.X_OK):
        return f"{repositories} is not readable by this user"
    return None


def read_storage(
    root: Path,
    *,
    registry: str,
    repositories: Callable[[str], bool] = lambda _: True,
    progress: ProgressCallback | None = None,
) -> Inventory:
    """Every repository ``repositories`` accepts, read from the filesystem under ``root``.

    ``registry`` is the API URL the inventory is for: plans name it, and deletions go there.
    Raises ``StorageReadError`` only when the storage root itself cannot be read.
    """
    found = each_repository(root, repositories=repositories, progress=progress)
    return Inventory(registry=registry, repositories=tuple(found))


def each_repository(
    root: Path,
    *,
    repositories: Callable[[str], bool] = lambda _: True,
    progress: ProgressCallback | None = None,
    push_times: bool = False,
) -> Iterator[Repository]:
    """``read_storage`` one repository at a time, for a pass that plans each as it is read
    and so never holds the whole registry's manifests (``planner.Planning``).

    With ``push_times`` each tag's ``pushed`` is its link file's mtime, taken from the file
    its digest is read from (one ``fstat``): what ``push_times.with_link_times`` adds to an
    API scan by looking every link up by name again, which cost a pass more than this.

    The root is checked and the repositories listed on the first ``next()``.
    """
    problem = storage_root_problem(root)
    if problem is not None:
        raise StorageReadError(f"cannot scan the registry's storage: {problem}")
    v2 = str(root / V2)
    names = [n for n in _repository_names(v2 + "/repositories") if repositories(n)]
    blobs = _Directory(f"{v2}/blobs")
    ahead: _Prefetch | None = None
    tags = 0
    try:
        for done, name in enumerate(names):  # listed first: the progress total never grows
            if ahead is None and tags >= PREFETCH_AFTER_TAGS:
                ahead = _Prefetch(v2, names[done:], push_times)
            prefetched = ahead.next(name) if ahead is not None else None
            read = _RepositoryRead(v2, name, blobs, push_times=push_times, prefetched=prefetched)
            repository = read.run()
            tags += len(repository.tags)
            yield repository
            if progress is not None:
                progress(done + 1, len(names))
    finally:
        blobs.close()
        if ahead is not None:
            ahead.close()


def read_manifests(root: Path, repository: str, digests: Iterable[str]) -> dict[str, Manifest]:
    """Manifests of ``repository`` by digest, their children included, read and checked as
    the scan reads them (``scan/untagged.py`` reads manifests no tag reaches this way).

    Raises ``StorageReadError`` or ``InvalidManifest``: the caller fails the repository.
    """
    v2 = str(root / V2)
    blobs = _Directory(f"{v2}/blobs")
    reader = _RepositoryRead(v2, repository, blobs)
    try:
        for digest in digests:
            reader.manifest(digest)
    finally:
        reader.close()
        blobs.close()
    return reader.manifests


def _repository_names(base: str, prefix: str = "") -> Iterator[str]:
    """Depth first in sorted order, like Distribution's catalog walk.

    A directory holding ``_layers`` is a repository, as the 2.8 catalog has it (so a push
    interrupted before its manifest is listed, with no tags), and may hold more
    repositories (``a`` and ``a/b``); directories starting with ``_`` are the registry's own.
    """
    try:
        entries = sorted(entry.name for entry in os.scandir(base) if entry.is_dir())
    except OSError:
        return  # vanished mid-walk: the catalog would not list it either
    if prefix and "_layers" in entries:
        yield prefix.rstrip("/")
    for name in entries:
        if not name.startswith("_"):
            yield from _repository_names(f"{base}/{name}", f"{prefix}{name}/")


class _Directory:
    """A directory whose files are opened relative to it, itself opened on first use (a
    registry whose first upload never finished has no ``blobs`` yet).

    Relative to an open directory a system call walks two or three path components instead
    of a dozen: on the 2-core VM this was measured on, a stat by a full path cost 4.6 µs and
    relative to the directory 3.5 µs, an open and close 5.5 µs and 3.4 µs; reading a tag's
    five files, 10 to 15 % less CPU. The full path is built only for a message.
    """

    __slots__ = ("_descriptor", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._descriptor: int | None = None

    def descriptor(self) -> int:
        """The open directory; ``OSError`` when it cannot be opened, as a file in it would."""
        if self._descriptor is None:
            self._descriptor = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        return self._descriptor

    def full(self, name: str) -> str:
        """The full path of ``name`` in this directory: for messages only."""
        return f"{self.path}/{name}"

    def close(self) -> None:
        if self._descriptor is not None:
            os.close(self._descriptor)
            self._descriptor = None


class _RepositoryRead:
    """One repository, keeping what it read so a failure can still report it.

    Equal blobs are one object within the repository (``shared``), not across repositories:
    a registry-wide table would hold every config ever read, however the pass drops the
    repositories it planned.

    What a tag costs is what a 100,000-tag pass costs 100,000 times, so each file is touched
    by as few system calls as it can be (a link stat'ed; a file opened relative to its
    repository or to ``blobs``, read once and closed), each manifest and config parsed once
    and built once, and nothing is formatted unless it fails.
    """

    def __init__(
        self,
        v2: str,
        name: str,
        blobs: _Directory,
        *,
        push_times: bool = False,
        prefetched: Prefetched | None = None,
    ) -> None:
        self._name = name
        self._directory = _Directory(f"{v2}/repositories/{name}")
        self._blobs = blobs
        self._push_times = push_times
        self._prefetched = prefetched
        self._tags: list[Tag] = []
        self._manifests: dict[str, Manifest] = {}
        self._created: dict[str, datetime | None] = {}
        self._shared: BlobTable = {}

    def run(self) -> Repository:
        """The repository as read; its directory is closed when this returns."""
        error = None
        try:
            for name, digest, pushed in self._tag_links():
                self._tags.append(Tag(name=name, digest=digest, pushed=pushed))
                if digest not in self._manifests:
                    self._manifest(digest)
        except (StorageReadError, InvalidManifest) as exc:
            error = " ".join(f"{self._name}: {exc}".split())
        finally:
            self.close()
        return Repository(
            name=self._name, tags=tuple(self._tags), manifests=self._manifests, error=error
        )

    def close(self) -> None:
        self._directory.close()

    def _tag_links(self) -> Iterator[tuple[str, str, datetime | None]]:
        """Each tag's name, digest and push time, in name order: as prefetched, or read."""
        if self._prefetched is None:
            for name in self._tag_names():
                yield name, *self._tag_link(name)
            return
        for name, digest, mtime in self._prefetched.tags:
            pushed = None if mtime is None else datetime.fromtimestamp(mtime, UTC)
            yield sys.intern(name), digest, pushed

    def _tag_names(self) -> list[str]:
        """The tag directories in name order (the order of a scan's tags); none when there
        are none (as the API's 404 NAME_UNKNOWN).

        Interned: the plan keeps every tag's name, and names like ``latest`` repeat in
        every repository.
        """
        path = self._directory.full("_manifests/tags")
        try:
            return sorted(sys.intern(entry.name) for entry in os.scandir(path) if entry.is_dir())
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise StorageReadError(f"cannot list the tags in {path}: {exc.strerror}") from exc

    def _tag_link(self, tag: str) -> tuple[str, datetime | None]:
        """The tag's digest, and with ``push_times`` its last push (the link's mtime)."""
        link = f"_manifests/tags/{tag}/current/link"
        content, mtime = _read(
            self._directory, link, LINK_LIMIT_BYTES, f"tag {tag!r}", with_mtime=self._push_times
        )
        digest = content.decode("ascii", "replace")
        if DIGEST.fullmatch(digest) is None:
            path = self._directory.full(link)
            raise StorageReadError(f"tag {tag!r}: {path} holds {digest[:80]!r}, not a digest")
        return digest, None if mtime is None else datetime.fromtimestamp(mtime, UTC)

    @property
    def manifests(self) -> dict[str, Manifest]:
        return self._manifests

    def manifest(self, digest: str) -> Manifest:
        return self._manifest(digest)

    def _manifest(self, digest: str) -> Manifest:
        """Read, parse and date a manifest once; an index's children too."""
        known = self._manifests.get(digest)
        if known is not None:
            return known
        body = self._prefetched.manifests.get(digest) if self._prefetched else None
        if body is None:
            body = self._linked_blob(
                "_manifests/revisions/", digest, "manifest", MANIFEST_LIMIT_BYTES
            )
        # No Content-Type: the parser infers it, as Distribution does for stored bytes.
        parsed = parse_parts(FetchedManifest(digest, "", body), self._shared)
        if parsed.config is not None:
            created = self._config_created(parsed.config)
        else:
            children = [self._manifest(child) for child in parsed.children]
            created = max((c.created for c in children if c.created is not None), default=None)
        manifest = self._manifests[digest] = parsed.built(created)
        return manifest

    def _config_created(self, config: str) -> datetime | None:
        """A config's created time, read once however many manifests share it."""
        if config not in self._created:
            body = self._prefetched.configs.get(config) if self._prefetched else None
            if body is None:
                body = self._linked_blob("_layers/", config, "config", CONFIG_LIMIT_BYTES)
            self._created[config] = parse_created(body)
        return self._created[config]

    def _linked_blob(self, directory: str, digest: str, what: str, limit: int) -> bytes:
        """The blob's bytes, once the repository's link to it is found and they are checked
        against its digest (a partial write does not hash to it).

        The link is what makes a blob readable here over the API. Its path already names the
        digest, and a link holds exactly the digest, so a stat that finds the right size
        proves it as well as reading it would (a partial write has another size), at a
        fraction of the cost of opening the file.
        """
        algorithm, _, hex_digest = digest.partition(":")
        link = f"{directory}{algorithm}/{hex_digest}/link"
        try:
            size = os.stat(link, dir_fd=self._directory.descriptor()).st_size
        except OSError as exc:
            path = self._directory.full(link)
            raise StorageReadError(f"{what} {digest}: cannot read {path}: {exc.strerror}") from exc
        if size != len(digest):
            path = self._directory.full(link)
            raise StorageReadError(f"{what} {digest}: {path} holds {size} bytes, not a digest")
        data_file = f"{algorithm}/{hex_digest[:2]}/{hex_digest}/data"
        data, _ = _read(self._blobs, data_file, limit, f"blob {digest}")
        if not digest_matches(digest, data):
            path = self._blobs.full(data_file)
            raise StorageReadError(f"blob {digest}: {path} does not match its digest")
        return data


def _read(
    directory: _Directory, name: str, limit: int, what: str, *, with_mtime: bool = False
) -> tuple[bytes, float | None]:
    """The whole file ``name`` in ``directory``, at most ``limit`` bytes, and its mtime when
    asked (from the open file, so the time is the one of the bytes read); any OS error names
    the file and the reason.

    Three system calls for a file up to one chunk (open, one read, close; a fourth for the
    mtime): see ``read_up_to``.
    """
    try:
        descriptor = os.open(name, os.O_RDONLY, dir_fd=directory.descriptor())
    except OSError as exc:
        path = directory.full(name)
        raise StorageReadError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    try:
        data = read_up_to(descriptor, limit)
        mtime = os.fstat(descriptor).st_mtime if with_mtime else None
    except OSError as exc:
        path = directory.full(name)
        raise StorageReadError(f"{what}: cannot read {path}: {exc.strerror}") from exc
    finally:
        os.close(descriptor)
    if len(data) > limit:
        path = directory.full(name)
        raise StorageReadError(f"{what}: {path} is larger than {limit} bytes")
    return data, mtime


class _Prefetch:
    """The prefetch helper (``storage_prefetch``) reading ahead of the scan, and the records
    it sends, taken one repository at a time in the scan's order.

    Only ever a shortcut: a record that is incomplete, missing or not the repository
    asked for, or a helper that cannot start or stops, means the scan reads the files
    itself from there on, so it reads exactly what it would have read without the helper.
    """

    def __init__(self, v2: str, names: list[str], push_times: bool) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        command = [
            sys.executable,
            "-I",  # isolated: neither this package nor the environment's settings
            "-S",  # no site: its .pth files import more than the helper's start costs
            storage_prefetch.__file__,
            v2,
            str(MANIFEST_LIMIT_BYTES),
            str(CONFIG_LIMIT_BYTES),
            str(PREFETCH_RECORD_LIMIT_BYTES),
            f"--path={Path(orjson.__file__).parent.parent}",
            *(["--mtimes"] if push_times else []),
        ]
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            assert self._process.stdin is not None
            with self._process.stdin:  # read whole by the helper before it answers
                self._process.stdin.write("\0".join(names).encode())
        except OSError as exc:
            self._stop(f"the prefetch helper could not start: {exc}")

    def next(self, name: str) -> Prefetched | None:
        """``name``'s record when the helper read it whole; None: read it here."""
        if self._process is None or self._process.stdout is None:
            return None
        try:
            sent = pickle.load(self._process.stdout)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            self._stop(f"the prefetch helper stopped early ({type(exc).__name__})")
            return None
        record = Prefetched._make(sent) if isinstance(sent, tuple) and len(sent) == 5 else None
        if record is None or record.name != name:
            self._stop(f"the prefetch helper sent a record out of order, for {name!r}")
            return None
        return record if record.complete else None

    def close(self) -> None:
        """Stop the helper if it is still reading (a scan that ended early), and reap it."""
        if self._process is None:
            return
        process, self._process = self._process, None
        if process.poll() is None:
            process.kill()
        if process.stdout is not None:
            process.stdout.close()
        process.wait()

    def _stop(self, why: str) -> None:
        log.warning("storage prefetch stopped; reading in the scan's own process", reason=why)
        self.close()
