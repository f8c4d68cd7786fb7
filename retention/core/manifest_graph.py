"""Which manifests lie below which: an index's children, and theirs, within one repository.

The planner, the untagged rules and the platform rows all walk the same graph; one walk
means one answer to "what does keeping this index keep". Pure.
"""

from __future__ import annotations

from collections.abc import Mapping

from retention.core.model import Manifest


def children(digest: str, manifests: Mapping[str, Manifest]) -> tuple[str, ...]:
    """The manifests an index names; none for an image or a manifest not scanned."""
    manifest = manifests.get(digest)
    return manifest.children if manifest is not None else ()


def descendants(digest: str, manifests: Mapping[str, Manifest]) -> list[str]:
    """Every manifest below ``digest`` (children of indexes, recursively), without cycles."""
    found: list[str] = []
    seen: set[str] = {digest}
    stack = list(children(digest, manifests))
    while stack:
        child = stack.pop()
        if child not in seen:
            seen.add(child)
            found.append(child)
            stack.extend(children(child, manifests))
    return found
