"""A finished run as evaluate, predict and export see it: config, dataset manifest and a checkpoint's model.

A run directory (`runs/NAME/`) is self-contained: `config.yaml` rebuilds the architecture,
`dataset.json` gives the class names, palette, ignore index and normalisation, and
`checkpoints/*/model.safetensors` holds the weights (the unwrapped model's state dict).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from segdist.config import Config, ConfigError, load_config
from segdist.data.augment import Normalizer, eval_input
from segdist.data.info import DatasetInfo, normalization
from segdist.distributed import inference_precision
from segdist.errors import DataError
from segdist.format.manifest import check_names
from segdist.models import build_from_config, use_channels_last
from segdist.models.aux_head import remove_aux_head
from segdist.models.inference import NO_TTA, TTA, argmax, autocast, check_mode, infer_each, parse_tta, probs_at
from segdist.runs import checkpoints
from segdist.runs.ema import model_weights
from segdist.storage import kind
from segdist.utils.images import DEFAULT_MAX_PIXELS, decode_rgb

CHECKPOINT_CHOICES = "best, last or a checkpoint path"


@dataclass
class Run(DatasetInfo):
    """A run: its dataset manifest (classes, palette, ignore index: see DatasetInfo; `root` is the
    run directory), its config and the model restored from one checkpoint (eval mode, CPU)."""

    config: Config
    checkpoint: Path  # the weights file
    step: int | None  # optimizer step the checkpoint was written at, when recorded
    model: torch.nn.Module

    @property
    def dir(self) -> Path:
        return self.root

    @property
    def eval_size(self) -> int | None:
        """The size images are resized to before inference (`data.val_size`), as in validation."""
        return self.config.data.val_size

    @property
    def resize_side(self) -> str:
        """The side `eval_size` sets: "long" or "short" (`data.resize_side`)."""
        return self.config.data.resize_side

    def tta(self, asked: TTA | None = None) -> TTA:
        """The test-time augmentation to use: `asked` (--tta), else the run's `model.tta`."""
        if asked is not None:
            return asked
        try:
            return parse_tta(self.config.model.tta)
        except ValueError as exc:
            raise ConfigError(f"{self.dir / 'config.yaml'}: model.tta: {exc}") from None

    def model_on(self, device: torch.device) -> torch.nn.Module:
        """The model on `device`, channels-last where the run's `model.channels_last` says so for that device."""
        channels_last = use_channels_last(self.config.model.channels_last, device, self.config.train.mixed_precision)
        return self.model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)

    def normalizer(self) -> Normalizer:
        """The normalisation the model was trained with (the run's dataset.json or ImageNet's)."""
        return Normalizer(*normalization(self.config.data, self))

    @torch.no_grad()
    def probabilities(self, images: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], device: torch.device,
                      *, mode: str = "whole", crop: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                      tta: TTA = NO_TTA) -> Iterator[torch.Tensor]:
        """Class probabilities [C, H, W] (float32, on `device`) of uint8 CHW `images` (data.augment.eval_input),
        each at its `sizes` entry, in order: one image's full-size probabilities at a time (a generator).

        The run's normalisation, its precision (autocast in `train.mixed_precision`) and channels-last
        rule, one forward pass per size; the path `segdist predict` takes.
        """
        model, normalize = self.model_on(device), self.normalizer().to(device)
        inputs = [normalize(image[None].to(device, non_blocking=True))[0] for image in images]
        with autocast(device, self.config.train.mixed_precision):
            probs = infer_each(model, inputs, mode, crop=crop, stride=stride, tta=tta)
        for p, size in zip(probs, sizes):
            yield probs_at(p, size)

    def classify(self, images: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]], device: torch.device, *,
                 mode: str = "whole", crop: Sequence[int] | None = None, stride: Sequence[int] | None = None,
                 tta: TTA = NO_TTA) -> list[np.ndarray]:
        """Class maps (HxW numpy, at each `sizes` entry): the argmax of `probabilities`."""
        return [argmax(p).cpu().numpy() for p in self.probabilities(images, sizes, device, mode=mode, crop=crop,
                                                                     stride=stride, tta=tta)]

    def predict(self, image: np.ndarray | str | Path, *, mode: str = "whole", crop: Sequence[int] | None = None,
                stride: Sequence[int] | None = None, tta: TTA | str | None = None,
                device: str | torch.device | None = None, max_pixels: int | None = None) -> np.ndarray:
        """The class map of one image, at the image's own size, exactly as `segdist predict` computes it.

        Args:
            image: an RGB uint8 HxWx3 array, or the path of an image file (read on its stored pixel
                grid: EXIF orientation is not applied, as in training).
            mode: "whole" (default) or "slide" (with `crop` and `stride`, each [H, W]).
            tta: "none", "flip", "scales=0.5,1.0,1.5[,flip]" or a `TTA`; None: the run's `model.tta`.
            device: where to run (default: CUDA when there is one, else the CPU).
            max_pixels: a larger image file is refused from its header (default: the run's data.max_pixels).

        Returns:
            An HxW array of class ids (int64), the image's height and width.

        Example:
            >>> run = segdist.load_run("runs/demo")
            >>> classes = run.predict("photo.jpg", tta="flip")
            >>> classes.shape, run.classes[classes[0, 0]]
        """
        rgb = read_rgb(image, max_pixels or self.config.data.max_pixels)
        tta = self.tta(parse_tta(tta) if isinstance(tta, str) else tta)
        check_mode(mode, crop, stride)
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return self.classify([eval_input(rgb, self.eval_size, self.resize_side)], [rgb.shape[:2]], device, mode=mode,
                             crop=crop, stride=stride, tta=tta)[0]


