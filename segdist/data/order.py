"""The training order: one global sequence of samples per epoch, a pure function of (seed, epoch, dataset).

Every sample of the training split(s) comes exactly once per epoch (repeat-factor sampling, when
on, sets how many times). The sequence is built from fixed integer mixing (splitmix64), not from a
random-number generator whose stream may change with a numpy version (NEP 19), so that a requeued
job on another machine continues the same order; `ALGORITHM` names it in the run state.

    parts     the shard parts of the split(s), permuted per epoch (seeded by (seed, epoch))
    lanes     the permuted parts dealt round-robin into `lanes` lanes (fixed at the run's start)
    runs      each part's samples reshuffled every epoch, in runs of `chunk` consecutive samples
              of the file (chunk 1, the default for local and cached shards: each sample on its
              own; chunk 8 for uncached remote ones: one ranged read), borders shifted per epoch
    window    inside a lane, each run moves at most `window` samples' worth of places
    order     the lanes interleaved in proportion to their lengths (every lane spans the epoch)
    repeats   with repeat factors, a sample's 2nd, 3rd... copies take independent uniform places

so a stretch of the order mixes `lanes` shards while each lane reads from one or two shards at a
time, and batches repeat batch-mates about as rarely as a uniform shuffle (tests/test_order.py).
Positions, not streams, are the unit: global batch k of an epoch is positions [kG, (k+1)G),
G = per-process batch x processes x accumulation (segdist.data.train_loader).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np

ALGORITHM = "segdist-order/2"
# what a hash is drawn for (kept apart so draws do not correlate)
_SHARDS, _WINDOW, _REPEAT, _CHUNK, _WITHIN, _SPREAD = 1, 2, 3, 4, 5, 6
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """Sebastiano Vigna's splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, np.uint64) + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def mix(*keys: int | np.ndarray) -> np.ndarray:
    """A 64-bit hash of integer keys (scalars or arrays, broadcast), stable across machines and versions."""
    h = np.zeros((), np.uint64)
    for key in keys:
        with np.errstate(over="ignore"):
            h = splitmix64(h ^ np.asarray(key, np.int64).astype(np.uint64))
    return h


def uniform(*keys: int | np.ndarray) -> np.ndarray:
    """Floats in [0, 1) from the hash of `keys` (the top 53 bits)."""
    return (mix(*keys) >> np.uint64(11)).astype(np.float64) * 2.0**-53


@dataclass(frozen=True, eq=False)
class SampleIndex:
    """The training samples: shard parts in manifest order, their sample counts and byte offsets."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    offsets: tuple[np.ndarray, ...]  # each sample's first tar header, per part (int64: 8 bytes a sample)
    classes: tuple[tuple[tuple[int, ...], ...], ...] | None  # each sample's classes, per part (repeat factors)

    @property
    def size(self) -> int:
        return sum(self.counts)

    @cached_property
    def starts(self) -> np.ndarray:
        """Global id of each part's first sample."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def parts_of(self, samples: np.ndarray) -> np.ndarray:
        """The part of each global sample id."""
        return np.searchsorted(self.starts, samples, side="right") - 1

    def locate(self, sample: int) -> tuple[int, int]:
        """(part, sample within the part) of a global sample id."""
        part = int(np.searchsorted(self.starts, sample, side="right")) - 1
        return part, sample - int(self.starts[part])

    def fingerprint(self) -> str:
        """A hash of what the order depends on: parts' names, sample counts and offsets."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        names = [url.split("?", 1)[0].rsplit("/", 1)[-1] for url in self.urls]  # not a URL's query (a token)
        offsets = [np.asarray(part).tolist() for part in self.offsets]
        text = json.dumps([names, self.counts, offsets], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def repeat_copies(factors: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """How many times each sample comes in `epoch`: floor(r) plus one with probability frac(r).

    Systematic sampling over the fractions (one seeded offset per epoch, samples in a seeded
    order): each sample's extra copy has exactly its probability, and the epoch's total is
    floor(sum r) or that plus one, so every epoch has the same number of full global batches.
    """
    whole = np.floor(factors)
    frac = factors - whole
    order = np.argsort(mix(seed, epoch, _REPEAT, np.arange(len(factors))), kind="stable")
    cumulative = np.cumsum(frac[order]) + uniform(seed, epoch, _REPEAT, -1)
    before = np.concatenate([cumulative[:1] - frac[order][:1], cumulative[:-1]])
    extra = np.zeros(len(factors), np.int64)
    extra[order] = (np.floor(cumulative) - np.floor(before)).astype(np.int64)
    return whole.astype(np.int64) + extra


def epoch_length(index: SampleIndex, factors: np.ndarray | None) -> int:
    """The fewest samples any epoch's order holds (the epoch length that every epoch fills)."""
    if factors is None:
        return index.size
    return int(np.floor(factors).sum() + np.floor((factors - np.floor(factors)).sum()))


