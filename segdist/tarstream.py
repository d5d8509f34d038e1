"""Samples from WebDataset tar shards: resampled streams for training, exact shares for evaluation.

A shard that cannot be opened, or breaks off (a truncated tar, a dropped connection after the
retries), ends there: the samples read before the break are kept, the one in progress is dropped,
and the event is counted by reason in a `Skips` counter instead of stopping the job.

Evaluation splits a split's samples into equal contiguous ranges, one per (process, loader
worker) slot; with the per-sample byte offsets that `segdist prepare` records, each slot reads
only the bytes of its own samples.
"""

from __future__ import annotations

import io
import random
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from webdataset.tariterators import group_by_keys, tar_file_iterator

from segdist.sources.common import DataError


class Skips(Counter):
    """What could not be read, by reason; travels with each batch to the training process."""

    def take(self) -> dict[str, int]:
        """The counts since the last take, then reset."""
        counts = dict(self)
        self.clear()
        return counts


class _Window(io.RawIOBase):
    """Bytes [start, end) of a binary file."""

    def __init__(self, file, start: int, end: int | None):  # noqa: ANN001
        self.file, self.left = file, None if end is None else end - start
        file.seek(start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001
        size = len(buffer) if self.left is None else min(len(buffer), self.left)
        data = self.file.read(size)
        buffer[: len(data)] = data
        if self.left is not None:
            self.left -= len(data)
        return len(data)

    def close(self) -> None:
        self.file.close()
        super().close()


def open_shard(url: str, start: int = 0, end: int | None = None) -> io.BufferedIOBase:
    """A binary stream over bytes [start, end) of a shard."""
    return io.BufferedReader(_Window(open(url, "rb"), start, end), buffer_size=1 << 20)


def shard_samples(url: str, skips: Skips, start: int = 0, end: int | None = None) -> Iterator[dict]:
    """The samples of one shard (or byte range), stopping at the first break and counting it."""
    try:
        stream = open_shard(url, start, end)
    except OSError:
        skips["unreadable_shard"] += 1
        return
    with stream:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        try:
            yield from group_by_keys(files)
        except (tarfile.TarError, EOFError, OSError):
            skips["truncated_shard"] += 1


def resampled_samples(urls: list[str], rng: random.Random, skips: Skips) -> Iterator[dict]:
    """Endless samples from shards drawn with replacement by `rng`.

    Refuses to spin forever: after 2 x shards + 8 draws in a row that gave no sample, every shard is
    presumably unreadable.
    """
    patience, empty = 2 * len(urls) + 8, 0
    while True:
        url = urls[rng.randrange(len(urls))]
        got = False
        for sample in shard_samples(url, skips):
            got = True
            yield sample
        empty = 0 if got else empty + 1
        if empty >= patience:
            raise DataError(f"no readable sample in {empty} shards drawn in a row from {urls[0]} and others: "
                            f"{dict(skips)}")


@dataclass(frozen=True)
class ShardRange:
    """Samples [first, stop) of a shard, read from bytes [start, end) (end None: to the end of the file)."""

    url: str
    first: int
    stop: int
    start: int = 0
    end: int | None = None
    exact: bool = True  # False: the bytes hold the whole shard; keep only samples first..stop-1


def slot_ranges(urls: list[str], shards: list[dict], slot: int, slots: int) -> list[ShardRange]:
    """The shard ranges holding samples [total*slot/slots, total*(slot+1)/slots) of a split."""
    total = sum(s["samples"] for s in shards)
    lo, hi = total * slot // slots, total * (slot + 1) // slots
    ranges, base = [], 0
    for url, shard in zip(urls, shards):
        n = shard["samples"]
        first, stop = max(lo, base) - base, min(hi, base + n) - base
        base += n
        if first >= stop:
            continue
        offsets = shard.get("offsets")
        if offsets:
            end = offsets[stop] if stop < n else None
            ranges.append(ShardRange(url, first, stop, offsets[first], end))
        else:  # a manifest without offsets: read the shard, keep this slot's samples
            ranges.append(ShardRange(url, first, stop, exact=False))
    return ranges


def range_samples(ranges: Iterable[ShardRange], skips: Skips) -> Iterator[dict]:
    """The samples of each range, in order."""
    for r in ranges:
        samples = shard_samples(r.url, skips, r.start, r.end)
        if r.exact:
            yield from samples
            continue
        for index, sample in enumerate(samples):
            if index >= r.stop:
                break
            if index >= r.first:
                yield sample
