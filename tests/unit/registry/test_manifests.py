"""Manifest bytes into model values: parsed once, built once with the created time."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from retention.core.model import Blob, Manifest
from retention.errors import InvalidManifest
from retention.registry import FetchedManifest, parse_manifest
from retention.registry.manifests import BlobTable, parse_parts
from retention.registry.media_types import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST

BASE_DIGEST = "sha256:" + "b" * 64
BASE = {"digest": BASE_DIGEST, "size": 100}
CREATED = datetime(2024, 3, 15, 10, 0, tzinfo=UTC)


def image(config: str, *layers: dict[str, object], media_type: str = DOCKER_MANIFEST) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"digest": config, "size": 7},
        "layers": list(layers),
    }
    return orjson.dumps(document)


def fetched(body: bytes, digest: str = "sha256:" + "d" * 64) -> FetchedManifest:
    return FetchedManifest(digest, "", body)


def test_an_image_is_built_once_with_the_created_time_of_its_config() -> None:
    body = image("sha256:" + "c" * 64, BASE)

    parsed = parse_parts(fetched(body))

    assert parsed.config == "sha256:" + "c" * 64
    assert parsed.built(CREATED) == Manifest(
        digest="sha256:" + "d" * 64,
        media_type=DOCKER_MANIFEST,
        size=len(body),
        created=CREATED,
        blobs=(Blob("sha256:" + "c" * 64, 7), Blob(BASE_DIGEST, 100)),
    )


def test_parse_manifest_is_the_same_manifest_without_a_created_time() -> None:
    body = image("sha256:" + "c" * 64, BASE, media_type=OCI_MANIFEST)

    manifest, config = parse_manifest(fetched(body))

    assert (manifest, config) == (parse_parts(fetched(body)).built(None), "sha256:" + "c" * 64)


def test_a_layer_shared_by_two_manifests_is_one_object_in_the_table() -> None:
    shared: BlobTable = {}

    first = parse_parts(fetched(image("sha256:" + "1" * 64, BASE)), shared)
    second = parse_parts(fetched(image("sha256:" + "2" * 64, BASE)), shared)

    assert first.blobs[1] is second.blobs[1]
    assert first.blobs[0] != second.blobs[0]
    assert len(shared) == 3


def test_a_layer_with_the_same_digest_and_another_size_is_another_blob() -> None:
    shared: BlobTable = {}
    other = {"digest": BASE_DIGEST, "size": 101}

    first = parse_parts(fetched(image("sha256:" + "1" * 64, BASE)), shared)
    second = parse_parts(fetched(image("sha256:" + "2" * 64, other)), shared)

    assert (first.blobs[1].size, second.blobs[1].size) == (100, 101)


def test_an_index_has_children_and_no_config() -> None:
    child = "sha256:" + "e" * 64
    body = orjson.dumps({"schemaVersion": 2, "manifests": [{"digest": child, "size": 1}]})

    parsed = parse_parts(fetched(body))

    assert (parsed.media_type, parsed.children, parsed.config) == (OCI_INDEX, (child,), None)
    assert parsed.built(CREATED).created == CREATED


@pytest.mark.parametrize(
    ("layer", "why"),
    [
        ({"digest": BASE_DIGEST, "size": -1}, "without a valid size"),
        ({"digest": BASE_DIGEST, "size": True}, "without a valid size"),
        ({"size": 1}, "without a digest"),
    ],
)
def test_a_descriptor_that_cannot_be_trusted_makes_the_manifest_invalid(
    layer: dict[str, object], why: str
) -> None:
    with pytest.raises(InvalidManifest, match=why):
        parse_parts(fetched(image("sha256:" + "c" * 64, layer)))
