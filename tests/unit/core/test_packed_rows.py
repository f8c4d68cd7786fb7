"""Packed rows read back equal, of the same types, whatever the values; and stay small."""

from __future__ import annotations

import hashlib
import sys
import tracemalloc
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from retention.core.model import (
    Action,
    DeletionKind,
    ManifestDeletion,
    RepositoryPlan,
    TagDecision,
)
from retention.core.packed_rows import (
    Layout,
    PackedRows,
    choices,
    digests,
    integers,
    moments,
    texts,
    tuples_of,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def sha256(name: str) -> str:
    return "sha256:" + hashlib.sha256(name.encode()).hexdigest()


def decision(number: int, **changes: Any) -> TagDecision:
    made = TagDecision(
        tag=f"build-{number}",
        digest=sha256(str(number)),
        created=NOW - timedelta(hours=number, microseconds=number),
        action=Action.DELETE if number % 3 else Action.KEEP,
        rule="nightly",
        reason=f"beyond keep_last=2 (#{number} by created time)",
        size=1000 + number,
    )
    return replace(made, **changes)


@dataclass(frozen=True, slots=True)
class Cell:
    value: Any


def column_of(packer: Any, values: list[Any]) -> list[Any]:
    """The values through a one-column table, read back by iterating and by index."""
    rows = PackedRows(Layout(Cell, value=packer), [Cell(v) for v in values])
    read = [row.value for row in rows]
    assert read == [rows[i].value for i in range(len(values))]
    return read


def test_decisions_read_back_equal_to_the_tuple_they_were_made_from() -> None:
    rows = tuple(decision(n) for n in range(40))

    plan = RepositoryPlan("app", decisions=rows)

    assert plan.decisions == rows and rows == plan.decisions
    assert tuple(plan.decisions) == rows
    assert len(plan.decisions) == 40
    assert plan.decisions[0] == rows[0] and plan.decisions[-1] == rows[-1]
    assert plan.decisions[3:6] == rows[3:6]
    assert hash(plan.decisions) == hash(rows)
    assert repr(plan.decisions) == repr(rows)


def test_every_value_comes_back_of_the_type_it_was() -> None:
    rows = (decision(1), decision(2, created=None, size=None))

    first, second = RepositoryPlan("app", decisions=rows).decisions

    assert first.action is Action.DELETE
    assert type(first.digest) is str and first.digest == rows[0].digest
    assert first.created is not None and first.created.tzinfo is UTC
    assert first.created == rows[0].created and first.created.microsecond == 999_999
    assert (second.created, second.size) == (None, None)


def test_values_that_do_not_fit_a_packing_are_kept_as_they_are() -> None:
    """Another time zone, digests not sha256 or in upper case, a subject here and there."""
    paris = timezone(timedelta(hours=1))
    sha512 = "sha512:" + "ab" * 64
    upper = "sha256:" + "AB" * 32
    rows = (
        decision(1, created=NOW.astimezone(paris), digest=sha512, subject=sha256("x")),
        decision(2, digest=upper, pushed=NOW, pulled=NOW.replace(tzinfo=None)),
        decision(3, kind="signature", size=2**70),
    )

    read = RepositoryPlan("app", decisions=rows).decisions

    assert read == rows
    assert read[0].created is not None and read[0].created.isoformat().endswith("+01:00")
    assert (read[0].digest, read[1].digest) == (sha512, upper)
    assert read[1].pulled is not None and read[1].pulled.tzinfo is None
    assert read[2].size == 2**70


@pytest.mark.parametrize(
    "values",
    [
        [Action.KEEP, "keep", Action.KEEP],  # a StrEnum equals its value
        [1, True, 1],  # True equals 1
        [None, "", None, ""],
        [0.5, 0.5, 1.0],  # not a kind choices packs: kept as given
    ],
)
def test_choices_tell_equal_values_of_different_types_apart(values: list[Any]) -> None:
    read = column_of(choices, values)

    assert read == values
    assert [type(v) for v in read] == [type(v) for v in values]


@pytest.mark.parametrize(
    ("packer", "values"),
    [
        (digests, [sha256("a"), sha256("b"), "sha256:" + "0" * 63 + "g"]),
        (digests, [sha256("a"), "sha256:  " + sha256("b")[9:]]),  # fromhex skips spaces
        (digests, [sha256("a"), "sha256:" + sha256("b")[7:].upper()]),
        (digests, [sha256("a"), None]),
        (moments, [NOW, NOW.replace(fold=1), None]),
        (moments, [NOW, datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)]),
        (integers, [0, -(2**63) + 1, 2**63 - 1, None]),
        (integers, [0, -(2**63), 1]),  # the value that stands for None
        (integers, [1, True, 2]),
        (texts, ["", "ä", "🐳", "build-1", ""]),
        (texts, ["a", None, "b"]),
        (tuples_of(texts), [("a", "b"), (), ("c",), ()]),
        (tuples_of(digests), [(sha256("a"),), (), (sha256("b"), sha256("c"))]),
        (tuples_of(texts), [("a",), ["b"], ("c",)]),  # a list is not a tuple
    ],
)
def test_each_packing_reads_back_exactly_or_keeps_the_values(
    packer: Any, values: list[Any]
) -> None:
    read = column_of(packer, values)

    assert read == values
    assert [type(v) for v in read] == [type(v) for v in values]
    for before, after in zip(values, read, strict=True):
        if isinstance(before, datetime):
            assert (after.tzinfo, after.fold) == (before.tzinfo, before.fold)


