"""`model.init_from`: start a new run from another run's, a checkpoint's or a weights file's tensors.

As MMSeg's `load_from` and smp's `from_pretrained(..., strict=False)`: tensors load by name and
shape, and whatever does not match (a head for another class count, an auxiliary head the source
lacked) keeps its fresh initialisation. A source whose architecture or encoder is known (a segdist
run or checkpoint) must match the model's; a bare weights file must match the encoder it claims
to hold (encoder tensors of another shape, or none of them, refuse it). Weights files are read
with `torch.load(weights_only=True)` or safetensors: loading one never runs code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from segdist.config import Config, ConfigError, load_config
from segdist.errors import DataError
from segdist.models.encoders import read_state_dict
from segdist.runs import checkpoints
from segdist.runs.ema import model_weights
from segdist.runs.run import recipe_checkpoint

TORCH_FILES = (".pt", ".pth", ".bin", ".ckpt")
SHOWN = 5  # names listed per kind in the report


@dataclass
class Source:
    """Where the tensors come from: the weights file, and the (arch, encoder) that wrote it when known."""

    weights: Path
    model: tuple[str, str] | None


@dataclass
class InitReport:
    """What `init_from` did to each tensor of the new model (and of the source)."""

    source: str
    weights: str
    loaded: list[str]
    reinitialised: list[str]  # the model's tensors the source had not (or not in this shape)
    ignored: list[str]  # the source's tensors the model has not (or not in this shape)

    def to_dict(self) -> dict:
        return {"source": self.source, "weights": self.weights, "loaded": len(self.loaded),
                "reinitialised": len(self.reinitialised), "ignored": len(self.ignored),
                "reinitialised_names": self.reinitialised[:SHOWN], "ignored_names": self.ignored[:SHOWN]}

    def line(self) -> str:
        def few(names: list[str]) -> str:
            return f" ({', '.join(names[:SHOWN])}{', ...' if len(names) > SHOWN else ''})" if names else ""

        return (f"init_from {self.source}: loaded {len(self.loaded)} tensors, re-initialised "
                f"{len(self.reinitialised)}{few(self.reinitialised)}, ignored {len(self.ignored)}"
                f"{few(self.ignored)}")


def init_from(model: nn.Module, path: str | Path, arch: str, encoder: str) -> InitReport:
    """Load `path`'s matching tensors into `model` (an `arch` over `encoder`); returns what was done."""
    source = find_source(Path(path))
    if source.model is not None and source.model != (arch, encoder):
        raise DataError(f"model.init_from {path}: it holds {source.model[0]} over encoder {source.model[1]}, "
                        f"this run builds {arch} over encoder {encoder}; init_from needs the same architecture "
                        f"and encoder (model.encoder_weights loads an encoder alone)")
    weights = read_weights(source.weights)
    target = model.state_dict()
    loaded = {k: v for k, v in weights.items() if k in target and target[k].shape == v.shape}
    report = InitReport(str(path), str(source.weights), sorted(loaded),
                        [k for k in target if k not in loaded], [k for k in weights if k not in loaded])
    check_encoder_matches(report, target, weights, encoder)
    nn.Module.load_state_dict(model, loaded, strict=False)  # smp's MiT overrides load_state_dict without `strict`
    return report


def find_source(path: Path) -> Source:
    """The weights file behind a run directory (its model.checkpoint), a checkpoint directory or a file."""
    if path.is_file():
        if path.suffix != ".safetensors" and path.suffix not in TORCH_FILES:
            raise DataError(f"model.init_from {path}: not a weights file (.safetensors, {', '.join(TORCH_FILES)}), "
                            f"a run directory or a checkpoint directory")
        return Source(path, None)
    if (path / "config.yaml").is_file() and (path / "checkpoints").is_dir():
        config = _source_config(path)
        return _checkpoint_source(config, checkpoints.resolve(path, recipe_checkpoint(path, config)))
    if (path / checkpoints.WEIGHTS_FILE).is_file():
        run_dir = path.parent.parent  # runs/NAME/checkpoints/<checkpoint>
        config = _source_config(run_dir) if (run_dir / "config.yaml").is_file() else None
        return _checkpoint_source(config, checkpoints.resolve(run_dir, str(path)))
    raise DataError(f"model.init_from {path}: no such run directory, checkpoint directory or weights file")


def _source_config(run_dir: Path) -> Config:
    try:
        return load_config(run_dir / "config.yaml")
    except ConfigError as exc:
        raise DataError(f"model.init_from: {run_dir / 'config.yaml'}: {exc}") from None


def _checkpoint_source(config: Config | None, checkpoint: Path) -> Source:
    """A checkpoint's weights (its EMA when the run kept one, as load_run uses) and its run's model."""
    if config is None:
        return Source(checkpoint / checkpoints.WEIGHTS_FILE, None)
    return Source(checkpoints.weights_file(checkpoint, config.train.ema_decay is not None),
                  (config.model.arch, config.model.encoder))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors or torch file (unwrapped from `state_dict`/`model`, prefixes stripped)."""
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else read_state_dict(path)
    except Exception as exc:  # noqa: BLE001 - a bad file surfaces as pickle, zip, safetensors or OS errors
        raise DataError(f"model.init_from {path}: cannot read the weights ({type(exc).__name__}: {exc})") from None
    if path.name == checkpoints.EMA_FILE:
        state = model_weights(state)
    return {checkpoints.plain_key(k): v for k, v in state.items() if isinstance(v, torch.Tensor)}



def check_encoder_matches(report: InitReport, target: dict, weights: dict, encoder: str) -> None:
    """Refuse a source that fits nothing, or whose encoder tensors are not exactly the model's (another encoder).

    A resnet18 file fits a resnet34 model by name and shape where the two share blocks, so the
    encoder's tensor names must be the same set, not merely overlap.
    """
    if not report.loaded:
        raise DataError(f"model.init_from {report.source}: none of its {len(weights)} tensors fits the model "
                        f"(its names start with {list(weights)[:3]}, the model's with {list(target)[:3]})")
    theirs = {k for k in weights if k.startswith("encoder.")}
    ours = {k for k in target if k.startswith("encoder.")}
    reshaped = sorted(k for k in theirs & ours if weights[k].shape != target[k].shape)
    if theirs and (theirs != ours or reshaped):
        example = (f"{reshaped[0]} {tuple(weights[reshaped[0]].shape)} vs {tuple(target[reshaped[0]].shape)}"
                   if reshaped else sorted(theirs ^ ours)[0])
        raise DataError(f"model.init_from {report.source}: its encoder is not the model's {encoder}: "
                        f"{len(ours - theirs)} of the encoder's tensors missing, {len(theirs - ours)} extra, "
                        f"{len(reshaped)} of another shape (e.g. {example})")
