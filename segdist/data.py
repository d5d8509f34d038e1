"""Shard readers for training and validation.

Sharding across processes and DataLoader workers is decided here and only here:
- training streams resample shards with replacement, each (process, worker) from its own seed,
  and every process runs exactly `steps_per_epoch` batches whatever the shard sizes;
- validation reads every shard in order and keeps sample i on the (process, worker) with
  i % (processes x workers) == its slot, so every sample is seen exactly once, unpadded.
Each (seed, epoch, rank, worker) fixes the whole stream, augmentations included, which is
what makes resuming from a checkpoint exact.
"""

from __future__ import annotations

import json
import math
import random
import signal
from dataclasses import dataclass
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from segdist.config import DataConfig
from segdist.manifest import read_manifest, shard_paths
from segdist.sources.common import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DatasetInfo:
    """What training needs from dataset.json."""

    root: Path
    manifest: dict

    @property
    def classes(self) -> list[str]:
        return self.manifest["classes"]

    @property
    def num_classes(self) -> int:
        return len(self.manifest["classes"])

    @property
    def ignore_index(self) -> int:
        return self.manifest["ignore_index"]

    @property
    def palette(self) -> list[list[int]]:
        return self.manifest["palette"]

    def split(self, name: str) -> dict:
        if name not in self.manifest["splits"]:
            raise DataError(f"{self.root} has no split '{name}'; it has {sorted(self.manifest['splits'])}")
        return self.manifest["splits"][name]

    def urls(self, split: str) -> list[str]:
        paths = shard_paths(self.root, self.manifest, split)
        if not paths or not self.split(split)["samples"]:
            raise DataError(f"{self.root}: split '{split}' has no samples")
        return [str(p) for p in paths]


def load_dataset_info(shards: str | Path) -> DatasetInfo:
    root = Path(shards)
    if not root.is_dir():
        raise DataError(f"data.shards: {root} is not a directory; run `segdist prepare ... --out {root}` first")
    return DatasetInfo(root, read_manifest(root))


def normalization(cfg: DataConfig, info: DatasetInfo) -> tuple[tuple, tuple]:
    if cfg.normalize == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(info.manifest["mean"]), tuple(info.manifest["std"])


def train_transform(cfg: DataConfig, info: DatasetInfo, seed: int) -> A.Compose:
    """Random scale + crop, flips, rotation, colour and blur (albumentations), on uint8 images.

    Normalisation happens after the batch reaches the device (`Normalizer`): workers ship
    uint8 images and labels, 5x fewer bytes between processes than float32/int64 tensors.
    """
    h, w = cfg.crop_size
    ignore = info.ignore_index
    lo, hi = cfg.scale_range
    steps: list = [A.LongestMaxSize(max_size=cfg.base_size)] if cfg.base_size else []
    steps += [
        A.RandomScale(scale_limit=(lo - 1, hi - 1), p=1.0),
        A.PadIfNeeded(h, w, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore),
        A.RandomCrop(h, w),
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
    ]
    if cfg.rotate:
        steps.append(A.Rotate(limit=cfg.rotate, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=ignore, p=0.5))
    if cfg.color_jitter:
        steps.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=cfg.color_jitter))
    if cfg.rgb_shift:
        steps.append(A.RGBShift(r_shift_limit=25, g_shift_limit=25, b_shift_limit=25, p=cfg.rgb_shift))
    if cfg.blur:
        steps.append(A.Blur(blur_limit=(3, 3), p=cfg.blur))
    return A.Compose(steps, seed=seed)


def eval_transform(size: int | None) -> A.Compose:
    """Optional long-side resize of the image; the label is not touched."""
    return A.Compose([A.LongestMaxSize(max_size=size)] if size else [])


def decode(sample: dict) -> tuple[np.ndarray, np.ndarray]:
    """Shard sample -> (RGB uint8 image, label map)."""
    data = sample.get("jpg") or sample.get("png")
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    label = cv2.imdecode(np.frombuffer(sample["seg.png"], np.uint8), cv2.IMREAD_UNCHANGED)
    if bgr is None or label is None:
        raise DataError(f"{sample.get('__url__')}: sample {sample.get('__key__')} does not decode")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), label


