"""The node's prefetcher: remote shards downloaded whole into the node cache before they are needed.

One per node: a process of its own, started (spawned, not forked) by the training process with
LOCAL_RANK 0. Not a thread of that process: loader workers forked while a thread holds a cache
file's flock would inherit the lock and wait on it for ever, as on any lock a thread held at
fork. It follows the node's share of
the order (TrainPlan.node_share) from the training's current update up to `ahead` global batches
further, and downloads each shard part the first time the share touches it, in that order, over
the storage layer's pooled keep-alive connections (urllib3 for HTTP, s3fs's own pool for S3), so
the loader workers find it on local disk. A worker that gets there first downloads it itself
under the cache's fetch lock, which the prefetcher then waits on: each shard still comes once.
When the node's shards do not all fit under `data.cache_max_gb`, a shard is deleted from the
cache once training has passed its last position in the epoch (never one being read).
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable

import numpy as np

from segdist import storage
from segdist.data.plan import TrainPlan
from segdist.data.tar_reader import Reader

log = logging.getLogger(__name__)
AHEAD = 8  # global batches the downloads run ahead of training
POLL_S = 0.05


class NodePrefetcher:
    """Downloads node `node`'s shards `ahead` updates before training reads them (in a child process)."""

    def __init__(self, plan: TrainPlan, reader: Reader, node: int, start: int, ahead: int = AHEAD):
        context = multiprocessing.get_context("spawn")
        self.progress = context.Value("q", start, lock=False)  # the training's optimizer updates so far
        self.stop = context.Event()
        self.process = context.Process(target=_prefetch, args=(plan, reader, node, self.progress, self.stop, ahead),
                                       name="segdist-prefetch", daemon=True)

    def start(self) -> NodePrefetcher:
        self.process.start()
        return self

    def advance(self, update: int) -> None:
        """Training has done `update` updates: the downloads may run `ahead` past it."""
        self.progress.value = update

    def close(self) -> None:
        self.stop.set()
        self.process.join(timeout=5)
        if self.process.is_alive():
            self.process.kill()


def _prefetch(plan: TrainPlan, reader: Reader, node: int, progress, stop, ahead: int) -> None:  # noqa: ANN001
    """The prefetcher process: follow the node's share of the order, `ahead` updates before training."""
    Downloads(plan, reader, node).follow(lambda: progress.value, stop, ahead)


class Downloads:
    """What one node downloads and evicts, update by update."""

    def __init__(self, plan: TrainPlan, reader: Reader, node: int):
        self.plan, self.reader, self.node = plan, reader, node
        self.fetched: dict[str, int] = {}  # shard URL -> the epoch it was fetched for
        self.last_use: dict[str, int] = {}  # shard URL -> the last update of its epoch that reads it
        self.bounded = bounded(plan, reader)
        self.epoch: int | None = None  # the epoch whose last uses are known

    def follow(self, progress: Callable[[], int], stop, ahead: int) -> None:  # noqa: ANN001 - an Event
        update = progress()
        while not stop.is_set():
            if update > progress() + ahead:
                self.evict_passed(progress())
                stop.wait(POLL_S)
                continue
            self.fetch_update(update)
            update += 1

    def fetch_update(self, update: int) -> None:
        """Download the shards that update `update` of this node reads, in order of first use."""
        epoch, positions = self.plan.node_share(update, self.node)
        if self.bounded and epoch != self.epoch:
            self.epoch = epoch
            self.last_use.update(self._last_uses(update))
        parts = self.plan.index.parts_of(self.plan.order(epoch)[positions])
        for part in dict.fromkeys(parts.tolist()):
            url = self.plan.index.urls[part]
            if self.fetched.get(url) == epoch:
                continue
            self.fetched[url] = epoch
            try:
                storage.prefetch(url, self.reader.cache_dir, cache_max_bytes=self.reader.cache_max_bytes,
                                 retry=self.reader.retry, expected=self.reader.expected.get(url))
            except storage.ShardUnavailable as error:  # the workers try again, and count it
                log.warning("prefetch: %s", error)

    def _last_uses(self, update: int) -> dict[str, int]:
        """The last update of the epoch `update` is in that reads each of the node's shards (from `update` on)."""
        plan, end = self.plan, self.plan.next_epoch_end(update)
        epoch = plan.where(update)[0]
        shares = [plan.node_share(u, self.node)[1] for u in range(update, end)]
        if not shares:
            return {}
        parts = plan.index.parts_of(plan.order(epoch)[np.concatenate(shares)])
        found, first_from_end = np.unique(parts[::-1], return_index=True)
        last = len(parts) - 1 - first_from_end
        return {plan.index.urls[p]: update + int(i) // plan.node_batch for p, i in zip(found, last)}

    def evict_passed(self, done: int) -> None:
        """Delete the shards training has read for the last time this epoch (bounded caches)."""
        for url, last in list(self.last_use.items()):
            if last < done and storage.discard(url, self.reader.cache_dir):
                del self.last_use[url]


def bounded(plan: TrainPlan, reader: Reader) -> bool:
    """Whether a node's shards may not all fit in the cache (then each goes after its last use)."""
    if reader.cache_max_bytes is None:
        return False
    sizes = [reader.expected[url].size for url in plan.index.urls if url in reader.expected]
    return sum(sizes) // plan.nodes > reader.cache_max_bytes


def node_prefetcher(plan: TrainPlan, reader: Reader, rank: int, local_rank: int, start: int) -> NodePrefetcher | None:
    """The node's prefetcher, started on its first process where shards are remote and cached; else None."""
    if local_rank != 0 or reader.cache_dir is None or storage.is_local(plan.index.urls[0]):
        return None
    node = rank // (plan.shape.processes // plan.nodes)
    return NodePrefetcher(plan, reader, node, start).start()
