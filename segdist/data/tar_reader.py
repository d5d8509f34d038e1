"""Samples from WebDataset tar shards, whole or by byte range: the reader behind every loader.

Shards are opened through segdist.storage (a local path, http(s)://, s3:// or pipe:), which retries
transient faults and resumes where it can. A shard that still cannot be read, or breaks off or
ends early (a truncated tar; fewer samples than the manifest lists), ends there: the samples read
before the break are kept, and the event is counted by reason in a `Skips` counter instead of
stopping the job. A shard that is not what dataset.json records (a local file of another size,
a cached download of another size or sha256) is not read at all: it counts as unavailable.

Evaluation splits a split's samples into equal contiguous ranges, one per (process, loader
worker) slot; with the per-sample byte offsets that `segdist prepare` records, each slot reads
only the bytes of its own samples.
"""

from __future__ import annotations

import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from webdataset.tariterators import group_by_keys, tar_file_iterator

from segdist import storage
from segdist.format import tar_members
from segdist.utils.checksums import Digest


@dataclass(frozen=True)
class Reader:
    """How shards are opened: retries and timeouts for remote ones, the node-local cache, and what each
    shard should be (`expected`: URL -> size and sha256 from dataset.json, DatasetInfo.digests)."""

    retry: storage.RetryPolicy = field(default_factory=storage.RetryPolicy)
    cache_dir: str | None = None
    cache_max_bytes: int | None = None
    expected: Mapping[str, Digest] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg, expected: Mapping[str, Digest] | None = None) -> "Reader":  # noqa: ANN001 - a DataConfig
        cache_dir = (cfg.cache_dir or str(storage.default_cache_root())) if cfg.cache else None
        return cls(storage.RetryPolicy(retries=cfg.retries, timeout=cfg.io_timeout), cache_dir,
                   int(cfg.cache_max_gb * 2**30), dict(expected or {}))

    def open(self, url: str, start: int, end: int | None, stats: storage.StorageStats):  # noqa: ANN201
        return storage.open_stream(url, start=start, end=end, retry=self.retry, stats=stats,
                                   cache_dir=self.cache_dir, cache_max_bytes=self.cache_max_bytes,
                                   expected=self.expected.get(url))


class Skips(Counter):
    """What could not be read (counts by reason) and the storage retries of one stream."""

    def __init__(self) -> None:
        super().__init__()
        self.storage = storage.StorageStats()
        self._reported = storage.StorageStats()

    def take(self) -> dict:
        """What happened since the last take: {"skipped": {reason: n}, "retries": n, "unavailable": {url: why}}."""
        counts, self_storage = dict(self), self.storage
        retries = self_storage.retries - self._reported.retries
        unavailable = {u: r for u, r in self_storage.unavailable.items() if u not in self._reported.unavailable}
        self.clear()
        self._reported = storage.StorageStats().merge(self_storage)
        return {"skipped": counts, "retries": retries, "unavailable": unavailable}

    def absorb(self, other: Skips) -> None:
        """Add another counter's counts and storage statistics (another range's reads) to this one."""
        self.update(other)
        self.storage.merge(other.storage)


def shard_samples(url: str, skips: Skips, reader: Reader, start: int = 0, end: int | None = None,
                  expected: int | None = None) -> Iterator[dict]:
    """The samples of one shard (or byte range), stopping at the first break and counting it.

    `expected` (from the manifest) catches a shard that ends early without an error (a tar cut at
    a header boundary reads as a shorter archive).
    """
    try:
        stream = reader.open(url, start, end, skips.storage)
    except storage.ShardUnavailable:
        skips["unavailable_shard"] += 1
        return
    delivered = 0
    with stream:
        files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
        try:
            for sample in group_by_keys(files):
                delivered += 1
                yield sample
        except storage.ShardUnavailable:
            skips["unavailable_shard"] += 1
            return
        except (tarfile.TarError, EOFError, OSError):
            skips["truncated_shard"] += 1
            return
    if expected is not None and delivered < expected:
        skips["truncated_shard"] += 1


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


def read_range(r: ShardRange, skips: Skips, reader: Reader) -> list[dict]:
    """The samples of an exact byte range, read in one request and parsed in memory (a few samples: a
    training batch's); a range that cannot be read or breaks off gives those before the break, counted."""
    try:
        with reader.open(r.url, r.start, r.end, skips.storage) as stream:
            data = stream.read()
    except storage.ShardUnavailable:
        skips["unavailable_shard"] += 1
        return []
    found = []
    try:
        for sample in tar_members.samples(data):
            found.append({**sample, "__url__": r.url})
    except tarfile.TarError:
        skips["truncated_shard"] += 1
        return found
    if len(found) < r.stop - r.first:
        skips["truncated_shard"] += 1
    return found[: r.stop - r.first]


def range_samples(ranges: Iterable[ShardRange], skips: Skips, reader: Reader) -> Iterator[dict | int]:
    """The samples of each range, in order; after a range that broke off, the number of its samples lost."""
    for r in ranges:
        samples = shard_samples(r.url, skips, reader, r.start, r.end)
        delivered = 0
        for index, sample in enumerate(samples):
            if not r.exact and index < r.first:
                continue
            if not r.exact and index >= r.stop:
                samples.close()
                break
            delivered += 1
            yield sample
        if delivered < r.stop - r.first:
            yield r.stop - r.first - delivered
