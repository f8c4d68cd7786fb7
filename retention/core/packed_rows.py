"""Rows of frozen values kept column by column: a large plan in a fraction of the memory.

A plan holds one ``TagDecision`` per tag and one ``ManifestDeletion`` per manifest it
deletes until it is reported. As objects, with their digest strings and datetimes, they
took about 430 bytes per tag (tracemalloc, 20,000 tags, four in five deleted); as columns
(a digest as 32 raw bytes, a time or a size as 8, a reason as an index into the few
reasons a repository has or a pointer to a shared one, the tag names as one string) they
take about 140. ``PackedRows`` is a ``Sequence`` of the original rows, built
again on each read and equal to the tuple it was made from, so the planner, the reports
and the executor read it as they read a tuple; it is a representation, not a new model.

Every value comes back equal and of the same type. A column whose values do not all fit
its packing (a digest that is not sha256, a time not in UTC, a type it does not know)
keeps them as they are, so packing can lose memory savings but never a value.
"""

from __future__ import annotations

import operator
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum
from itertools import accumulate, chain, repeat
from operator import attrgetter
from typing import Any, Generic, Protocol, TypeVar, overload

Row = TypeVar("Row")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_NONE = -(2**63)  # None in an integer column: no time or size is this value
_SHA256 = "sha256:"
_DIGEST_LENGTH = len(_SHA256) + 64
_ZONE_AND_FOLD = attrgetter("tzinfo", "fold")


class Column(Protocol):
    """One field of every row, packed; ``length`` rows (a column of one value needs it)."""

    def values(self, length: int) -> Sequence[Any]: ...

    def at(self, index: int) -> Any: ...


Packer = Callable[[Sequence[Any]], Column | None]
"""Packs a field's values, or returns None when they do not all fit its packing."""


class Layout(Generic[Row]):
    """How to pack one kind of row: a packer per field, in the order ``make`` takes them."""

    def __init__(self, make: Callable[..., Row], **packers: Packer) -> None:
        if is_dataclass(make) and [f.name for f in fields(make)] != list(packers):
            raise ValueError(f"a layout of {make!r} names every field in order")
        self.make = make
        self.packers = tuple(packers.items())


class PackedRows(Sequence[Row]):
    """The rows given, as columns; iterating builds them again, equal to the originals."""

    __slots__ = ("_columns", "_layout", "_length")

    def __init__(self, layout: Layout[Row], rows: Iterable[Row]) -> None:
        given = rows if isinstance(rows, tuple | list) else tuple(rows)
        self._layout = layout
        self._length = len(given)
        self._columns: tuple[Column, ...] = ()
        if given:
            self._columns = tuple(
                pack(packer, list(map(attrgetter(name), given))) for name, packer in layout.packers
            )

    def column(self, name: str) -> Sequence[Any]:
        """One field of every row, without building the rows (for counting)."""
        if not self._length:
            return ()
        names = [field for field, _ in self._layout.packers]
        return self._columns[names.index(name)].values(self._length)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[Row]:
        if not self._length:
            return iter(())
        make = self._layout.make
        return (make(*values) for values in zip(*self._decoded(), strict=True))

    def _decoded(self) -> list[Sequence[Any]]:
        return [column.values(self._length) for column in self._columns]

    @overload
    def __getitem__(self, index: int) -> Row: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Row, ...]: ...

    def __getitem__(self, index: int | slice) -> Row | tuple[Row, ...]:
        if isinstance(index, slice):
            return tuple(self)[index]
        position = index + self._length if index < 0 else index
        if not 0 <= position < self._length:
            raise IndexError("row index out of range")
        return self._layout.make(*(column.at(position) for column in self._columns))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PackedRows | tuple):
            return len(self) == len(other) and tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return repr(tuple(self))


def pack(packer: Packer, values: Sequence[Any]) -> Column:
    """What ``packer`` makes of the values, else the values as they are; a column of only
    None or only ``()`` (no push times, no parents) is one value."""
    for constant in _CONSTANTS:
        if values.count(constant.value) == len(values):  # only None equals None, () ()
            return constant
    packed = packer(values)
    return packed if packed is not None else _Plain(tuple(values))


# -- packers: each takes a field's values and returns a column, or None when they do not fit


def choices(values: Sequence[Any]) -> Column | None:
    """Few distinct values (rules, reasons, kinds): a table of them and one index per row.

    Values are told apart by equality, so only for kinds where equal means the same value:
    str, int or one Enum, with None (``Action.KEEP == "keep"``, ``1 == True``).
    """
    kinds = set(map(type, values)) - {type(None)}
    if len(kinds) > 1 or (not kinds <= {str, int} and not issubclass(kinds.pop(), Enum)):
        return None
    table = list(dict.fromkeys(values))
    if len(table) == 1:
        return _Same(table[0])
    if len(table) == len(values):
        return None  # every value differs: a tuple of them is smaller
    index = {value: code for code, value in enumerate(table)}
    return _Choices(tuple(table), _unsigned(list(map(index.__getitem__, values))))


def digests(values: Sequence[Any]) -> Column | None:
    """``sha256:`` and 64 lowercase hex digits: 32 bytes each instead of a 120-byte string.

    Checked and decoded as one string (a plan packs a million, and a loop per digest was
    most of the cost): every 71st character from each offset spells ``sha256:``.
    """
    if set(map(type, values)) != {str} or set(map(len, values)) != {_DIGEST_LENGTH}:
        return None
    joined = "".join(values)
    count = len(values)
    if any(joined[at::_DIGEST_LENGTH] != letter * count for at, letter in enumerate(_SHA256)):
        return None
    hexes = joined.replace(_SHA256, "")  # only the prefixes, or the length tells
    if len(hexes) != 64 * count:
        return None
    try:
        data = bytes.fromhex(hexes)
    except ValueError:
        return None
    return _Digests(data) if data.hex() == hexes else None  # upper case would not come back


