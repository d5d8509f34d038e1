"""The training loader: each process's micro-batches, read by position from the epoch's global order.

Global batch k of epoch e is positions [kG, (k+1)G) of the epoch's order (data/order.py), G = per-
process batch B x processes W x accumulation A; micro-batch a (of A) of update k gives process r
the B positions kG + a*B*W + r*B + [0, B) (data/plan.py). A process numbers its micro-batches
j = 0, 1, ... over the run; loader worker w of n reads those with j = w (mod n) and keeps no state
between them, so the batches, their samples and each sample's augmentation, seeded by (seed,
epoch, position), are the same for any number of processes, nodes and workers that keep G.
Each epoch ends at its last full global batch: the tail of its order that does not fill one is
dropped (a different tail every epoch, since the order is reshuffled), never filled with repeats.

A worker reads the samples of a micro-batch by their byte offsets (data/sample_reader.py) and
fetches the next one's bytes while it decodes this one; a resumed run reads nothing before its
first step. A sample that cannot be read or decoded is skipped and counted; a micro-batch with no
readable sample becomes one with every label ignored (loss 0), so every rank runs the same steps.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import IterableDataset

from segdist.config import DataConfig
from segdist.data.augment import CORRUPT_REASONS, CorruptSample, augment, decode, to_tensors, train_transform
from segdist.data.info import DatasetInfo
from segdist.data.plan import TrainPlan
from segdist.data.sample_reader import Fetch, SampleReader
from segdist.data.stages import scale_at
from segdist.data.tar_reader import Reader
from segdist.data.workers import Loader, worker_slot
from segdist.utils import faults
from segdist.utils.checksums import Digest
from segdist.utils.secrets import redact

# Why data could not be read, as counted in the loaders, summary.json and the trackers.
SKIP_REASONS = ("unavailable_shard", "truncated_shard", *CORRUPT_REASONS)
PATIENCE = 8  # micro-batches a worker reads without any readable sample before it calls the data unreadable


class TrainBatches(IterableDataset):
    """Micro-batches [start, end) of process `rank`: (uint8 images, labels, what the batch read)."""

    def __init__(self, plan: TrainPlan, cfg: DataConfig, ignore_index: int, *, rank: int, start: int, end: int,
                 expected: Mapping[str, Digest] | None = None, stages: Sequence[Sequence[float]] | None = None):
        self.plan, self.cfg, self.ignore_index = plan, cfg, ignore_index
        self.stages = stages or [[0, 1.0]]  # data.resize_schedule's (data/stages.py)
        plan.order_key  # hashed here, once, not in every loader worker (it names the node's shared orders)
        self.rank, self.start, self.end = rank, start, end
        self.reader = Reader.from_config(cfg, expected)

    def __len__(self) -> int:
        return self.end - self.start

    def __iter__(self) -> Iterator[tuple]:
        worker, workers = worker_slot()
        mine = range(self.start + worker, self.end, workers)  # this worker's micro-batches, round robin
        reader = SampleReader(self.plan.index, self.reader)
        transforms = {scale: train_transform(self.cfg, self.ignore_index, scale) for _, scale in self.stages}
        read_any, unread = False, {}
        try:
            fetch = self._fetch(reader, mine[0]) if mine else None
            for n, batch in enumerate(mine):
                current = fetch
                fetch = self._fetch(reader, mine[n + 1]) if n + 1 < len(mine) else None  # read ahead
                faults.at_step(batch)
                faults.hit("loader")
                transform = transforms[scale_at(self.stages, batch // self.plan.shape.accumulate)]
                images, labels, info = self._assemble(batch, current, transform)
                read_any = read_any or info["decoded"] > 0
                unread.update(info["unavailable"])
                if not read_any and n + 1 >= PATIENCE:  # refuse to train on nothing for ever
                    yield from self._failed(mine[n:], self._unreadable(n + 1, unread, info["skipped"]))
                    return
                yield images, labels, info
        finally:
            reader.close()

    def _unreadable(self, batches: int, unavailable: dict, skipped: dict) -> str:
        return (f"no readable training sample in {batches} batches of {redact(self.plan.index.urls[0])} and the "
                f"other shards: unavailable: {unavailable or 'none'}; skipped: {skipped}")

    def _failed(self, batches: range, why: str) -> Iterator[tuple]:
        """Ignored batches that carry `why`: the training loop raises it on every rank at the next update
        (raising here would stop this rank alone, the others waiting in a collective until its timeout)."""
        images, labels = (torch.stack(t) for t in zip(*[self._ignored()] * self.plan.shape.batch))
        for _ in batches:
            yield images, labels, {"skipped": {}, "retries": 0, "unavailable": {}, "keys": [], "decoded": 0,
                                   "failure": why}

    def samples(self, batch: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(epoch, positions, global sample ids) of micro-batch `batch` of this process."""
        epoch, positions = self.plan.positions(batch, self.rank)
        return epoch, positions, self.plan.order(epoch)[positions]

    def _fetch(self, reader: SampleReader, batch: int) -> Fetch:
        return reader.fetch(self.samples(batch)[2].tolist())

    def _assemble(self, batch: int, fetch: Fetch, transform) -> tuple:  # noqa: ANN001
        """Decode and augment the fetched samples in position order; stack them into the batch."""
        epoch, positions, ids = self.samples(batch)
        found, skips = fetch.result()
        if faults.armed("unreadable"):
            found = {}  # as if every sample's shard were gone
        items, keys = [], []
        for position, sample_id in zip(positions.tolist(), ids.tolist()):
            sample = found.get(sample_id)
            if sample is None:
                continue  # its range could not be read: counted by the read
            try:
                image, label = decode(sample, self.cfg.max_pixels)
            except CorruptSample as exc:
                skips[exc.reason] += 1
                continue
            items.append(augment(transform, image, label, self.plan.seed, epoch, position))
            keys.append(sample["__key__"])
        decoded = len(items)
        if not items:
            items = [self._ignored()] * len(positions)
        images, labels = zip(*items)
        return torch.stack(images), torch.stack(labels), {**skips.take(), "keys": keys, "decoded": decoded}

    def _ignored(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A sample whose every label is the ignore index: it adds nothing to the loss."""
        h, w = self.cfg.crop_size
        dtype = np.uint8 if self.ignore_index <= 255 else np.uint16
        return to_tensors(np.zeros((h, w, 3), np.uint8), np.full((h, w), self.ignore_index, dtype))


def train_loader(cfg: DataConfig, info: DatasetInfo, plan: TrainPlan, *, rank: int, start: int = 0,
                 end: int | None = None, stages: Sequence[Sequence[float]] | None = None) -> Loader:
    """Micro-batches start..end-1 of process `rank` (default: one epoch from `start`); `stages`: the run's
    resize stages (data/stages.py; default: one at scale 1)."""
    end = start + plan.batches_per_epoch if end is None else end
    batches = TrainBatches(plan, cfg, info.ignore_index, rank=rank, start=start, end=end, expected=info.digests(),
                           stages=stages)
    return Loader(batches, batch_size=None, num_workers=cfg.workers, persistent_workers=False,
                  generator=torch.Generator())  # leaves the global RNG (saved in checkpoints) untouched

