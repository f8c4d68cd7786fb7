"""Everything that speaks HTTP to a registry; nothing outside this package imports httpx.

Callers get model values, bytes, str and ``retention.errors`` exceptions, so the transport
(and later its token auth) can change without touching the inventory or the executor.
"""

from retention.registry.client import FetchedManifest, RegistryClient
from retention.registry.manifests import parse_created, parse_manifest

__all__ = ["FetchedManifest", "RegistryClient", "parse_created", "parse_manifest"]
