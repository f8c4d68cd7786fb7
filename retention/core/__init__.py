"""The pure core: the policy model, the inventory and plan model, the planner, rendering.

Nothing here does I/O or imports anything outside ``retention.core`` but ``retention.errors``
(an import-linter contract): every decision retention makes can be tested with a fixed
``now`` and a hand-built inventory.
"""
