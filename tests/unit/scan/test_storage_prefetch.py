"""The one way the storage scan and its prefetch helper read a file: to its end, or to one
byte past the limit, in as few reads as the file allows."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retention.scan.storage_prefetch import read_up_to

CHUNK = 64 * 1024


@pytest.mark.parametrize(
    ("size", "limit", "expected"),
    [
        (0, 1024, 0),
        (70, 1024, 70),  # a link
        (1025, 1024, 1025),  # one byte too many: the caller refuses it
        (5000, 1024, 1025),  # no more than that is read
        (CHUNK - 1, 4 * 1024 * 1024, CHUNK - 1),
        (CHUNK, 4 * 1024 * 1024, CHUNK),  # a full first chunk: read on to the end
        (3 * CHUNK + 5, 4 * 1024 * 1024, 3 * CHUNK + 5),
        (3 * CHUNK + 5, 2 * CHUNK, 2 * CHUNK + CHUNK),  # past the limit: stops a chunk on
    ],
)
def test_a_file_is_read_whole_or_to_just_past_its_limit(
    tmp_path: Path, size: int, limit: int, expected: int
) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    path = tmp_path / "data"
    path.write_bytes(data)
    descriptor = os.open(path, os.O_RDONLY)
    try:
        read = read_up_to(descriptor, limit)
    finally:
        os.close(descriptor)

    assert read == data[:expected]
    assert (len(read) > limit) == (size > limit)
