"""Fixtures shared by every test tier: a real registry per test, and a seeder for it.

Support code lives in plain modules beside this file (``registry_server.py``). ``tests`` is
not a package; this conftest puts its own directory on ``sys.path`` so test modules in any
tier can ``from registry_server import ...`` under either pytest import mode.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import settings

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


def _write_bytecode() -> None:
    """Bytecode written for this run even when the environment forbids it.

    With ``PYTHONDONTWRITEBYTECODE`` set (this machine sets it), every xdist worker
    compiled and assertion-rewrote every test module at collection (8.5 s of CPU per
    worker, 2.4 s with bytecode kept) and every ``python -m retention`` a test starts
    compiled the package again (0.1 s each). ``__pycache__`` is in ``.gitignore``. (A
    ``PYTHONPYCACHEPREFIX`` was tried: it also moved the bytecode of every temporary venv
    the tests make, 100 MB a run, into one place that nothing cleans.) Runs when this
    conftest is loaded, before the workers start, so they and their subprocesses inherit it.
    """
    if sys.dont_write_bytecode:
        sys.dont_write_bytecode = False
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)


_write_bytecode()

from registry_server import RegistryServer, Seeder, registry_binary  # noqa: E402

# Hypothesis fails an example that takes over 200 ms; on a shared 2-core machine a correct
# property test did (test_semver, once, under load). Time limits belong in benchmarks/.
settings.register_profile("shared-machine", deadline=None)
settings.load_profile("shared-machine")


@pytest.fixture(autouse=True)
def _fresh_structlog() -> Iterator[None]:
    """The CLI, run in-process by many tests, configures structlog (a level filter, a
    stream); no test may inherit that from the one before it."""
    yield
    structlog.reset_defaults()


@pytest.fixture
def registry_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RegistryServer]:
    """A fresh ``docker-registry serve`` for one test; a missing binary fails, never skips.

    Options come by indirect parametrisation, as keyword arguments of ``RegistryServer``::

        @pytest.mark.parametrize("registry_server", [{"delete_enabled": False}], indirect=True)
    """
    binary = registry_binary()
    if binary is None:
        pytest.fail("docker-registry (CNCF Distribution) is not installed; the tests need it")
    options: dict[str, Any] = getattr(request, "param", {})
    server = RegistryServer(tmp_path / "registry", binary=binary, **options)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def seeder(registry_server: RegistryServer) -> Iterator[Seeder]:
    seeder = Seeder(registry_server.url)
    try:
        yield seeder
    finally:
        seeder.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run first, in collection order otherwise.

    On two workers a minute-long test that starts last is the suite's tail: the other
    worker has nothing left to do. Started first, it runs while the other worker (and, with
    ``--dist worksteal``, later this one) works through the short tests. The sort is stable
    and the same on every worker, as xdist requires.
    """
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
