"""Samples read by their byte offsets: a batch's neighbours in a shard part in one ranged read, parts in parallel.

Works on every kind of URL segdist.storage reads (a local path, http(s)://, s3://, pipe:, and the
node-local cache), with its retries and resumes. A range that cannot be read loses its samples,
counted in the batch's `Skips` (as the whole-shard reads of evaluation count them).
"""

from __future__ import annotations

from collections import defaultdict
from concurrent.futures import Future, ThreadPoolExecutor

from segdist.data.order import SampleIndex
from segdist.data.tar_reader import Reader, ShardRange, Skips, read_range


def coalesced_ranges(index: SampleIndex, samples: list[int]) -> list[tuple[int, ShardRange]]:
    """(part, byte range) covering `samples` (global ids): one range per run of consecutive samples of a part."""
    wanted: dict[int, set[int]] = defaultdict(set)
    for sample in samples:
        part, within = index.locate(sample)
        wanted[part].add(within)
    ranges = []
    for part, items in sorted(wanted.items()):
        offsets, count, items = index.offsets[part], index.counts[part], sorted(items)
        first = previous = items[0]
        for item in [*items[1:], None]:
            if item is not None and item == previous + 1:
                previous = item
                continue
            end = int(offsets[previous + 1]) if previous + 1 < count else None  # the last sample: to the part's end
            ranges.append((part, ShardRange(index.urls[part], first, previous + 1, int(offsets[first]), end)))
            if item is not None:
                first = previous = item
    return ranges


class SampleReader:
    """Fetches the samples of global ids in the background; one per loader worker (threads, no state across batches)."""

    def __init__(self, index: SampleIndex, reader: Reader, threads: int = 4):
        self.index, self.reader = index, reader
        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="segdist-read")

    def fetch(self, samples: list[int]) -> Fetch:
        """The reads of `samples` (global ids), started now; `Fetch.result()` waits for them."""
        return Fetch([self.pool.submit(self._read_range, part, r) for part, r in coalesced_ranges(self.index, samples)])

    def _read_range(self, part: int, r: ShardRange) -> tuple[dict[int, dict], Skips]:
        skips = Skips()
        first = int(self.index.starts[part]) + r.first
        return {first + i: sample for i, sample in enumerate(read_range(r, skips, self.reader))}, skips

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Fetch:
    """The ranged reads of one batch, in flight."""

    def __init__(self, reads: list[Future]):
        self.reads = reads

    def result(self) -> tuple[dict[int, dict], Skips]:
        """{global id: sample dict} of the samples read, and what could not be read."""
        samples, skips = {}, Skips()
        for read in self.reads:
            found, more = read.result()
            samples.update(found)
            skips.absorb(more)
        return samples, skips
