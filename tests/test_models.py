"""Tests for segdist.models: the factory's options and rules (random init, tiny inputs, CPU)."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import timm
import torch
from tiny_models import NUM_CLASSES as TINY_CLASSES
from tiny_models import TINY, input_size, tiny_model
from torch import nn

from segdist.models import ARCHS, SMP_ARCHS, ModelOptionError, build_model, check_model, use_channels_last
from segdist.models.options import MIT_UNSUPPORTED

NUM_CLASSES = 5


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _images(channels: int = 3, size: tuple[int, int] = (64, 64)) -> torch.Tensor:
    return torch.randn(2, channels, *size)


def test_architectures_are_smps_registry_plus_resunet() -> None:
    named = {"unet", "unetplusplus", "manet", "linknet", "fpn", "pspnet", "deeplabv3", "deeplabv3plus", "pan",
             "upernet", "segformer", "dpt"}
    assert set(SMP_ARCHS) == set(smp.MODEL_ARCHITECTURES_MAPPING) == named
    assert ARCHS == (*SMP_ARCHS, "resunet_attention")


@pytest.mark.parametrize("arch", ["unet", "resunet_attention", "segformer", "dpt"])
def test_in_channels(arch: str) -> None:
    model = tiny_model(arch, in_channels=4)
    assert model(_images(channels=4)).shape == (2, TINY_CLASSES, 64, 64)


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
def test_output_stride_sets_deepest_feature_size(arch: str) -> None:
    images = _images()
    deepest_sizes = {}
    for stride in (8, 16):
        model = tiny_model(arch, output_stride=stride).eval()
        with torch.no_grad():
            deepest_sizes[stride] = model.encoder(images)[-1].shape[-2:]
            assert model(images).shape == (2, TINY_CLASSES, 64, 64)
    assert deepest_sizes == {8: (8, 8), 16: (4, 4)}


def test_pan_output_stride() -> None:
    images = _images(size=(256, 256))
    for stride in (16, 32):
        model = tiny_model("pan", output_stride=stride).eval()
        with torch.no_grad():
            assert model.encoder(images)[-1].shape[-2:] == (256 // stride, 256 // stride)


def test_unknown_arch_lists_choices() -> None:
    with pytest.raises(ModelOptionError, match="segnet") as error:
        build_model("segnet", "resnet18", NUM_CLASSES)
    assert error.value.option == "arch"
    for arch in ARCHS:
        assert arch in str(error.value)


def test_unknown_encoder_suggests_close_names() -> None:
    with pytest.raises(ModelOptionError, match="resnt18") as error:
        build_model("unet", "resnt18", NUM_CLASSES)
    assert "resnet18" in str(error.value) and error.value.option == "encoder"


@pytest.mark.parametrize(("arch", "stride", "choices"),
                         [("deeplabv3", 4, "(8, 16)"), ("deeplabv3plus", 32, "(8, 16)"), ("pan", 8, "(16, 32)")])
def test_invalid_output_stride_lists_choices(arch: str, stride: int, choices: str) -> None:
    with pytest.raises(ModelOptionError, match=re.escape(f"output_stride in {choices}")):
        build_model(arch, "resnet18", NUM_CLASSES, output_stride=stride)


def test_unet_ignores_output_stride() -> None:
    model = tiny_model("unet", output_stride=32)
    assert model(_images()).shape == (2, TINY_CLASSES, 64, 64)


@pytest.mark.parametrize("encoder", ["resnet18", "base", "base0"])
def test_resunet_rejects_non_base_encoder(encoder: str) -> None:
    with pytest.raises(ModelOptionError, match="base<width>"):
        build_model("resunet_attention", encoder, NUM_CLASSES)


# (arch, encoder, options, option blamed, words of the message)
INVALID = [
    ("dpt", "resnet18", {}, "encoder", "dpt needs a ViT-like timm encoder"),
    ("unet", "vit_small_patch16_224", {}, "encoder", "it is ViT-like: use arch dpt"),
    ("upernet", "deit_tiny_patch16_224", {}, "encoder", "needs a hierarchical encoder"),
    ("dpt", "vit_small_patch14_dinov2", {}, "encoder", "patch stride 14 does not divide 32"),
    ("unetplusplus", "mit_b0", {}, "encoder", "smp does not build unetplusplus over its MiT"),
    ("linknet", "mit_b1", {}, "encoder", "MiT works with unet, manet, fpn"),
    ("dpt", "mit_b0", {}, "encoder", "smp does not build dpt"),
    ("deeplabv3", "swin_tiny_patch4_window7_224", {}, "encoder", "timm cannot dilate swin_tiny_patch4_window7_224"),
    ("segformer", "mit_b0", {"encoder_kwargs": {"drop_path_rate": 0.1}}, "encoder_kwargs", "MiT encoders"),
    ("unet", "resnet18", {"encoder_kwargs": {"in_chans": 4}}, "encoder_kwargs", "use the in_channels option"),
    ("unet", "resnet18", {"encoder_kwargs": {"decoder_channels": [8]}}, "encoder_kwargs", "put it in arch_kwargs"),
    ("unet", "resnet18", {"encoder_kwargs": {"no_such_option": 1}}, "encoder_kwargs", "'no_such_option'"),
    ("unet", "resnet18", {"encoder_kwargs": ["drop_path_rate"]}, "encoder_kwargs", "must be a mapping"),
    ("unet", "resnet18", {"arch_kwargs": {"classes": 3}}, "arch_kwargs", "set from the dataset's classes"),
    ("fpn", "resnet18", {"arch_kwargs": {"decoder_dropout": 0.5}}, "arch_kwargs", "use decoder_dropout"),
    ("unet", "resnet18", {"arch_kwargs": {"decoder_chanels": [8]}}, "arch_kwargs", "it has encoder_depth"),
    ("resunet_attention", "base8", {"encoder_kwargs": {"drop_path_rate": 0.1}}, "encoder_kwargs", "no encoder_kwargs"),
]


@pytest.mark.parametrize(("arch", "encoder", "options", "option", "words"), INVALID, ids=lambda v: str(v)[:40])
def test_invalid_combinations_fail_before_and_at_build(arch, encoder, options, option, words) -> None:  # noqa: ANN001
    for attempt in (check_model, lambda *a, **kw: build_model(*a, NUM_CLASSES, **kw)):
        with pytest.raises(ModelOptionError, match=words) as error:
            attempt(arch, encoder, **options)
        assert error.value.option == option


def test_mit_rule_matches_what_smp_builds() -> None:
    """smp refuses MiT for exactly the architectures segdist lists; over MiT the others build and run."""
    for arch in SMP_ARCHS:
        if arch in MIT_UNSUPPORTED:
            with pytest.raises(ValueError, match="mit_b0"):
                smp.create_model(arch, "mit_b0", encoder_weights=None)
            continue
        model = build_model(arch, "mit_b0", NUM_CLASSES, arch_kwargs=TINY[arch][2])
        height, width = input_size(arch)
        assert model(torch.randn(2, 3, height, width)).shape == (2, NUM_CLASSES, height, width), arch


@pytest.mark.parametrize(("arch", "encoder", "shape", "words"), [
    ("pan", "resnet18", (2, 3, 64, 64), "Output size is too small"),
    ("upernet", "resnet18", (1, 3, 64, 64), "Expected more than 1 value per channel when training"),
    ("unet", "swin_tiny_patch4_window7_224", (2, 3, 64, 64), "doesn't match model"),
])
def test_dry_run_catches_inputs_the_model_cannot_take(arch: str, encoder: str, shape: tuple, words: str) -> None:
    check_model(arch, encoder, input_shape=(2, 3, 224, 224))  # fine at another shape
    with pytest.raises(ModelOptionError, match=words) as error:
        check_model(arch, encoder, input_shape=shape)
    assert "x".join(map(str, shape)) in str(error.value)


def test_the_dry_run_builds_on_the_meta_device(monkeypatch: pytest.MonkeyPatch) -> None:
    import segdist.models.factory

    built = []
    real = segdist.models.factory._smp_model
    monkeypatch.setattr(segdist.models.factory, "_smp_model",
                        lambda *a, **kw: built.append(real(*a, **kw)) or built[-1])
    check_model("unet", "resnet50", input_shape=(2, 3, 64, 64))
    assert len(built) == 1 and all(p.is_meta for p in built[0].parameters())


def test_encoder_kwargs_reach_timm() -> None:
    model = build_model("unet", "resnet18", NUM_CLASSES, encoder_kwargs={"drop_path_rate": 0.2})
    rates = [m.drop_prob for m in model.encoder.model.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates and max(rates) == pytest.approx(0.2)


# scSE on the skip of U-Net's last block, which has none (0 channels)
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors:UserWarning")
def test_arch_kwargs_reach_smp() -> None:
    model = build_model("unet", "resnet18", NUM_CLASSES, arch_kwargs={"decoder_attention_type": "scse",
                                                                      "decoder_channels": [32, 16, 16, 8, 8]})
    assert model.segmentation_head[1].in_channels == 8
    assert any(type(m).__name__ == "SCSEModule" for m in model.decoder.modules())


def test_dpt_runs_at_any_size_and_trains_every_parameter() -> None:
    model = tiny_model("dpt")
    assert model.encoder.model.dynamic_img_size  # segdist's default for DPT
    model(_images(size=(96, 160))).mean().backward()
    # the ViT's final norm and classifier are gone: DDP refuses parameters without gradients
    assert all(p.grad is not None for p in model.parameters())


def _save_perturbed_checkpoint(state_dict: dict[str, torch.Tensor], path: Path, wrapper: str | None) -> None:
    """Save `state_dict` with every float tensor moved away from any fresh init."""
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            tensor.add_(0.5)
    torch.save(state_dict if wrapper is None else {wrapper: state_dict, "epoch": 3}, path)


# Source key in the classification checkpoint -> key in the smp encoder's network.
RESNET_KEYS = {"conv1.weight": "conv1.weight", "layer4.1.bn2.bias": "layer4.1.bn2.bias"}
# convnext's features-only wrapper renames top-level Sequential children ("stem.0" -> "stem_0").
CONVNEXT_KEYS = {"stem.0.weight": "stem_0.weight", "stages.3.blocks.1.gamma": "stages_3.blocks.1.gamma"}
VIT_KEYS = {"patch_embed.proj.weight": "patch_embed.proj.weight", "blocks.5.mlp.fc2.bias": "blocks.5.mlp.fc2.bias"}
MIT_KEYS = {"patch_embed1.proj.weight": "patch_embed1.proj.weight", "block4.1.mlp.fc2.bias": "block4.1.mlp.fc2.bias"}


@pytest.mark.parametrize(
    ("arch", "encoder", "wrapper", "checked_keys"),
    [
        ("unet", "resnet18", None, RESNET_KEYS),
        ("deeplabv3plus", "resnet18", "state_dict", RESNET_KEYS),
        ("upernet", "convnext_atto", "model", CONVNEXT_KEYS),
        ("dpt", "test_vit", None, VIT_KEYS),
        ("segformer", "mit_b0", "state_dict", MIT_KEYS),
    ],
)
def test_encoder_weights_from_local_checkpoint(
    tmp_path: Path, arch: str, encoder: str, wrapper: str | None, checked_keys: dict[str, str]
) -> None:
    if encoder.startswith("mit_"):  # SegFormer's own classification network, with its head
        source = smp.encoders.get_encoder(encoder, weights=None).state_dict()
        source |= {"head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}
    else:
        source = timm.create_model(encoder).state_dict()
    path = tmp_path / "encoder.pth"
    _save_perturbed_checkpoint(source, path, wrapper)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model(arch, encoder, NUM_CLASSES, encoder_weights=str(path))
    not_loaded = [w for w in caught if "random init" in str(w.message)]
    assert not not_loaded, "some encoder tensors were not loaded"
    loaded = getattr(model.encoder, "model", model.encoder).state_dict()
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


def _dropouts(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Dropout, nn.Dropout2d)) and m.p > 0]


@pytest.mark.parametrize("arch", ARCHS)
def test_decoder_dropout_is_one_dropout_before_the_classifier(arch: str) -> None:
    with_dropout = tiny_model(arch, decoder_dropout=0.3)
    assert [m.p for m in _dropouts(with_dropout)] == [0.3]
    # smp's own defaults (DeepLab ASPP 0.5, FPN and PSP 0.2, DPT 0.1) are off: only decoder_dropout counts.
    without = tiny_model(arch)
    assert _dropouts(without) == []
    assert list(with_dropout.state_dict()) == list(without.state_dict())

    # The dropout runs right before the last convolution (the classifier).
    order = []
    for module in with_dropout.modules():
        if isinstance(module, (nn.Dropout2d, nn.Conv2d)):
            module.register_forward_hook(lambda m, i, o: order.append(m))
    with_dropout.eval()(_images(size=input_size(arch)))
    assert isinstance(order[-2], nn.Dropout2d) and order[-2].p == 0.3
    assert isinstance(order[-1], nn.Conv2d) and order[-1].out_channels == TINY_CLASSES


def test_unet_dropout_sits_before_head_conv() -> None:
    """The head layout segdist's U-Net checkpoints have always had (segmentation_head.1 is the conv)."""
    head = build_model("unet", "resnet18", NUM_CLASSES, decoder_dropout=0.3).segmentation_head
    assert isinstance(head[0], nn.Dropout2d) and isinstance(head[1], nn.Conv2d)


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus", "upernet", "segformer", "resunet_attention"])
def test_channels_last_matches_contiguous(arch: str) -> None:
    model = tiny_model(arch).eval()
    images = _images(size=input_size(arch))
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


@pytest.mark.parametrize(("setting", "device", "precision", "expected"), [
    (None, "cpu", "no", True), (None, "cpu", "bf16", True), (None, "cuda", "no", False),
    (None, "cuda", "bf16", True), (None, "cuda", "fp16", True), (False, "cpu", "no", False),
    (True, "cuda", "no", True)])
def test_channels_last_is_on_where_it_is_faster_unless_set(setting: bool | None, device: str, precision: str,
                                                           expected: bool) -> None:
    assert use_channels_last(setting, device, precision) is expected
