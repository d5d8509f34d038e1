"""The run's training plan: the sample index, the order's parameters and the global batch's shape.

A plan is all a training batch depends on; `TrainPlan.state()` goes into every checkpoint and a
resumed run checks it (`check_resume`): the same order algorithm, dataset and seed. A resume keeps
the global batch (per-process batch x processes x accumulation) where its process count can
(`fit_shape`: another accumulation, else a smaller per-process batch); with another global batch it
goes on from the checkpoint's place in the epoch's order (`Origin`): nothing replayed, nothing
skipped but the new tail of that epoch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

from segdist.config import DataConfig
from segdist import storage
from segdist.data.info import DatasetInfo, split_names
from segdist.data.nodes import check_nodes, node_floor, node_sequence
from segdist.data.order import ALGORITHM, SampleIndex, epoch_length, epoch_order
from segdist.data.shared_orders import shared_order
from segdist.errors import DataError
from segdist.utils.secrets import redact

DEFAULT_LANES = 16  # lanes of the order when data.lanes is not set (at most the number of shard parts)
REMOTE_CHUNK = 8  # samples per ranged read of an uncached remote shard (data.chunk's default there)
KEPT_ORDERS = 2  # epoch orders a worker keeps (a prefetch may reach into the next epoch)


@dataclass(frozen=True)
class Origin:
    """Where a plan's updates start in the order: update `update` reads from position `sample` of `epoch`.

    (0, 0, 0) for a new run; a run resumed on another global batch starts where its checkpoint
    stopped, and its first epoch is that epoch's rest (`sample` 0: the epoch before has just ended).
    """

    update: int = 0
    epoch: int = 0
    sample: int = 0  # positions each node had read (all of them on one node)
    nodes: int = 1  # nodes of the run that read them (another count: the epoch's rest is shared out anew)


@dataclass(frozen=True)
class Shape:
    """How a global batch is cut: per-process batch x processes x accumulation steps."""

    batch: int
    processes: int
    accumulate: int

    @property
    def global_batch(self) -> int:
        return self.batch * self.processes * self.accumulate


def fit_shape(global_batch: int, batch: int, accumulate: int, processes: int) -> tuple[Shape, str | None]:
    """The shape that keeps `global_batch` on `processes`: the configured one, else the largest
    per-process batch up to `batch` (never more: it must fit in memory) with the accumulation that
    completes it; returns it and a sentence saying what changed."""
    asked = Shape(batch, processes, accumulate)
    if asked.global_batch == global_batch:
        return asked, None
    per_process, rest = divmod(global_batch, processes)
    size = next((b for b in range(min(batch, per_process), 0, -1) if not rest and per_process % b == 0), None)
    if size is not None:
        steps = per_process // size
        changes = [f"data.batch_size {batch} -> {size}"] * (size != batch)
        changes += [f"optim.accumulate {accumulate} -> {steps}"] * (steps != accumulate)
        return Shape(size, processes, steps), ", ".join(changes)
    raise DataError(f"the run's global batch is {global_batch} samples (batch x processes x accumulation); "
                    f"{processes} process(es) cannot keep it with data.batch_size {batch} or optim.accumulate "
                    f"{accumulate}: use a process count that divides {global_batch}")


def sample_index(info: DatasetInfo, splits: str | list[str], with_classes: bool) -> SampleIndex:
    """The samples of the training split(s) from dataset.json, refused where it lacks what is needed."""
    urls, records = info.shards(splits)
    missing = [r["name"] for r in records if not r.get("offsets") or len(r["offsets"]) != r["samples"]]
    if missing:
        raise DataError(f"{redact(info.root)}: dataset.json has no per-sample byte offsets for {missing[0]} "
                        "(prepared by an older segdist); run the same `segdist prepare ... --overwrite` again")
    classes = None
    if with_classes:
        if any("classes" not in r for r in records):
            raise DataError(f"{redact(info.root)}: data.class_balanced needs each sample's classes in dataset.json "
                            "(format segdist-shards/3); run the same `segdist prepare ... --overwrite` again")
        classes = tuple(tuple(tuple(c) for c in r["classes"]) for r in records)
    return SampleIndex(tuple(urls), tuple(r["samples"] for r in records),
                       tuple(np.asarray(r["offsets"], np.int64) for r in records), classes)


def repeat_factors(stats: dict, threshold: float) -> np.ndarray:
    """Per-class repeat factor max(1, sqrt(t / f_c)), f_c = share of images holding class c (LVIS RFS)."""
    freq = np.asarray(stats["class_images"], np.float64) / max(stats["samples"], 1)
    with np.errstate(divide="ignore"):
        return np.where(freq > 0, np.maximum(1.0, np.sqrt(threshold / freq)), 1.0)


@dataclass(eq=False)
class TrainPlan:
    """The run's order and how it is cut: everything a batch depends on. `state()` goes into checkpoints."""

    index: SampleIndex
    seed: int
    lanes: int
    window: int
    chunk: int
    shape: Shape
    factors: np.ndarray | None = None  # per-sample repeat factors (data.class_balanced)
    epoch_samples: int | None = None  # data.epoch_samples: a shorter epoch (the first positions of each order)
    origin: Origin = Origin()  # where update `origin.update` starts in the order (a resume on another global batch)
    nodes: int = 1  # nodes reading disjoint shards (remote data, data/nodes.py); 1: any process reads any shard
    _orders: dict = field(default_factory=dict, repr=False)
    _sequences: dict = field(default_factory=dict, repr=False)

    @cached_property
    def epoch_length(self) -> int:
        """Samples every epoch's order holds (the split, or with repeat factors the fewest an epoch gets)."""
        return epoch_length(self.index, self.factors)

    @cached_property
    def usable(self) -> int:
        """Positions of each node's share of an epoch that may be read (data.epoch_samples, else all of
        them; on several nodes, the fewest any node's share holds)."""
        if self.nodes == 1:
            return min(self.epoch_samples or self.epoch_length, self.epoch_length)
        fewest = node_floor(self.index, self.factors, self.nodes)
        return min(self.epoch_samples // self.nodes, fewest) if self.epoch_samples else fewest

    @property
    def node_batch(self) -> int:
        """Samples of a global batch that each node reads."""
        return self.shape.global_batch // self.nodes

    @property
    def updates_per_epoch(self) -> int:
        return self.usable // self.node_batch

    @property
    def samples_per_epoch(self) -> int:
        """Positions each epoch uses: whole global batches."""
        return self.updates_per_epoch * self.shape.global_batch

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches of one process per epoch."""
        return self.updates_per_epoch * self.shape.accumulate

    def order(self, epoch: int) -> np.ndarray:
        """The global sample ids of `epoch` in training order: built once per node (data/shared_orders.py),
        the last KEPT_ORDERS epochs kept mapped."""
        if epoch not in self._orders:
            if len(self._orders) >= KEPT_ORDERS:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = shared_order(self.order_key, epoch, lambda: epoch_order(
                self.index, self.seed, epoch, self.lanes, self.window, self.factors, self.chunk))
        return self._orders[epoch]

    @cached_property
    def order_key(self) -> str:
        """What the order depends on besides the epoch, hashed (names its shared files)."""
        parts = [ALGORITHM, self.index.fingerprint(), self.seed, self.lanes, self.window, self.chunk,
                 None if self.factors is None else _digest(self.factors)]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:20]

    def sequence(self, epoch: int, node: int) -> np.ndarray:
        """Positions of `epoch`'s order that node `node` reads, in order (the first epoch of a run resumed
        on another node count: what no node had read, shared out anew)."""
        key = (epoch, node)
        if key not in self._sequences:
            if len(self._sequences) >= KEPT_ORDERS * self.nodes:
                self._sequences.pop(min(self._sequences))
            self._sequences[key] = self._sequence(epoch, node)
        return self._sequences[key]

    def _sequence(self, epoch: int, node: int) -> np.ndarray:
        order = self.order(epoch)
        mine = node_sequence(self.index, order, self.seed, epoch, self.lanes, self.nodes, node)[: self.usable]
        if not self.reshared(epoch):
            return mine
        read = [node_sequence(self.index, order, self.seed, epoch, self.lanes, self.origin.nodes, n)[
                : self.origin.sample] for n in range(self.origin.nodes)]
        return mine[~np.isin(mine, np.concatenate(read))]

    def reshared(self, epoch: int) -> bool:
        """Whether `epoch` is a resumed epoch that another node count had partly read."""
        return epoch == self.origin.epoch and self.origin.nodes != self.nodes and self.origin.sample > 0

    @cached_property
    def first_epoch_end(self) -> int:
        """The update that ends the origin's epoch (whole global batches of what is left of it)."""
        if self.reshared(self.origin.epoch):
            left = min(len(self.sequence(self.origin.epoch, n)) for n in range(self.nodes))
        else:
            left = self.usable - self.origin.sample
        return self.origin.update + max(left, 0) // self.node_batch

    def where(self, update: int) -> tuple[int, int]:
        """(epoch, place in each node's sequence) of the first sample read after `update` updates."""
        if update < self.origin.update:
            raise ValueError(f"update {update} comes before this plan's origin {self.origin}")
        if update < self.first_epoch_end:
            start = 0 if self.reshared(self.origin.epoch) else self.origin.sample
            return self.origin.epoch, start + (update - self.origin.update) * self.node_batch
        epochs, within = divmod(update - self.first_epoch_end, self.updates_per_epoch)
        return self.origin.epoch + 1 + epochs, within * self.node_batch

    def is_epoch_end(self, update: int) -> bool:
        """Whether an epoch ends after `update` updates."""
        if update == self.origin.update and self.origin.sample == 0:
            return True
        return update >= self.first_epoch_end and (update - self.first_epoch_end) % self.updates_per_epoch == 0

    def next_epoch_end(self, update: int) -> int:
        """The first update after `update` that ends an epoch."""
        if update < self.first_epoch_end:
            return self.first_epoch_end
        return self.first_epoch_end + ((update - self.first_epoch_end) // self.updates_per_epoch + 1) * \
            self.updates_per_epoch

    def epochs_begun(self, update: int) -> int:
        """Epochs read from (a partly read one counts) after `update` updates."""
        if update > self.origin.update:
            return self.where(update - 1)[0] + 1
        return self.origin.epoch + (self.origin.sample > 0)

    def positions(self, batch: int, rank: int) -> tuple[int, np.ndarray]:
        """(epoch, positions in its order) of micro-batch `batch` of process `rank` (ranks node by node)."""
        b, per_node = self.shape.batch, self.shape.processes // self.nodes
        node, local = divmod(rank, per_node)
        update, micro = divmod(batch, self.shape.accumulate)
        epoch, share = self.node_share(update, node)
        first = micro * b * per_node + local * b
        return epoch, share[first:first + b]

    def node_share(self, update: int, node: int) -> tuple[int, np.ndarray]:
        """(epoch, positions in its order) that node `node`'s processes read in update `update`."""
        epoch, first = self.where(update)
        if self.nodes == 1 and not self.reshared(epoch):
            return epoch, np.arange(first, first + self.node_batch)
        return epoch, self.sequence(epoch, node)[first:first + self.node_batch]

    def state(self) -> dict:
        """What a resumed run must agree with (checked by `check_resume`)."""
        return {"algorithm": ALGORITHM, "seed": self.seed, "lanes": self.lanes, "window": self.window,
                "chunk": self.chunk,
                "global_batch": self.shape.global_batch, "fingerprint": self.index.fingerprint(),
                "repeat_factors": None if self.factors is None else _digest(self.factors),
                "epoch_samples": self.epoch_samples, "origin": vars(self.origin).copy(), "nodes": self.nodes}


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, np.float64).tobytes()).hexdigest()[:16]