def test_an_empty_table_has_no_rows() -> None:
    plan = RepositoryPlan("app")

    assert plan.decisions == () and plan.deletions == ()
    assert list(plan.decisions) == [] and plan.decisions.column("tag") == ()
    with pytest.raises(IndexError):
        plan.decisions[0]


def test_an_index_past_either_end_is_an_index_error() -> None:
    read = RepositoryPlan("app", decisions=(decision(1), decision(2))).decisions

    assert read[-2] == decision(1)
    for index in (2, -3):
        with pytest.raises(IndexError):
            read[index]


def test_deletions_read_back_with_their_tags_and_parents() -> None:
    deletions = (
        ManifestDeletion(sha256("a"), DeletionKind.TAGGED, tags=("v1", "v1.0")),
        ManifestDeletion(sha256("b"), DeletionKind.CHILD, parents=(sha256("a"),)),
        ManifestDeletion(sha256("c"), DeletionKind.ARTIFACT, tags=("sha256-a.sig",)),
        ManifestDeletion(sha256("d"), DeletionKind.UNTAGGED),
    )

    read = RepositoryPlan("app", deletions=deletions).deletions

    assert read == deletions
    assert [d.kind for d in read] == [d.kind for d in deletions]
    assert read.column("digest") == [d.digest for d in deletions]


def test_a_plan_replaced_or_rebuilt_repacks_its_rows_and_compares_by_value() -> None:
    rows = tuple(decision(n) for n in range(5))
    plan = RepositoryPlan("app", decisions=rows, error="unreadable")

    kept = plan.with_rows([replace(d, action=Action.KEEP) for d in rows], ())
    same = replace(plan, name="app")

    assert same == plan and hash(same) == hash(plan)
    assert kept.error == "unreadable" and kept != plan
    assert all(d.action is Action.KEEP for d in kept.decisions)


def test_the_summary_counts_tags_and_untagged_manifests_from_the_columns() -> None:
    rows = (
        decision(1),  # delete
        decision(3),  # keep
        decision(4, tag="", kind="platform"),  # neither a tag nor an untagged manifest
        decision(5, tag="", kind="untagged"),  # delete
        decision(6, tag="", kind="untagged", action=Action.KEEP),
    )

    assert RepositoryPlan("app", decisions=rows).counts() == (2, 1, 2, 1)


def test_a_layout_must_name_every_field_of_its_row_in_order() -> None:
    with pytest.raises(ValueError, match="every field in order"):
        Layout(ManifestDeletion, kind=choices, digest=digests, tags=texts, parents=texts)


def test_a_thousand_decisions_take_a_fraction_of_their_objects_memory() -> None:
    """What the packing is for: a plan holds every decision until it is reported."""
    rows, deletions = _rows(1000)

    as_objects = _allocated(lambda: _rows(1000))
    packed = _allocated(lambda: RepositoryPlan("app", decisions=rows, deletions=deletions))

    assert packed < as_objects / 3


def _rows(count: int) -> tuple[list[TagDecision], list[ManifestDeletion]]:
    """Each with its own strings and times, as a scan makes them."""
    rows = [decision(n, tag=f"nightly-{n}-{sys.maxsize}") for n in range(count)]
    return rows, [ManifestDeletion(d.digest, DeletionKind.TAGGED, tags=(d.tag,)) for d in rows]


def _allocated(make: Any) -> int:
    """Bytes still allocated for what ``make`` returns."""
    tracemalloc.start()
    try:
        kept = make()
        size, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del kept
    return size
