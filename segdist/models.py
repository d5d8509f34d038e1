"""Segmentation model factory.

``build_model(arch, encoder, num_classes, ...)`` is the single entry point, in
the spirit of ``timm.create_model``: a plain ``if``/``elif`` over ``ARCHS``.

* ``unet``, ``deeplabv3``, ``deeplabv3plus`` come from segmentation-models-pytorch
  with a timm encoder (``"tu-" + encoder``).
* ``resunet_attention`` is a residual U-Net with a self-attention bottleneck,
  written here in plain PyTorch. Its ``encoder`` argument is ``"base<width>"``
  (e.g. ``"base32"``), the channel width of the first stage; widths double at
  each of the 4 downsampling stages.

Every model maps ``[N, in_channels, H, W]`` to logits ``[N, num_classes, H, W]``
for H and W divisible by 32.
"""

from __future__ import annotations

import difflib
import re
import warnings
from pathlib import Path

import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ARCHS", "build_model", "ResUNetAttention"]

ARCHS = ("unet", "deeplabv3", "deeplabv3plus", "resunet_attention")
DEEPLAB_OUTPUT_STRIDES = (8, 16)


def build_model(
    arch: str,
    encoder: str,
    num_classes: int,
    *,
    encoder_weights: str | None = None,
    output_stride: int = 16,
    decoder_dropout: float = 0.0,
    in_channels: int = 3,
) -> nn.Module:
    """Build a segmentation model returning logits of shape ``[N, num_classes, H, W]``.

    Args:
        arch: one of ``ARCHS``.
        encoder: a timm model name (e.g. ``"resnet18"``), or ``"base<width>"`` for
            ``resunet_attention``.
        num_classes: number of output channels.
        encoder_weights: ``None`` (random init), ``"imagenet"`` (timm's default
            pretrained tag, needs hub access), or the path of a local checkpoint
            holding a timm model's state dict (possibly under ``"state_dict"`` or
            ``"model"``). Not supported by ``resunet_attention``.
        output_stride: 8 or 16, DeepLab models only; ignored by the U-Nets.
        decoder_dropout: dropout probability in the decoder (see ``_build_smp_model``).
        in_channels: number of input channels.
    """
    if arch not in ARCHS:
        raise ValueError(f"Unknown arch {arch!r}; choose one of {', '.join(ARCHS)}.")
    if not 0.0 <= decoder_dropout < 1.0:
        raise ValueError(f"decoder_dropout must be in [0, 1), got {decoder_dropout}.")
    if arch == "resunet_attention":
        if encoder_weights is not None:
            raise ValueError(
                "resunet_attention has no pretrained encoder; use encoder_weights=None."
            )
        return ResUNetAttention(
            in_channels=in_channels,
            num_classes=num_classes,
            base_width=_parse_base_width(encoder),
            decoder_dropout=decoder_dropout,
        )

    _check_timm_encoder(encoder)
    checkpoint = _checkpoint_path(encoder_weights)
    model = _build_smp_model(
        arch,
        encoder,
        num_classes,
        # A local checkpoint is loaded after construction, on a randomly initialised encoder.
        pretrained=encoder_weights == "imagenet",
        output_stride=output_stride,
        decoder_dropout=decoder_dropout,
        in_channels=in_channels,
    )
    if checkpoint is not None:
        _load_encoder_checkpoint(model.encoder.model, checkpoint)
    return model


# --------------------------------------------------------------------------- #
# segmentation-models-pytorch architectures
# --------------------------------------------------------------------------- #


def _build_smp_model(
    arch: str,
    encoder: str,
    num_classes: int,
    *,
    pretrained: bool,
    output_stride: int,
    decoder_dropout: float,
    in_channels: int,
) -> smp.base.SegmentationModel:
    """Build an smp model with the timm encoder ``encoder``.

    Dropout placement: DeepLab models use smp's own ``decoder_aspp_dropout`` (the
    dropout at the end of the ASPP projection, as in the DeepLab papers); U-Net
    gets an ``nn.Dropout2d`` as the first layer of its segmentation head.
    """
    common = dict(
        encoder_name="tu-" + encoder,
        # smp's timm encoders take True/None; the tag lives in the encoder name.
        encoder_weights=True if pretrained else None,
        in_channels=in_channels,
        classes=num_classes,
    )
    if arch == "unet":
        model = smp.Unet(**common)
        # Always present (a no-op at p=0) so state-dict keys do not depend on the dropout.
        model.segmentation_head.insert(0, nn.Dropout2d(decoder_dropout))
        return model

    if output_stride not in DEEPLAB_OUTPUT_STRIDES:
        raise ValueError(
            f"output_stride must be one of {DEEPLAB_OUTPUT_STRIDES} for {arch}, "
            f"got {output_stride}."
        )
    # Pass the dropout explicitly: smp's default ASPP dropout is 0.5, not 0.
    deeplab_args = dict(encoder_output_stride=output_stride, decoder_aspp_dropout=decoder_dropout)
    if arch == "deeplabv3":
        return smp.DeepLabV3(**common, **deeplab_args)
    return smp.DeepLabV3Plus(**common, **deeplab_args)


