"""Image references as people and Kubernetes write them, normalised against our registry."""

from __future__ import annotations

import pytest

from retention.core.image_reference import parse, registry_host
from retention.errors import NotAReference

HOST = registry_host("http://127.0.0.1:5000")
DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("app/web:v1", ("app/web", "v1", None)),
        ("127.0.0.1:5000/app/web:v1", ("app/web", "v1", None)),
        (f"app/web@{DIGEST}", ("app/web", None, DIGEST)),
        (f"127.0.0.1:5000/app/web:v1@{DIGEST}", ("app/web", "v1", DIGEST)),
        ("web", ("web", "latest", None)),
        ("  app/web:v1.2_3-rc  ", ("app/web", "v1.2_3-rc", None)),
    ],
)
def test_references_to_our_registry_are_parsed(text: str, expected: tuple[object, ...]) -> None:
    reference = parse(text, "file: x", HOST)
    assert reference is not None
    assert (reference.repository, reference.tag, reference.digest) == expected
    assert reference.origin == "file: x"


@pytest.mark.parametrize(
    "text",
    [
        "docker.io/library/nginx:1.25",
        "localhost:5000/app:v1",
        "127.0.0.1:5001/app:v1",
        "ghcr.io/a/b",
    ],
)
def test_references_to_other_registries_are_ignored(text: str) -> None:
    assert parse(text, "file: x", HOST) is None


def test_default_ports_name_the_same_host() -> None:
    host = registry_host("https://Registry.Example.com")
    assert parse("registry.example.com:443/app:v1", "f", host) is not None
    assert (
        parse("registry.example.com/app:v1", "f", registry_host("https://registry.example.com:443"))
        is not None
    )


@pytest.mark.parametrize(
    "text",
    ["App/Web:v1", "app/web:", "app/web@sha256:xyz", "app/web:v 1", "app//web", ":v1"],
)
def test_text_that_is_no_reference_raises(text: str) -> None:
    with pytest.raises(NotAReference):
        parse(text, "file: x", HOST)
