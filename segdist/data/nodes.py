"""Which positions of an epoch's order each node reads, so that nodes read disjoint shards.

With remote shards each node downloads what its processes read into its own cache. The order's
lanes (data/order.py) are shared out among N nodes, lane l to node l mod N (N must divide the
lanes), and node n reads the positions of the global order whose samples are in its lanes, in
order: a node's share mixes its lanes as the global order mixes all of them, and no shard part is
read by two nodes in an epoch. A global batch is N equal slices, one from each node's sequence.
On one node (or local shards, any node count) the sequence is the global order itself.
"""

from __future__ import annotations

import numpy as np

from segdist.data.order import SampleIndex, part_lanes
from segdist.errors import DataError


def node_sequence(index: SampleIndex, order: np.ndarray, seed: int, epoch: int, lanes: int, nodes: int,
                  node: int) -> np.ndarray:
    """Positions of `order` (epoch `epoch`'s global order) whose samples node `node` of `nodes` reads."""
    if nodes == 1:
        return np.arange(len(order))
    lane = part_lanes(len(index.counts), seed, epoch, lanes)[index.parts_of(order)]
    return np.flatnonzero(lane % nodes == node)


def node_floor(index: SampleIndex, factors: np.ndarray | None, nodes: int) -> int:
    """The fewest samples any node's share of any epoch holds.

    Parts are dealt round robin, so a node gets at least parts // nodes of them, each with at least
    its samples' whole repeat factors."""
    if factors is None:
        per_part = np.asarray(index.counts, np.int64)
    else:
        per_part = np.add.reduceat(np.floor(factors).astype(np.int64), index.starts)
    return int(np.sort(per_part)[: len(per_part) // nodes].sum())


def check_nodes(nodes: int, lanes: int) -> None:
    """Refuse a node count that cannot share the lanes out equally."""
    if nodes > 1 and lanes % nodes:
        valid = [n for n in range(1, lanes + 1) if lanes % n == 0]
        raise DataError(f"remote shards are read node by node, each node from its own lanes of the order: {nodes} "
                        f"nodes cannot share {lanes} lanes (data.lanes, at most the shard parts); run on "
                        f"{', '.join(map(str, valid))} node(s), or set data.lanes to a multiple of {nodes} for a new "
                        "run")
