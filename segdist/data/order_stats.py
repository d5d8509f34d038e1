"""How random a training order's batches are and where its repeats fall: measures for tests and benchmarks.

A uniform shuffle (a DataLoader with shuffle=True) is the reference: benchmarks/order_quality.py
prints these for segdist's order and for it; tests/test_order.py holds the order to them.
"""

from __future__ import annotations

import math

import numpy as np

TAIL = 0.2  # the later copies' region: the epoch's last 20%


def batch_pairs(order: np.ndarray, global_batch: int, n: int) -> np.ndarray:
    """The distinct unordered pairs of samples sharing a global batch, as sorted int64 codes a * n + b (a < b).

    `order` holds whole global batches (its length a multiple of `global_batch`); a sample paired with
    its own repeated copy is not a pair.
    """
    if len(order) % global_batch:
        raise ValueError(f"{len(order)} positions are not whole global batches of {global_batch}")
    batches = np.sort(np.asarray(order, np.int64).reshape(-1, global_batch), axis=1)
    first, second = np.triu_indices(global_batch, 1)
    codes = batches[:, first]  # a <= b: each batch's ids are sorted
    codes *= n
    codes += batches[:, second]
    codes = codes.ravel()
    codes.sort()  # (not np.unique: numpy 2.4's is many times slower on millions of int64)
    keep = np.empty(len(codes), bool)
    keep[:1] = True
    np.not_equal(codes[1:], codes[:-1], out=keep[1:])
    keep &= codes % (n + 1) != 0  # a * n + b is a multiple of n + 1 only where a == b (two copies)
    return codes[keep]


def shared_count(previous: np.ndarray, current: np.ndarray) -> int:
    """How many codes of sorted unique `current` are also in sorted unique `previous`."""
    both = np.sort(np.concatenate([previous, current]), kind="stable")  # two sorted runs: one merge
    return int(np.count_nonzero(both[1:] == both[:-1]))


def repeated_pair_share(pairs: list[np.ndarray]) -> float:
    """Mean over e >= 1 of |pairs[e] & pairs[e-1]| / |pairs[e]| (per-epoch sorted unique pair codes)."""
    shares = [shared_count(prev, cur) / len(cur) for prev, cur in zip(pairs, pairs[1:]) if len(cur)]
    return float(np.mean(shares)) if shares else math.nan


def distinct_mates_per_sample(pairs: list[np.ndarray], n: int, buckets: int = 64) -> float:
    """Distinct batch-mates per sample over all the epochs' pairs, averaged over the `n` samples."""
    edges = np.linspace(0, n * n, buckets + 1).astype(np.int64)  # in slices (a sort that fits in a cache)
    cuts = [np.r_[0, np.searchsorted(p, edges[1:-1]), len(p)] for p in pairs]
    distinct = 0
    for k in range(buckets):
        codes = np.concatenate([p[c[k]:c[k + 1]] for p, c in zip(pairs, cuts)] + [np.empty(0, np.int64)])
        codes.sort()
        distinct += int(np.count_nonzero(codes[1:] != codes[:-1])) + (len(codes) > 0)
    return 2.0 * distinct / n


def later_copies_in_tail(order: np.ndarray, tail: float = TAIL) -> tuple[int, int]:
    """(second-and-later copies of a sample, how many of them lie in the last `tail` of `order`'s positions).

    A sample's copies are ranked by position; the first is not counted, every later one is.
    """
    order = np.asarray(order)
    by_id = np.argsort(order, kind="stable")  # positions grouped by sample, in position order
    ranked = order[by_id]
    later = by_id[np.r_[False, ranked[1:] == ranked[:-1]]]  # positions of second-and-later copies
    start = math.floor(len(order) * (1.0 - tail))
    return len(later), int(np.count_nonzero(later >= start))


def region_share_ratio(order: np.ndarray, rare: np.ndarray, start: float, stop: float) -> float:
    """The share of positions [start, stop) (fractions of `order`) holding rare samples, over the whole order's."""
    held = np.asarray(rare, bool)[np.asarray(order)]
    lo, hi = math.floor(len(held) * start), math.floor(len(held) * stop)
    whole = held.mean()
    return float(held[lo:hi].mean() / whole) if whole and hi > lo else math.nan