def plan_for(cfg: DataConfig, info: DatasetInfo, seed: int, shape: Shape, saved: dict | None = None,
             update: int = 0, nodes: int = 1) -> TrainPlan:
    """The run's plan from its config; for a run resumed after `update` updates (`saved`: the
    checkpoint's order state) the saved order's lanes, window and chunk, continued from the
    checkpoint's place in it, refused if this run cannot continue it exactly."""
    if saved is not None and saved.get("algorithm") != ALGORITHM:
        raise DataError(f"the checkpoint's sample order is {saved.get('algorithm')!r}; this segdist orders samples "
                        f"with {ALGORITHM!r} and cannot continue it without replaying or skipping samples: "
                        "resume with the segdist that wrote it, or start a new run (init_from the checkpoint "
                        "keeps its weights)")
    check_splits(cfg.train_split)
    index = sample_index(info, cfg.train_split, with_classes=cfg.class_balanced)
    factors = sample_factors(info, cfg, index) if cfg.class_balanced else None
    lanes = saved["lanes"] if saved is not None else min(cfg.lanes or DEFAULT_LANES, len(index.counts))
    window = saved["window"] if saved is not None else cfg.shuffle_window
    chunk = saved["chunk"] if saved is not None else default_chunk(cfg, info)
    check_nodes(nodes, lanes)
    plan = TrainPlan(index, seed, lanes, window, chunk, shape, factors, cfg.epoch_samples, nodes=nodes)
    if saved is not None:
        check_resume(plan, saved)
        plan = replace(plan, origin=resumed_origin(plan, saved, update))
    if cfg.epoch_samples is not None and cfg.epoch_samples > plan.epoch_length:
        raise DataError(f"data.epoch_samples {cfg.epoch_samples} is more than one pass over {cfg.train_split} "
                        f"({plan.epoch_length} samples): an epoch reads every sample at most once; leave it unset "
                        "for whole passes")
    if plan.updates_per_epoch < 1:
        raise DataError(f"the global batch ({shape.global_batch} samples) is larger than an epoch "
                        f"({plan.epoch_length} samples of {cfg.train_split}): lower data.batch_size, "
                        "optim.accumulate or the process count")
    return plan


