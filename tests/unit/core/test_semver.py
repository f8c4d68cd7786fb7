"""SemVer 2.0 precedence: examples from semver.org, and properties checked by hypothesis."""

from __future__ import annotations

import pytest
import semver as reference
from hypothesis import given
from hypothesis import strategies as st

from retention.core.semver import Version, parse


def version(tag: str) -> Version:
    parsed = parse(tag)
    assert parsed is not None, tag
    return parsed


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.9.0", "1.10.0"),
        ("1.10.0", "2.0.0"),
        ("2.0.0-rc.1", "2.0.0"),
        ("v1.9.9", "v1.10.0"),
        # semver.org section 11.4, in order
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),
        ("1.0.0-alpha.beta", "1.0.0-beta"),
        ("1.0.0-beta", "1.0.0-beta.2"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-beta.11", "1.0.0-rc.1"),
        ("1.0.0-rc.1", "1.0.0"),
    ],
)
def test_precedence_follows_the_specification(lower: str, higher: str) -> None:
    assert version(lower) < version(higher)


def test_build_metadata_and_a_leading_v_do_not_change_precedence() -> None:
    assert version("1.2.3+build.5") == version("v1.2.3") == version("1.2.3+other")


@pytest.mark.parametrize(
    "tag",
    ["latest", "1.2", "1.2.3.4", "01.2.3", "1.2.3-01", "V1.2.3", "1.2.3-", "1.2.3+", "v", "١.٢.٣"],
)
def test_tags_that_are_not_semver_parse_to_none(tag: str) -> None:
    assert parse(tag) is None


_NUMBER = st.integers(min_value=0, max_value=10**6)
_ALPHANUMERIC = "0123456789abcXYZ-"
# An alphanumeric identifier needs a non-digit; few letters, so equal prefixes are common.
_WORD = st.tuples(st.text(_ALPHANUMERIC, max_size=3), st.sampled_from("aXz-")).map("".join)
# Small numbers make equal prefixes likely, and 2 against 11 tells numeric from text order.
_IDENTIFIER = st.one_of(_NUMBER.map(str), st.integers(0, 12).map(str), _WORD)
_BUILD = st.lists(st.text(_ALPHANUMERIC, min_size=1, max_size=4), max_size=2)


@st.composite
def versions(draw: st.DrawFn, numbers: tuple[int, int, int] | None = None) -> str:
    """Valid SemVer 2.0 strings; ``numbers`` fixed makes only the pre-release differ."""
    if numbers is None:
        numbers = draw(st.tuples(*[st.integers(0, 1) | st.integers(2, 12) | _NUMBER] * 3))
    pre = draw(st.lists(_IDENTIFIER, max_size=3))
    build = draw(_BUILD)
    text = ".".join(map(str, numbers))
    if pre:
        text += "-" + ".".join(pre)
    if build:
        text += "+" + ".".join(build)
    return text


@st.composite
def pairs(draw: st.DrawFn) -> tuple[str, str]:
    """Two versions, half the time with the same numbers so their pre-releases decide."""
    first = draw(versions())
    numbers = tuple(int(n) for n in first.split("-")[0].split("+")[0].split("."))
    second = draw(versions(numbers) | versions())  # type: ignore[arg-type]
    return first, second


@given(pairs())
def test_order_agrees_with_the_semver_package(pair: tuple[str, str]) -> None:
    a, b = pair
    expected = reference.Version.parse(a).compare(b)
    ours = (version(a) > version(b)) - (version(a) < version(b))
    assert ours == expected


@given(versions(), versions())
def test_order_is_antisymmetric(a: str, b: str) -> None:
    if version(a) <= version(b) and version(b) <= version(a):
        assert version(a) == version(b)
    assert not (version(a) < version(b) and version(b) < version(a))


@given(versions(), versions(), versions())
def test_order_is_transitive(a: str, b: str, c: str) -> None:
    x, y, z = sorted([version(a), version(b), version(c)])
    assert x <= y <= z and x <= z


@given(versions())
def test_a_leading_v_and_build_metadata_are_ignored_for_any_version(text: str) -> None:
    assert version("v" + text) == version(text) == version(text.split("+")[0])
