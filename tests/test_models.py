"""Tests for segdist.models.build_model (random init, tiny inputs, CPU)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from segdist.models import ARCHS, build_model

NUM_CLASSES = 5
# One small encoder per arch keeps the suite fast on CPU.
ARCH_ENCODERS = [
    ("unet", "resnet18"),
    ("deeplabv3", "mobilenetv3_small_100"),
    ("deeplabv3plus", "mobilenetv3_small_100"),
    ("resunet_attention", "base8"),
]


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _images(channels: int = 3) -> torch.Tensor:
    return torch.randn(2, channels, 64, 64)


@pytest.mark.parametrize(("arch", "encoder"), ARCH_ENCODERS)
def test_output_is_per_pixel_logits(arch: str, encoder: str) -> None:
    model = build_model(arch, encoder, NUM_CLASSES)
    assert model(_images()).shape == (2, NUM_CLASSES, 64, 64)


@pytest.mark.parametrize(
    ("arch", "encoder"), [("unet", "resnet18"), ("resunet_attention", "base8")]
)
def test_in_channels(arch: str, encoder: str) -> None:
    model = build_model(arch, encoder, NUM_CLASSES, in_channels=4)
    assert model(_images(channels=4)).shape == (2, NUM_CLASSES, 64, 64)


def test_all_archs_are_covered() -> None:
    assert {arch for arch, _ in ARCH_ENCODERS} == set(ARCHS)


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
def test_output_stride_sets_deepest_feature_size(arch: str) -> None:
    images = _images()
    deepest_sizes = {}
    for stride in (8, 16):
        model = build_model(arch, "resnet18", NUM_CLASSES, output_stride=stride).eval()
        with torch.no_grad():
            deepest_sizes[stride] = model.encoder(images)[-1].shape[-2:]
            assert model(images).shape == (2, NUM_CLASSES, 64, 64)
    assert deepest_sizes == {8: (8, 8), 16: (4, 4)}


def test_unknown_arch_lists_choices() -> None:
    with pytest.raises(ValueError, match="segformer") as error:
        build_model("segformer", "resnet18", NUM_CLASSES)
    for arch in ARCHS:
        assert arch in str(error.value)


def test_unknown_encoder_suggests_close_names() -> None:
    with pytest.raises(ValueError, match="resnt18") as error:
        build_model("unet", "resnt18", NUM_CLASSES)
    assert "resnet18" in str(error.value)


@pytest.mark.parametrize("stride", [4, 32])
def test_invalid_output_stride_lists_choices(stride: int) -> None:
    with pytest.raises(ValueError, match=r"\(8, 16\)"):
        build_model("deeplabv3", "resnet18", NUM_CLASSES, output_stride=stride)


def test_unet_ignores_output_stride() -> None:
    model = build_model("unet", "resnet18", NUM_CLASSES, output_stride=32)
    assert model(_images()).shape == (2, NUM_CLASSES, 64, 64)


@pytest.mark.parametrize("encoder", ["resnet18", "base", "base0"])
def test_resunet_rejects_non_base_encoder(encoder: str) -> None:
    with pytest.raises(ValueError, match="base<width>"):
        build_model("resunet_attention", encoder, NUM_CLASSES)


def _save_perturbed_timm_checkpoint(
    encoder: str, path: Path, wrapper: str | None
) -> dict[str, torch.Tensor]:
    """Save the state dict of a random timm model whose tensors differ from any fresh init."""
    state_dict = timm.create_model(encoder).state_dict()
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            tensor.add_(0.5)
    torch.save(state_dict if wrapper is None else {wrapper: state_dict, "epoch": 3}, path)
    return state_dict


# Source key in the timm checkpoint -> key in smp's features-only encoder.
RESNET_KEYS = {"conv1.weight": "conv1.weight", "layer4.1.bn2.bias": "layer4.1.bn2.bias"}
# convnext's features-only wrapper renames top-level Sequential children ("stem.0" -> "stem_0").
CONVNEXT_KEYS = {
    "stem.0.weight": "stem_0.weight",
    "stages.3.blocks.1.gamma": "stages_3.blocks.1.gamma",
}


@pytest.mark.parametrize(
    ("encoder", "wrapper", "checked_keys"),
    [
        ("resnet18", None, RESNET_KEYS),
        ("resnet18", "state_dict", RESNET_KEYS),
        ("convnext_atto", "model", CONVNEXT_KEYS),
    ],
)
def test_encoder_weights_from_local_checkpoint(
    tmp_path: Path, encoder: str, wrapper: str | None, checked_keys: dict[str, str]
) -> None:
    path = tmp_path / "encoder.pth"
    source = _save_perturbed_timm_checkpoint(encoder, path, wrapper)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model("unet", encoder, NUM_CLASSES, encoder_weights=str(path))
    not_loaded = [w for w in caught if "random init" in str(w.message)]
    assert not not_loaded, "some encoder tensors were not loaded"
    loaded = model.encoder.model.state_dict()
    for source_key, encoder_key in checked_keys.items():
        torch.testing.assert_close(loaded[encoder_key], source[source_key], rtol=0, atol=0)


def test_encoder_weights_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(ValueError, match="not found"):
        build_model("unet", "resnet18", NUM_CLASSES, encoder_weights=str(missing))


def test_encoder_weights_without_matching_keys(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"backbone.conv.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="No key"):
        build_model("deeplabv3plus", "resnet18", NUM_CLASSES, encoder_weights=str(path))


def _dropout_rates(model: nn.Module) -> list[float]:
    dropouts = (m for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d)))
    return [m.p for m in dropouts if m.p > 0]


@pytest.mark.parametrize(("arch", "encoder"), ARCH_ENCODERS)
def test_decoder_dropout(arch: str, encoder: str) -> None:
    assert _dropout_rates(build_model(arch, encoder, NUM_CLASSES, decoder_dropout=0.3)) == [0.3]
    # smp's DeepLab default ASPP dropout is 0.5: decoder_dropout=0 must really turn it off.
    assert _dropout_rates(build_model(arch, encoder, NUM_CLASSES)) == []


def test_unet_dropout_sits_before_head_conv() -> None:
    head = build_model("unet", "resnet18", NUM_CLASSES, decoder_dropout=0.3).segmentation_head
    assert isinstance(head[0], nn.Dropout2d) and isinstance(head[1], nn.Conv2d)


@pytest.mark.parametrize(("arch", "encoder"), ARCH_ENCODERS)
def test_channels_last_matches_contiguous(arch: str, encoder: str) -> None:
    model = build_model(arch, encoder, NUM_CLASSES).eval()
    images = _images()
    with torch.no_grad():
        expected = model(images)
        model = model.to(memory_format=torch.channels_last)
        actual = model(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_resunet_attention_weights_get_gradients() -> None:
    model = build_model("resunet_attention", "base8", NUM_CLASSES)
    model(_images()).square().mean().backward()
    attention = model.bottleneck[-1]
    for param in (attention.qkv.weight, attention.proj.weight, attention.norm.weight):
        assert param.grad is not None
        assert torch.isfinite(param.grad).all()
        assert param.grad.abs().sum() > 0