def moments(values: Sequence[Any]) -> Column | None:
    """Aware UTC datetimes (or None) as microseconds since 1970."""
    present = [value for value in values if value is not None] if None in values else values
    if set(map(type, present)) - {datetime} or set(map(_ZONE_AND_FOLD, present)) - {(UTC, 0)}:
        return None  # not one that comes back equal from microseconds
    since = map(operator.sub, present, repeat(_EPOCH))
    micros = map(operator.floordiv, since, repeat(_MICROSECOND))
    if present is values:
        return _Moments(array("q", micros))
    found = iter(micros)
    return _Moments(array("q", [_NONE if v is None else next(found) for v in values]))


def integers(values: Sequence[Any]) -> Column | None:
    """Sizes (or None) as 8-byte integers instead of 32-byte objects."""
    if set(map(type, values)) - {int, type(None)} or _NONE in values:
        return None
    try:
        return _Integers(array("q", [_NONE if v is None else v for v in values]))
    except OverflowError:
        return None


def texts(values: Sequence[Any]) -> Column | None:
    """Strings (tag names) as one string and where each ends: no object per name."""
    if set(map(type, values)) != {str}:
        return None
    return _Texts("".join(values), _unsigned(list(accumulate(map(len, values)))))


def tuples_of(inner: Packer) -> Packer:
    """Tuples (a deletion's tags, its parents): their items packed by ``inner``, and ends."""

    def packer(values: Sequence[Any]) -> Column | None:
        if set(map(type, values)) != {tuple}:
            return None
        items = list(chain.from_iterable(values))
        return _Tuples(pack(inner, items), _unsigned(list(accumulate(map(len, values)))))

    return packer


def _unsigned(numbers: list[int]) -> array[int]:
    """The smallest array that holds ``numbers`` (indexes and offsets, never negative)."""
    largest = max(numbers, default=0)
    for code in "BHIQ":
        if largest < 2 ** (8 * array(code).itemsize):
            return array(code, numbers)
    raise OverflowError(f"{largest} does not fit an array")


def _starts_and_ends(ends: array[int]) -> zip[tuple[int, int]]:
    return zip(chain((0,), ends), ends, strict=False)


# -- columns --------------------------------------------------------------------------------


class _Same:
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def values(self, length: int) -> Sequence[Any]:
        return [self.value] * length

    def at(self, index: int) -> Any:
        return self.value


_CONSTANTS = (_Same(None), _Same(()))  # shared: most repositories have no push times


class _Plain:
    __slots__ = ("items",)

    def __init__(self, items: tuple[Any, ...]) -> None:
        self.items = items

    def values(self, length: int) -> Sequence[Any]:
        return self.items

    def at(self, index: int) -> Any:
        return self.items[index]


class _Choices:
    __slots__ = ("codes", "table")

    def __init__(self, table: tuple[Any, ...], codes: array[int]) -> None:
        self.table, self.codes = table, codes

    def values(self, length: int) -> Sequence[Any]:
        table = self.table
        return [table[code] for code in self.codes]

    def at(self, index: int) -> Any:
        return self.table[self.codes[index]]


class _Digests:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def values(self, length: int) -> Sequence[Any]:
        hexes = self.data.hex()
        return [_SHA256 + hexes[start : start + 64] for start in range(0, len(hexes), 64)]

    def at(self, index: int) -> Any:
        return _SHA256 + self.data[32 * index : 32 * index + 32].hex()


class _Moments:
    __slots__ = ("micros",)

    def __init__(self, micros: array[int]) -> None:
        self.micros = micros

    def values(self, length: int) -> Sequence[Any]:
        return [self._moment(micros) for micros in self.micros]

    def at(self, index: int) -> Any:
        return self._moment(self.micros[index])

    @staticmethod
    def _moment(micros: int) -> datetime | None:
        return (
            None if micros == _NONE else _EPOCH + timedelta(0, 0, micros)
        )  # keywords: twice the time


class _Integers:
    __slots__ = ("numbers",)

    def __init__(self, numbers: array[int]) -> None:
        self.numbers = numbers

    def values(self, length: int) -> Sequence[Any]:
        return [None if number == _NONE else number for number in self.numbers]

    def at(self, index: int) -> Any:
        number = self.numbers[index]
        return None if number == _NONE else number


class _Texts:
    __slots__ = ("ends", "joined")

    def __init__(self, joined: str, ends: array[int]) -> None:
        self.joined, self.ends = joined, ends

    def values(self, length: int) -> Sequence[Any]:
        joined = self.joined
        return [joined[start:end] for start, end in _starts_and_ends(self.ends)]

    def at(self, index: int) -> Any:
        start = self.ends[index - 1] if index else 0
        return self.joined[start : self.ends[index]]


class _Tuples:
    __slots__ = ("ends", "items")

    def __init__(self, items: Column, ends: array[int]) -> None:
        self.items, self.ends = items, ends

    def values(self, length: int) -> Sequence[Any]:
        items = self.items.values(self.ends[-1] if self.ends else 0)
        return [tuple(items[start:end]) for start, end in _starts_and_ends(self.ends)]

    def at(self, index: int) -> Any:
        start = self.ends[index - 1] if index else 0
        return tuple(self.items.at(i) for i in range(start, self.ends[index]))