def epoch_order(index: SampleIndex, seed: int, epoch: int, lanes: int, window: int,
                factors: np.ndarray | None = None, chunk: int = 1) -> np.ndarray:
    """The global sample ids of `epoch` in training order (int64; repeated ids when `factors` is given).

    The shard parts are permuted and dealt into lanes; inside a part the samples are reshuffled
    every epoch, in runs of `chunk` consecutive samples of the file (one ranged read) whose borders
    shift every epoch; each lane's runs move up to `window` samples' worth of places, and the lanes
    are interleaved in proportion to their length. Repeats (a sample's 2nd, 3rd... copy) take
    independent uniform places in the epoch, so any prefix holds them at their share.
    """
    ids, copy, part = _items(index, factors, seed, epoch)
    parts = len(index.counts)
    group = copy * parts + part  # a part's k-th copies are a group of their own
    pos, lane_of = _deal(parts, seed, epoch, lanes)
    chunk = max(1, chunk)
    run = (ids - index.starts[part] + (mix(seed, epoch, _CHUNK, group) % np.uint64(chunk)).astype(np.int64)) // chunk
    # originals lane by lane, part by part, then the repeats; each group's runs in a fresh random order
    rank = np.where(copy == 0, pos[part], group).astype(np.uint64)
    key = (rank << np.uint64(40)) | (mix(seed, epoch, _WITHIN, group, run) >> np.uint64(24))
    by_chunk = np.argsort(key, kind="stable")
    ids, key = ids[by_chunk], key[by_chunk]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])  # each run's first sample
    originals = int(np.count_nonzero(copy[by_chunk[starts]] == 0))  # the runs of first copies come first
    heads = by_chunk[starts]  # each run's first item, in the items' original numbering
    time = np.empty(len(starts))
    time[:originals] = _lane_times(lane_of[part[heads[:originals]]], seed, epoch, window / chunk)
    time[originals:] = uniform(seed, epoch, _SPREAD, group[heads[originals:]], run[heads[originals:]])
    chunks = np.argsort(time, kind="stable")  # ties (lanes of one length) in lane order
    sizes = np.diff(np.r_[starts, len(ids)])[chunks]
    first = np.repeat(starts[chunks] - (np.cumsum(sizes) - sizes), sizes)
    return ids[first + np.arange(len(ids))]


def _lane_times(lane: np.ndarray, seed: int, epoch: int, window: float) -> np.ndarray:
    """Each run's time in [0, 1) from its lane (ascending) and place there: runs move up to `window`
    places within their lane, and every lane's runs spread over the whole epoch."""
    slot = np.arange(len(lane)) - np.searchsorted(lane, lane)  # the run's place in its lane
    jitter = slot + max(window, 0) * uniform(seed, epoch, _WINDOW, lane, slot)
    moved = np.argsort(lane * (float(slot.max(initial=0)) + max(window, 0) + 1) + jitter, kind="stable")
    place = np.empty(len(lane), np.int64)
    place[moved] = slot
    return (place + 0.5) / np.bincount(lane)[lane]


def _items(index: SampleIndex, factors: np.ndarray | None, seed: int,
           epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every sample id of the epoch with its copy number (0, or k for the k-th repeat) and its part."""
    ids = np.arange(index.size, dtype=np.int64)
    part = np.repeat(np.arange(len(index.counts)), index.counts)
    if factors is None:
        return ids, np.zeros(len(ids), np.int64), part
    copies = repeat_copies(factors, seed, epoch)
    ids, part = np.repeat(ids, copies), np.repeat(part, copies)
    return ids, np.arange(len(ids)) - np.repeat(np.cumsum(copies) - copies, copies), part


def part_lanes(parts: int, seed: int, epoch: int, lanes: int) -> np.ndarray:
    """The lane of each shard part in `epoch` (parts are dealt anew every epoch)."""
    return _deal(parts, seed, epoch, lanes)[1]


def _deal(parts: int, seed: int, epoch: int, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """The parts in a seeded order dealt round robin into `lanes`: each part's place in the
    lane-by-lane sequence and its lane."""
    order = np.argsort(mix(seed, epoch, _SHARDS, np.arange(parts)), kind="stable")
    lane = np.arange(parts) % max(1, min(lanes, parts))
    pos, lane_of = np.empty(parts, np.int64), np.empty(parts, np.int64)
    pos[order[np.argsort(lane, kind="stable")]] = np.arange(parts)  # lane 0's parts in dealt order, then lane 1's
    lane_of[order] = lane
    return pos, lane_of
