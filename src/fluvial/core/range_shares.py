"""How many of a projection's slice ranges each node sharing it should run.

Nodes know each other only by name (the holders of the projection's presence leases, see
`fluvial.projection._shared`). Every node computes its own share from the same sorted list of
names, so the shares add up to the number of ranges and differ by at most one: a node that runs
more than its share gives ranges up, one that runs fewer takes free ones.
"""

from __future__ import annotations

from collections.abc import Collection

__all__ = ["share_of"]


def share_of(node: str, live: Collection[str], ranges: int) -> int:
    """How many of `ranges` ranges `node` should run while the nodes named `live` are alive.

    The `ranges % len(nodes)` first nodes by name run one more than the others. A node that
    is not in `live` (it found no free presence slot: more nodes than ranges) counts as the
    last one, so it runs a range only if there are ranges left over for it.
    """
    others = sorted(set(live) - {node})
    rank = sum(1 for other in others if other < node) if node in live else len(others)
    base, extra = divmod(ranges, len(others) + 1)
    return base + (1 if rank < extra else 0)