def read_rgb(image: np.ndarray | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """An RGB uint8 HxWx3 array as given, or read from a file on its stored pixel grid (at most `max_pixels`)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"predict takes an RGB uint8 HxWx3 array, got {image.dtype} {image.shape}")
        return image
    path = Path(image)
    try:
        rgb = decode_rgb(np.fromfile(path, np.uint8), max_pixels=max_pixels)
    except (OSError, ValueError) as exc:  # TooManyPixels is a ValueError
        raise DataError(f"{path}: cannot read the image ({exc})") from None
    if rgb is None:
        raise DataError(f"{path}: not a decodable image")
    return rgb


def load_run(run_dir: str | Path, checkpoint: str | None = None) -> Run:
    """Load `run_dir`'s config and manifest and restore the model from `checkpoint` (best, last or a path;
    None: the run's `model.checkpoint`).

    With `train.ema_decay` set, the model holds the checkpoint's moving average of the weights.
    """
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    # the precision inference runs in: `accelerate launch --mixed_precision`'s where given, else the run's
    config.train.mixed_precision = inference_precision(config.train.mixed_precision)
    manifest = check_names(json.loads((run_dir / "dataset.json").read_text()), run_dir / "dataset.json")
    path = checkpoints.resolve(run_dir, checkpoint or recipe_checkpoint(run_dir, config))
    weights = checkpoints.weights_file(path, ema=config.train.ema_decay is not None)
    # the checkpoint replaces every weight, so no pretrained encoder (a hub download or a file) is needed
    model = build_from_config(config.model, len(manifest["classes"]), pretrained=False)
    load_weights(model, weights)  # strictly: a run trained with an auxiliary head has its keys too
    remove_aux_head(model)  # a training aid: evaluate, predict and export see the plain model
    state = json.loads((path / checkpoints.STATE_FILE).read_text()) if (path / checkpoints.STATE_FILE).is_file() else {}
    return Run(run_dir, manifest, config, weights, state.get("update"), model.eval())


def recipe_checkpoint(run_dir: Path, config: Config) -> str:
    """The run's `model.checkpoint`: best or last only, never a path read from a run directory."""
    if config.model.checkpoint not in ("best", "last"):
        raise ConfigError(f"{run_dir / 'config.yaml'}: model.checkpoint '{config.model.checkpoint}' is not valid; "
                          "choose one of best, last")
    return config.model.checkpoint


def run_config(run_dir: Path) -> Config:
    """`run_dir`'s config.yaml, once config.yaml and dataset.json are known to be there."""
    for name in ("config.yaml", "dataset.json"):
        if not (run_dir / name).is_file():
            raise DataError(f"{run_dir} is not a segdist run: {name} is missing (runs are written by `segdist train`)")
    try:
        return load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        raise DataError(f"{run_dir / 'config.yaml'}: {exc}") from None


def run_shards(run_dir: str | Path) -> str:
    """The dataset `run_dir` was trained on (its config.yaml's data.shards), read before any model is loaded.

    A `pipe:` command there is refused: a run directory may come from someone else, and a command
    runs only when the user's own command line or recipe names it (`segdist evaluate --shards`).
    """
    run_dir = Path(run_dir)
    shards = str(run_config(run_dir).data.shards)
    if kind(shards) == "pipe":
        raise DataError(f"{run_dir / 'config.yaml'}: data.shards is a pipe: command, which segdist does not run "
                        "from a run directory; give the dataset with --shards (e.g. --shards 'pipe:...{name}' "
                        "when you trust that command)")
    return shards


def load_weights(model: torch.nn.Module, weights: Path) -> None:
    """Load a safetensors state dict strictly, tolerating torch.compile / DDP key prefixes."""
    state = load_file(str(weights))
    if weights.name == checkpoints.EMA_FILE:
        state = model_weights(state)
    state = {checkpoints.plain_key(k): v for k, v in state.items()}
    missing, unexpected = (sorted(keys) for keys in _key_mismatch(model, state))
    if missing or unexpected:
        raise DataError(f"{weights} does not fit the run's model: missing {missing[:5]}, unexpected {unexpected[:5]} "
                        f"({len(missing)} missing, {len(unexpected)} unexpected keys)")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # shape mismatches, e.g. a checkpoint of another run with other classes
        raise DataError(f"{weights} does not fit the run's model: {exc}") from None



def _key_mismatch(model: torch.nn.Module, state: dict) -> tuple[set, set]:
    expected = set(model.state_dict())
    return expected - set(state), set(state) - expected
