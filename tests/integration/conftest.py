"""Fixtures for docker mode: one private engine per session, a registry container per test.

The engine and the image are session-scoped because they cost the most and tests cannot
change them; every test gets its own registry container and storage, so what one GC deletes
cannot leak into another test. The machinery lives in ``tests/docker_engine.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from docker_engine import (
    DockerEngine,
    RegistryContainer,
    build_registry_image,
    container_name,
    engine_session,
    remove_registry_container,
    run_registry_container,
)


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[DockerEngine]:
    """A private dockerd: ``.client`` (docker.DockerClient), ``.host`` (unix://...)."""
    yield from engine_session()


@pytest.fixture(scope="session")
def registry_image(docker_engine: DockerEngine) -> str:
    """``retention-test/registry:2``, imported from this host's files; returns its id."""
    return build_registry_image(docker_engine.client)


@pytest.fixture
def registry_container(
    docker_engine: DockerEngine,
    registry_image: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> Iterator[RegistryContainer]:
    """A registry in a container on 127.0.0.1, answering; removed after the test.

    Options by indirect parametrisation, as keyword arguments of ``run_registry_container``::

        @pytest.mark.parametrize(
            "registry_container", [{"environment": {"REGISTRY_LOG_LEVEL": "info"}}], indirect=True
        )
    """
    options = getattr(request, "param", {})
    registry = run_registry_container(
        docker_engine.client, tmp_path, container_name(request.node.name), **options
    )
    try:
        yield registry
    finally:
        remove_registry_container(docker_engine.client, registry)