def _check_timm_encoder(encoder: str) -> None:
    """Raise ``ValueError`` with close matches if timm has no model called ``encoder``."""
    if timm.is_model(encoder):
        return
    suggestions = difflib.get_close_matches(encoder, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
    raise ValueError(f"Unknown timm encoder {encoder!r}.{hint}")


def _checkpoint_path(encoder_weights: str | None) -> Path | None:
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


def _load_encoder_checkpoint(features: nn.Module, path: str | Path) -> None:
    """Load a timm classification checkpoint into a timm ``features_only`` model.

    Keys the features model lacks (the classifier head, unused final stages) are
    skipped. Raises ``ValueError`` when no key matches or a matched tensor has the
    wrong shape (e.g. an RGB stem loaded into a model with ``in_channels != 3``).
    """
    checkpoint = _read_state_dict(Path(path))
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
    features.load_state_dict(matched, strict=False)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
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


# --------------------------------------------------------------------------- #
# Residual U-Net with a self-attention bottleneck
# --------------------------------------------------------------------------- #


def _parse_base_width(encoder: str) -> int:
    """Parse ``"base<width>"`` (e.g. ``"base32"``) into the first-stage width."""
    match = re.fullmatch(r"base(\d+)", encoder)
    if match is None or int(match.group(1)) < 1:
        raise ValueError(
            f"resunet_attention expects encoder='base<width>' such as 'base32', got {encoder!r}."
        )
    return int(match.group(1))


class ResidualBlock(nn.Module):
    """Two 3x3 conv + BatchNorm + SiLU layers with a (1x1-projected when needed) shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        if in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.activation = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.body(x) + self.shortcut(x))


class SelfAttention2d(nn.Module):
    """Pre-norm multi-head self-attention over the H*W positions, with a residual connection."""

    def __init__(self, channels: int, num_heads: int) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"channels ({channels}) must be divisible by num_heads ({num_heads}).")
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        qkv = self.qkv(self.norm(tokens)).reshape(n, h * w, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [N, heads, HW, C/heads]
        attended = F.scaled_dot_product_attention(q, k, v)
        tokens = tokens + self.proj(attended.transpose(1, 2).reshape(n, h * w, c))
        return tokens.transpose(1, 2).reshape(n, c, h, w)


class UpBlock(nn.Module):
    """Bilinear upsampling to the skip's size, concatenation, residual block."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int) -> None:
        super().__init__()
        self.block = ResidualBlock(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.block(torch.cat([x, skip], dim=1))


class ResUNetAttention(nn.Module):
    """Residual U-Net: 4 downsampling stages, attention bottleneck at 1/16, 4 up stages.

    Stage widths are ``base_width * (1, 2, 4, 8, 16)``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        base_width: int = 32,
        num_heads: int = 8,
        decoder_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        widths = [base_width * 2**i for i in range(5)]
        self.stem = ResidualBlock(in_channels, widths[0])
        self.down_stages = nn.ModuleList(
            nn.Sequential(nn.MaxPool2d(2), ResidualBlock(widths[i], widths[i + 1]))
            for i in range(4)
        )
        self.bottleneck = nn.Sequential(
            ResidualBlock(widths[4], widths[4]),
            SelfAttention2d(widths[4], num_heads),
        )
        self.up_stages = nn.ModuleList(
            UpBlock(widths[i + 1], widths[i], widths[i]) for i in reversed(range(4))
        )
        self.dropout = nn.Dropout2d(decoder_dropout)
        self.head = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.stem(x)]
        for down in self.down_stages:
            skips.append(down(skips[-1]))
        x = self.bottleneck(skips.pop())
        for up, skip in zip(self.up_stages, reversed(skips)):
            x = up(x, skip)
        return self.head(self.dropout(x))


def build_from_config(model_cfg, num_classes: int, pretrained: bool = True) -> nn.Module:  # noqa: ANN001
    """The model a config's `model` section describes; pretrained=False skips the encoder weights
    (when a checkpoint follows and replaces every weight anyway)."""
    return build_model(model_cfg.arch, model_cfg.encoder, num_classes,
                       encoder_weights=model_cfg.encoder_weights if pretrained else None,
                       output_stride=model_cfg.output_stride, decoder_dropout=model_cfg.decoder_dropout)
