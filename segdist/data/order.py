"""The training order: one global sequence of samples per epoch, a pure function of (seed, epoch, dataset).

Every sample of the training split(s) comes exactly once per epoch (repeat-factor sampling, when
on, sets how many times). The sequence is built from fixed integer mixing (splitmix64), not from a
random-number generator whose stream may change with a numpy version (NEP 19), so that a requeued
job on another machine continues the same order; `ALGORITHM` names it in the run state.

    parts     the shard parts of the split(s), permuted per epoch (seeded by (seed, epoch))
    lanes     the permuted parts dealt round-robin into `lanes` lanes (fixed at the run's start)
    chunks    each part cut into runs of `chunk` consecutive samples (one ranged read), the
              borders shifted by a seeded offset per epoch
    window    inside a lane, each chunk moves at most `window` samples' worth of places from its
              part's order (py1e-style: position + window x a uniform draw, then sorted)
    order     the lanes interleaved chunk by chunk: lane 0, lane 1, ..., lane 0, ...

so a stretch of the order mixes `lanes` shards while each lane reads from one or two shards at a
time. Positions, not streams, are the unit: global batch k of an epoch is positions
[kG, (k+1)G), G = per-process batch x processes x accumulation (segdist.data.train_loader).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np

ALGORITHM = "segdist-order/1"
_SHARDS, _WINDOW, _REPEAT, _CHUNK = 1, 2, 3, 4  # what a hash is drawn for (kept apart so draws do not correlate)
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


@dataclass(frozen=True)
class SampleIndex:
    """The training samples: shard parts in manifest order, their sample counts and byte offsets."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    offsets: tuple[tuple[int, ...], ...]  # each sample's first tar header, per part
    classes: tuple[tuple[tuple[int, ...], ...], ...] | None  # each sample's classes, per part (repeat factors)

    @property
    def size(self) -> int:
        return sum(self.counts)

    @cached_property
    def starts(self) -> np.ndarray:
        """Global id of each part's first sample."""
        return np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def locate(self, sample: int) -> tuple[int, int]:
        """(part, sample within the part) of a global sample id."""
        part = int(np.searchsorted(self.starts, sample, side="right")) - 1
        return part, sample - int(self.starts[part])

    def fingerprint(self) -> str:
        """A hash of what the order depends on: parts' names, sample counts and offsets."""
        names = [url.split("?", 1)[0].rsplit("/", 1)[-1] for url in self.urls]  # not a URL's query (a token)
        text = json.dumps([names, self.counts, self.offsets], separators=(",", ":"))
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

    `chunk` consecutive samples of a part move together (one ranged read); the chunks' boundaries
    shift by a seeded offset every epoch, so the same samples are not grouped every time.
    """
    parts = np.argsort(mix(seed, epoch, _SHARDS, np.arange(len(index.counts))), kind="stable")
    lanes, chunk = max(1, min(lanes, len(parts))), max(1, chunk)
    counts, starts = np.asarray(index.counts, np.int64), index.starts
    ids = np.concatenate([np.arange(starts[p], starts[p] + counts[p]) for p in parts])
    part = np.repeat(parts, counts[parts])
    lane = np.repeat(np.arange(len(parts)) % lanes, counts[parts])  # parts dealt round-robin, permuted order
    copy = np.zeros(len(ids), np.int64)
    if factors is not None:  # a sample's k-th copy comes in the lane's k-th pass over its parts
        copies = repeat_copies(factors, seed, epoch)[ids]
        ids, part, lane = np.repeat(ids, copies), np.repeat(part, copies), np.repeat(lane, copies)
        copy = np.arange(len(ids)) - np.repeat(np.cumsum(copies) - copies, copies)
    by_lane = np.lexsort((np.arange(len(ids)), copy, lane))  # each lane's samples by pass, in its parts' order
    ids, part, lane, copy = ids[by_lane], part[by_lane], lane[by_lane], copy[by_lane]
    shift = (mix(seed, epoch, _CHUNK, part) % np.uint64(chunk)).astype(np.int64)
    group = (ids - starts[part] + shift) // chunk  # the sample's chunk within its part
    first = np.r_[True, (part[1:] != part[:-1]) | (group[1:] != group[:-1]) | (lane[1:] != lane[:-1])
                  | (copy[1:] != copy[:-1])]
    chunk_of = np.cumsum(first) - 1
    chunk_lane = lane[first]
    slot = np.arange(len(chunk_lane)) - np.searchsorted(chunk_lane, chunk_lane)  # the chunk's place in its lane
    jitter = slot + max(window, 0) / chunk * uniform(seed, epoch, _WINDOW, chunk_lane, slot)
    moved = np.lexsort((jitter, chunk_lane))  # the window shuffle of the chunks, lane by lane
    rounds = np.empty(len(chunk_lane), np.int64)
    rounds[moved] = slot
    within = np.arange(len(ids)) - np.flatnonzero(first)[chunk_of]  # a sample's place in its chunk
    # interleaved: the r-th chunk of every lane, lane by lane, each chunk's samples in shard order
    return ids[np.lexsort((within, lane, rounds[chunk_of]))]