def to_tensors(image: np.ndarray, label: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 CHW image; uint8 label (int32 when ids need 16 bits). `Normalizer` makes them float/long."""
    if label.dtype != np.uint8:
        label = label.astype(np.int32)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))), torch.from_numpy(label)


class Normalizer(torch.nn.Module):
    """uint8 image batch -> normalised float on its device; labels -> int64."""

    def __init__(self, mean: tuple, std: tuple):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() - self.mean) / self.std


def stream_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python hash randomisation)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> 1)


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def repeat_factors(info: DatasetInfo, split: str, threshold: float) -> np.ndarray:
    """Per-class repeat factor max(1, sqrt(t / f_c)), f_c = share of images holding class c (LVIS RFS)."""
    rec = info.split(split)
    freq = np.asarray(rec["class_images"], np.float64) / max(rec["samples"], 1)
    with np.errstate(divide="ignore"):
        return np.where(freq > 0, np.maximum(1.0, np.sqrt(threshold / freq)), 1.0)


class TrainStream(IterableDataset):
    """Endless, resampled stream of augmented training batches for one process and epoch."""

    def __init__(self, cfg: DataConfig, info: DatasetInfo, seed: int, epoch: int, rank: int):
        self.cfg, self.info = cfg, info
        self.urls = info.urls(cfg.train_split)
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.factors = repeat_factors(info, cfg.train_split, cfg.balance_threshold) if cfg.class_balanced else None

    def __iter__(self):
        import webdataset as wds

        worker, _ = _worker()
        seed = stream_seed(self.seed, self.epoch, self.rank, worker)
        rng = random.Random(seed)
        transform = train_transform(self.cfg, self.info, seed % 2**32)
        stages = [
            wds.ResampledShards(self.urls, seed=seed, worker_seed=lambda: 0, deterministic=True),
            wds.tarfile_to_samples(),
        ]
        if self.factors is not None:
            stages.append(lambda src: self._repeat(src, rng))
        stages += [
            wds.shuffle(self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=rng),
            wds.map(lambda s: self._augment(s, transform)),
            wds.batched(self.cfg.batch_size, collation_fn=_stack, partial=False),
        ]
        yield from wds.DataPipeline(*stages)

    def _augment(self, sample: dict, transform: A.Compose) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = decode(sample)
        out = transform(image=image, mask=label)
        return to_tensors(out["image"], out["mask"])

    def _repeat(self, src, rng: random.Random):
        """Repeat-factor sampling: an image comes back r times on average, r from its rarest class."""
        for sample in src:
            classes = json.loads(sample["json"])["classes"]
            factor = max((self.factors[c] for c in classes), default=1.0)
            copies = int(factor) + (rng.random() < factor - int(factor))
            for _ in range(copies):
                yield sample


def _stack(batch: list) -> tuple[torch.Tensor, torch.Tensor]:
    images, labels = zip(*batch)
    return torch.stack(images), torch.stack(labels)


def steps_per_epoch(cfg: DataConfig, info: DatasetInfo, world_size: int) -> int:
    samples = cfg.epoch_samples or info.split(cfg.train_split)["samples"]
    return max(1, math.ceil(samples / (world_size * cfg.batch_size)))


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader worker init: SIGTERM/SIGUSR1 (SLURM signals every process of a job step) are for
    the training process, which checkpoints and then shuts its loader workers down itself."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)


def single_threaded_opencv() -> None:
    """Called before DataLoader workers fork: OpenCV's thread pool is not fork-safe (a forked
    worker that touches it can deadlock), and the workers are the parallelism anyway."""
    cv2.setNumThreads(1)


def train_loader(cfg: DataConfig, info: DatasetInfo, *, seed: int, epoch: int, rank: int, world_size: int):
    """Exactly steps_per_epoch batches for this process, whatever the shard layout."""
    import webdataset as wds

    single_threaded_opencv()
    stream = TrainStream(cfg, info, seed, epoch, rank)
    generator = torch.Generator().manual_seed(stream_seed(seed, epoch, rank))  # keeps the global RNG untouched
    loader = wds.WebLoader(stream, batch_size=None, num_workers=cfg.workers, generator=generator,
                           persistent_workers=False, worker_init_fn=ignore_stop_signals)
    return loader.with_epoch(steps_per_epoch(cfg, info, world_size))


class EvalStream(IterableDataset):
    """Every sample of a split exactly once across all (process, worker) slots, in shard order."""

    def __init__(self, urls: list[str], transform: A.Compose, rank: int, world_size: int):
        self.urls, self.transform = urls, transform
        self.rank, self.world_size = rank, world_size

    def __iter__(self):
        import webdataset as wds

        worker, workers = _worker()
        slot, slots = self.rank * workers + worker, self.world_size * workers
        samples = wds.DataPipeline(wds.SimpleShardList(self.urls), wds.tarfile_to_samples())
        for index, sample in enumerate(samples):
            if index % slots != slot:
                continue
            image, label = decode(sample)
            image = self.transform(image=image)["image"]
            yield (*to_tensors(image, label), sample["__key__"])


def pad_collate(batch: list, ignore_index: int, multiple: int = 32) -> dict:
    """Pad images (zeros) to a common size divisible by `multiple`; labels keep their own size."""
    h = max(img.shape[1] for img, _, _ in batch)
    w = max(img.shape[2] for img, _, _ in batch)
    h, w = math.ceil(h / multiple) * multiple, math.ceil(w / multiple) * multiple
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w, dtype=batch[0][0].dtype)
    for i, (img, _, _) in enumerate(batch):
        images[i, :, : img.shape[1], : img.shape[2]] = img
    return {
        "images": images,
        "sizes": [tuple(img.shape[1:]) for img, _, _ in batch],
        "labels": [label for _, label, _ in batch],
        "keys": [key for _, _, key in batch],
    }


def eval_loader(cfg: DataConfig, info: DatasetInfo, split: str, *, rank: int, world_size: int,
                size: int | None = None, batch_size: int | None = None, workers: int | None = None) -> DataLoader:
    """Validation/evaluation batches: padded images, labels at their original resolution."""
    from functools import partial

    single_threaded_opencv()
    stream = EvalStream(info.urls(split), eval_transform(size), rank, world_size)
    return DataLoader(stream, batch_size=batch_size or cfg.val_batch_size,
                      num_workers=cfg.workers if workers is None else workers,
                      collate_fn=partial(pad_collate, ignore_index=info.ignore_index),
                      worker_init_fn=ignore_stop_signals,
                      generator=torch.Generator())  # leaves the global RNG (saved in checkpoints) untouched
