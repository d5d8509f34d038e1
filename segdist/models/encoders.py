"""Encoder names for the smp architectures: timm models, smp's own MiT, their feature strides, local checkpoints.

An encoder is a timm model name (``resnet50``, ``convnext_tiny``, ``vit_small_patch16_224``, with an
optional pretrained tag ``name.tag``), passed to smp as ``"tu-" + name``, or one of smp's own Mix
Transformer encoders (``mit_b0`` .. ``mit_b5``, SegFormer's original backbones, which timm lacks).
"""

from __future__ import annotations

import difflib
import warnings
from pathlib import Path

import timm
import torch
from segmentation_models_pytorch.encoders.mix_transformer import mix_transformer_encoders
from torch import nn

MIT_ENCODERS = tuple(mix_transformer_encoders)  # mit_b0 .. mit_b5

# smp's TimmUniversalEncoder takes timm models whose feature maps halve stage by stage, starting at
# stride 2 (CNNs), 4 (ConvNeXt, Swin, ...) or 1 (VGG); DPT takes ViT-like models, one stride throughout.
HIERARCHICAL_STARTS = (1, 2, 4)


def is_mit(encoder: str) -> bool:
    return encoder in MIT_ENCODERS


def smp_encoder_name(encoder: str) -> str:
    """The name smp's factory expects: MiT names as they are, timm models as ``"tu-" + name``."""
    return encoder if is_mit(encoder) else "tu-" + encoder


def smp_encoder_weights(encoder: str, pretrained: bool) -> str | bool | None:
    """smp's ``encoder_weights``: ``"imagenet"`` for MiT; True for timm (the tag is in the name); None for random."""
    if not pretrained:
        return None
    return "imagenet" if is_mit(encoder) else True


def check_encoder_name(encoder: str) -> None:
    """Raise ``ValueError`` with close matches if ``encoder`` is neither a timm model nor an smp MiT."""
    if is_mit(encoder) or timm.is_model(encoder):
        return
    names = [*timm.list_models(), *MIT_ENCODERS]
    suggestions = difflib.get_close_matches(encoder, names, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    raise ValueError(f"Unknown timm encoder {encoder!r}.{hint}")


def feature_strides(encoder: str) -> list[int] | None:
    """The stride of each of a timm model's feature maps (``feature_info``), read without allocating weights.

    None when timm cannot build the model on PyTorch's meta device or it declares no feature maps.
    """
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = timm.create_model(encoder, pretrained=False)
        return [int(info["reduction"]) for info in model.feature_info]
    except Exception:  # noqa: BLE001 (any failure here only means "cannot tell"; the real build reports it)
        return None


def is_hierarchical(strides: list[int]) -> bool:
    """Strides that double stage by stage from 1, 2 or 4, as smp's TimmUniversalEncoder requires."""
    return any(strides == [start * 2**i for i in range(len(strides))] for start in HIERARCHICAL_STARTS)


def is_vit_like(strides: list[int]) -> bool:
    """One stride for every block: a plain (ViT-like) transformer, what smp's DPT takes."""
    return len(set(strides)) == 1


def encoder_module(model: nn.Module) -> nn.Module:
    """The timm (or MiT) network inside an smp model's encoder wrapper."""
    return getattr(model.encoder, "model", model.encoder)


def checkpoint_path(encoder_weights: str | None) -> Path | None:
    """Return the local checkpoint named by ``encoder_weights``, or None for random/imagenet."""
    if encoder_weights is None or encoder_weights == "imagenet":
        return None
    path = Path(encoder_weights)
    if not path.is_file():
        raise ValueError(
            f"Encoder checkpoint not found: {str(path)!r} "
            "(encoder_weights must be None, 'imagenet' or the path of a local file)."
        )
    return path


def load_encoder_checkpoint(features: nn.Module, path: str | Path) -> None:
    """Load a classification checkpoint (timm or MiT) into an smp encoder's network.

    Keys the encoder lacks (the classifier head, unused final stages) are skipped. Raises
    ``ValueError`` when no key matches or a matched tensor has the wrong shape (e.g. an RGB stem
    loaded into a model with ``in_channels != 3``).
    """
    checkpoint = read_state_dict(Path(path))
    target = features.state_dict()
    matched: dict[str, torch.Tensor] = {}
    wrong_shape: list[str] = []
    for key, tensor in checkpoint.items():
        target_key = _features_key(key, target)
        if target_key is None:
            continue
        if target[target_key].shape != tensor.shape:
            wrong_shape.append(f"{key} {tuple(tensor.shape)} vs {tuple(target[target_key].shape)}")
            continue
        matched[target_key] = tensor

    if not matched:
        raise ValueError(
            f"No key of {str(path)!r} matches the encoder "
            f"(checkpoint keys start with {list(checkpoint)[:3]}, "
            f"encoder keys with {list(target)[:3]})."
        )
    if wrong_shape:
        raise ValueError(f"Shape mismatch loading {str(path)!r}: {'; '.join(wrong_shape[:5])}.")
    missing = [key for key in target if key not in matched]
    if missing:
        warnings.warn(
            f"{len(missing)} encoder tensors not in {str(path)!r} keep their random init, "
            f"e.g. {missing[:3]}.",
            stacklevel=3,
        )
    # nn.Module's own method: smp's MiT overrides load_state_dict without a `strict` argument.
    nn.Module.load_state_dict(features, matched, strict=False)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict, unwrapping ``{"state_dict": ...}``/``{"model": ...}`` and DDP prefixes."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper_key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper_key), dict):
            checkpoint = checkpoint[wrapper_key]
            break
    return {key.removeprefix("module."): value for key, value in checkpoint.items()}


def _features_key(key: str, target: dict[str, torch.Tensor]) -> str | None:
    """The key under which timm's features-only wrapper stores the full model's ``key``.

    ``FeatureListNet`` flattens top-level ``nn.Sequential`` children ("stem.0.weight"
    becomes "stem_0.weight"); ``FeatureGetterNet`` nests the model under "model.".
    """
    for candidate in (key, key.replace(".", "_", 1), "model." + key):
        if candidate in target:
            return candidate
    return None