def saved_plan(plan: TrainPlan, saved: dict) -> TrainPlan:
    """The plan a checkpoint was written with (its global batch, nodes and origin), as far as places go."""
    nodes = saved.get("nodes", 1)
    return replace(plan, shape=Shape(saved["global_batch"] // nodes, nodes, 1), nodes=nodes,
                   origin=Origin(**saved.get("origin", {})), _sequences={})


def resumed_origin(plan: TrainPlan, saved: dict, update: int) -> Origin:
    """Where a run resumed after `update` updates goes on: the saved origin while the global batch and
    the node count are the same, else the checkpoint's place in the order."""
    before = saved_plan(plan, saved)
    if (before.shape.global_batch, before.nodes) == (plan.shape.global_batch, plan.nodes):
        return before.origin
    epoch, sample = before.where(update)
    if before.reshared(epoch):  # its place is one in sequences shared out anew: not kept as an origin
        raise DataError(f"the checkpoint is in epoch {epoch}, read by {before.origin.nodes} and then {before.nodes} "
                        f"nodes: resume it on {before.nodes} node(s) with its global batch of "
                        f"{before.shape.global_batch} until that epoch ends (its next checkpoint), then on any")
    return Origin(update, epoch, sample, before.nodes)


def carried_end(before: TrainPlan, after: TrainPlan, end: int, update: int) -> int:
    """The update at which `after` ends a run that `before` would end at update `end`, resumed after
    `update`: the end of the same epoch where `end` closed one, else after as many samples."""
    if end <= update:
        return update
    if before.is_epoch_end(end):
        last = before.epochs_begun(end) - 1  # the epoch `end` closes
        if last >= after.origin.epoch:
            return after.first_epoch_end + (last - after.origin.epoch) * after.updates_per_epoch
    samples = (end - update) * before.shape.global_batch
    return update + max(1, round(samples / after.shape.global_batch))


def default_chunk(cfg: DataConfig, info: DatasetInfo) -> int:
    """data.chunk, else by the data source: 1 (every sample on its own) where reads are local or cached
    (the default), REMOTE_CHUNK where each run of samples costs a ranged request (data.cache false)."""
    if cfg.chunk is not None:
        return cfg.chunk
    return 1 if storage.is_local(info.root) or cfg.cache else REMOTE_CHUNK


def check_splits(splits: str | list[str]) -> None:
    """A split named twice would be read twice per epoch."""
    names = split_names(splits)
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise DataError(f"data.train_split {names} names {twice} more than once: each split is read once per epoch; "
                        "use data.class_balanced to repeat samples")


def sample_factors(info: DatasetInfo, cfg: DataConfig, index: SampleIndex) -> np.ndarray:
    """Each sample's repeat factor: that of its rarest class (repeat-factor sampling)."""
    per_class = repeat_factors(info.combined(cfg.train_split), cfg.balance_threshold)
    return np.array([max((per_class[c] for c in classes), default=1.0) for part in index.classes for classes in part])


def check_resume(plan: TrainPlan, saved: dict) -> None:
    """Refuse to continue a saved order that this run cannot continue exactly."""
    now = plan.state()
    if saved["fingerprint"] != now["fingerprint"] or saved["repeat_factors"] != now["repeat_factors"]:
        raise DataError("the training data changed since the checkpoint (shards, sample counts, offsets or "
                        "class-balanced repeat factors differ): resume with the dataset it was written with")
    for key in ("seed", "epoch_samples"):
        if saved[key] != now[key]:
            raise DataError(f"the checkpoint's order has {key} {saved[key]}, this run {now[key]}: resume with the same")
