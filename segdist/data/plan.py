"""The run's training plan: the sample index, the order's parameters and the global batch's shape.

A plan is all a training batch depends on; `TrainPlan.state()` goes into every checkpoint and a
resumed run checks it (`check_resume`): the same order algorithm, dataset and seed, and a global
batch (per-process batch x processes x accumulation) it can keep on its own process count
(`fit_shape`: another accumulation, else another per-process batch).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from segdist.config import DataConfig
from segdist import storage
from segdist.data.info import DatasetInfo, split_names
from segdist.data.order import ALGORITHM, SampleIndex, epoch_length, epoch_order
from segdist.errors import DataError
from segdist.utils.secrets import redact

DEFAULT_LANES = 16  # lanes of the order when data.lanes is not set (at most the number of shard parts)
REMOTE_CHUNK = 8  # samples per ranged read of an uncached remote shard (data.chunk's default there)
KEPT_ORDERS = 2  # epoch orders a worker keeps (a prefetch may reach into the next epoch)


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
                       tuple(tuple(r["offsets"]) for r in records), classes)


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
    _orders: dict = field(default_factory=dict, repr=False)

    @cached_property
    def epoch_length(self) -> int:
        """Samples every epoch's order holds (the split, or with repeat factors the fewest an epoch gets)."""
        return epoch_length(self.index, self.factors)

    @cached_property
    def samples_per_epoch(self) -> int:
        """Positions each epoch uses: whole global batches of the epoch's order."""
        wanted = min(self.epoch_samples or self.epoch_length, self.epoch_length)
        return wanted // self.shape.global_batch * self.shape.global_batch

    @property
    def updates_per_epoch(self) -> int:
        return self.samples_per_epoch // self.shape.global_batch

    @property
    def batches_per_epoch(self) -> int:
        """Micro-batches of one process per epoch."""
        return self.updates_per_epoch * self.shape.accumulate

    def order(self, epoch: int) -> np.ndarray:
        """The global sample ids of `epoch` in training order (the last KEPT_ORDERS epochs are kept)."""
        if epoch not in self._orders:
            if len(self._orders) >= KEPT_ORDERS:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = epoch_order(self.index, self.seed, epoch, self.lanes, self.window, self.factors,
                                              self.chunk)
        return self._orders[epoch]

    def positions(self, batch: int, rank: int) -> tuple[int, np.ndarray]:
        """(epoch, positions in its order) of micro-batch `batch` of process `rank`."""
        b, w, a = self.shape.batch, self.shape.processes, self.shape.accumulate
        epoch, within = divmod(batch, self.batches_per_epoch)
        update, micro = divmod(within, a)
        first = update * b * w * a + micro * b * w + rank * b
        return epoch, np.arange(first, first + b)

    def state(self) -> dict:
        """What a resumed run must agree with (checked by `check_resume`)."""
        return {"algorithm": ALGORITHM, "seed": self.seed, "lanes": self.lanes, "window": self.window,
                "chunk": self.chunk,
                "global_batch": self.shape.global_batch, "fingerprint": self.index.fingerprint(),
                "repeat_factors": None if self.factors is None else _digest(self.factors),
                "epoch_samples": self.epoch_samples}


def _digest(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, np.float64).tobytes()).hexdigest()[:16]


def plan_for(cfg: DataConfig, info: DatasetInfo, seed: int, shape: Shape, saved: dict | None = None) -> TrainPlan:
    """The run's plan from its config; for a resumed run (`saved`: the checkpoint's order state) the
    saved order's lanes and window, refused if this run cannot continue it exactly."""
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
    plan = TrainPlan(index, seed, lanes, window, chunk, shape, factors, cfg.epoch_samples)
    if saved is not None:
        check_resume(plan, saved)
    if cfg.epoch_samples is not None and cfg.epoch_samples > plan.epoch_length:
        raise DataError(f"data.epoch_samples {cfg.epoch_samples} is more than one pass over {cfg.train_split} "
                        f"({plan.epoch_length} samples): an epoch reads every sample at most once; leave it unset "
                        "for whole passes")
    if plan.updates_per_epoch < 1:
        raise DataError(f"the global batch ({shape.global_batch} samples) is larger than an epoch "
                        f"({plan.epoch_length} samples of {cfg.train_split}): lower data.batch_size, "
                        "optim.accumulate or the process count")
    return plan


def default_chunk(cfg: DataConfig, info: DatasetInfo) -> int:
    """data.chunk, else by the data source: 1 (every sample on its own) where reads are local or cached,
    REMOTE_CHUNK where each run of samples costs a ranged request (remote shards, no cache)."""
    if cfg.chunk is not None:
        return cfg.chunk
    return 1 if storage.is_local(info.root) or cfg.cache_dir else REMOTE_CHUNK


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
