"""The training config's schema: five flat sections of typed fields, their choices, and duration values.

It names no consumer: the model and loss names are checked where models are built
(segdist.training.preflight), not here.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

from segdist.utils.images import DEFAULT_MAX_PIXELS

OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULERS = ("poly", "cosine", "step", "plateau", "constant")
PRECISIONS = ("no", "fp16", "bf16")
RESIZE_SIDES = ("long", "short")
NORMALIZE = ("dataset", "imagenet")
NONFINITE = ("stop", "skip")
TRACKERS = ("tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive")  # accelerate's trackers
CLASS_WEIGHTS = ("inverse", "median_freq", "sqrt_median_freq")


@dataclass
class DataConfig:
    shards: str = "shards/demo"  # written by `segdist prepare`: a directory, http(s):// or s3:// prefix, or pipe:
    train_split: str | list[str] = "train"  # one split, or several trained on together: [train, val]
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [512, 512])  # H, W
    base_size: int | None = None  # resize the long (resize_side) side to this before scaling (None: keep)
    resize_side: str = "long"  # the side base_size and val_size set: "long", or "short" (torchvision's references)
    scale_range: list[float] = field(default_factory=lambda: [0.5, 2.0])
    resize_schedule: list[list[float]] | None = None  # progressive resizing: [[scale, share of the steps], ...],
    # e.g. [[0.5, 0.7], [1.0, 0.3]]: the scale multiplies scale_range in its share of the run (data/stages.py)
    hflip: float = 0.5
    vflip: float = 0.0
    rotate: float = 0.0  # max degrees
    color_jitter: float = 0.0  # probability
    rgb_shift: float = 0.0  # probability
    blur: float = 0.0  # probability
    photometric: bool = False  # MMSegmentation's PhotoMetricDistortion (brightness, contrast, saturation, hue)
    cat_max_ratio: float | None = None  # redraw a crop (up to 10 times) while one class covers this share (mmseg 0.75)
    normalize: str = "dataset"  # "dataset" (dataset.json mean/std) or "imagenet"
    val_size: int | None = None  # resize the long (resize_side) side for validation; scored at full label size
    batch_size: int = 8  # per process
    val_batch_size: int = 4
    workers: int = 2  # DataLoader workers per process
    shuffle_window: int = 256  # how many places a sample may move within its lane (shards read near one another)
    lanes: int | None = None  # shard lanes the order interleaves (default: 16, at most the shard parts); kept on resume
    chunk: int | None = None  # samples of a shard kept together (one ranged read); null: 1 for local or cached
    # shards, 8 for remote ones read with data.cache false; kept on resume
    class_balanced: bool = False  # repeat images holding rare classes (repeat-factor sampling)
    balance_threshold: float = 0.3  # repeat images whose rarest class is in fewer than this share
    epoch_samples: int | None = None  # a shorter epoch: its first N positions (default and at most: the split)
    cache: bool = True  # remote shards: downloaded whole, ahead of need, into the node's cache (false: ranged reads)
    cache_dir: str | None = None  # the node-local cache; null: $XDG_CACHE_HOME/segdist/shards (~/.cache/...)
    cache_max_gb: float = 50.0  # the cache's size bound; shards past their last use, then least recently used go
    retries: int = 5  # transient failures tolerated per remote shard read (resumed where possible)
    io_timeout: float = 30.0  # seconds any network call may take
    max_pixels: int = DEFAULT_MAX_PIXELS  # larger images are skipped, checked from the header before decoding


@dataclass
class ModelConfig:
    arch: str = "unet"
    encoder: str = "resnet34"
    encoder_weights: str | None = None  # None, "imagenet" (needs a hub) or a local checkpoint file
    output_stride: int = 16  # DeepLabV3/V3+: 8 or 16, PAN: 16 or 32; other architectures ignore it
    decoder_dropout: float = 0.0
    encoder_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model, e.g. {drop_path_rate: 0.1}
    arch_kwargs: dict = field(default_factory=dict)  # passed to the smp architecture, e.g. {decoder_channels: [...]}
    channels_last: bool | None = None  # null: on for CPU and for CUDA with bf16/fp16, off for CUDA fp32
    compile: bool = False
    sync_bn: bool = False  # SyncBatchNorm across processes: CUDA only (refused for CPU processes)
    init_from: str | None = None  # a run directory, checkpoint directory or weights file: a new run starts from it
    freeze_encoder: bool | int | float = False  # true: the whole run; N: the first N steps; 0.1: the first 10%
    aux_head: float = 0.0  # the weight of an auxiliary FCN head's loss (MMSeg 0.4, torchvision 0.5); 0: none
    checkpoint: str = "best"  # evaluate, predict and export's checkpoint unless --checkpoint is given: best or last
    tta: str = "none"  # evaluate and predict's test-time augmentation unless --tta is given: flip, scales=...[,flip]


@dataclass
class LossConfig:
    name: str = "ce"
    class_weights: str | list[float] | None = None  # "inverse", "median_freq", "sqrt_median_freq" or a list
    focal_gamma: float = 2.0
    focal_alpha: list[float] | None = None
    dice_weight: float = 0.5


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD
    scheduler: str = "poly"
    warmup_steps: int = 0
    poly_power: float = 0.9
    step_size: int = 1000  # "step": multiply lr by gamma every step_size steps
    gamma: float = 0.1
    plateau_patience: int = 2  # "plateau": validations without mIoU gain before lowering lr
    plateau_factor: float = 0.5
    grad_clip: float | None = None
    accumulate: int = 1
    min_lr: float = 0.0  # poly and cosine decay to this LR (MMSeg's eta_min), in every parameter group
    encoder_lr_scale: float = 1.0  # the encoder's LR as a multiple of lr (fine-tuning: e.g. 0.1)
    aux_lr_scale: float = 1.0  # the auxiliary head's LR as a multiple of lr (torchvision: 10)
    decay_norm_bias: bool = False  # weight decay on norm and bias parameters too (off: timm's rule; on: torchvision's)
    layer_decay: float | None = None  # layer-wise LR decay of the encoder (ViT/ConvNeXt fine-tuning, e.g. 0.75)


@dataclass
class TrainConfig:
    name: str = "run"
    runs_dir: str = "runs"
    epochs: int = 10
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    mixed_precision: str | None = None  # null: the launcher's (`accelerate launch --mixed_precision`), else "no";
    # "auto": the faster of fp32 and bf16, timed on the job (training.precision)
    seed: int = 0
    val_every: int = 1  # epochs
    checkpoint_every: int = 0  # optimizer steps; 0 = at the end of each epoch only
    keep_last: int = 3
    early_stop_patience: int | None = None  # validations without mIoU gain
    log_every: int = 10  # steps
    log_images: int = 4  # validation overlays written to the trackers
    log_with: list[str] = field(default_factory=lambda: ["tensorboard"])  # accelerate trackers
    project: str = "segdist"  # tracker project (W&B project, MLflow experiment)
    collective_timeout: float = 300.0  # seconds a rank waits in a collective for a silent peer
    nonfinite: str = "stop"  # NaN/inf loss: "stop" the run, or "skip" the update
    max_nonfinite: int = 10  # "skip": give up after this many non-finite updates in a row
    ema_decay: float | None = None  # exponential moving average of the weights (e.g. 0.999); None: off
    budget: str | None = None  # wall-clock budget, e.g. 50m or 2h: sets max_steps to fit it
    record_samples: bool = False  # write samples.jsonl: the keys each rank trained on at each step


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float) -> float:
    """'50m', '1h30m', '90s', '2h', '3600' (seconds) or '1-02:00:00' / '02:30:00' (SLURM) -> seconds."""
    if isinstance(text, (int, float)):
        return float(text)
    text = text.strip().lower()
    slurm = re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+)(?::(\d+))?", text)
    if slurm:
        days, a, b, c = slurm.groups()
        hours, minutes, seconds = (int(a), int(b), int(c)) if c is not None else (0, int(a), int(b))
        return float(int(days or 0) * 86400 + hours * 3600 + minutes * 60 + seconds)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text):
        raise ValueError(f"'{text}' is not a duration; use e.g. 50m, 1h30m, 90s or 02:30:00")
    return sum(float(n) * UNITS[u] for n, u in parts)
