"""Recipes in configs/ load, validate and build; overrides and the saved config round-trip."""

from pathlib import Path

import pytest
import torch

from segdist.config import ConfigError, load_config, parse_override, save_config
from segdist.train import build_for_config

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_is_a_recipe_per_prior_report_and_reference():
    names = {p.stem for p in RECIPES}
    assert len(names) >= 8 and "demo" in names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_a_model(recipe):
    cfg = load_config(recipe, ["model.encoder_weights=null"])  # no model hub here
    model = build_for_config(cfg, 5).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 5, 64, 64)


def test_overrides_and_round_trip(tmp_path):
    cfg = load_config(RECIPES[0], ["optim.lr=0.5", "data.crop_size=[64, 96]", "model.encoder_weights=null"])
    assert cfg.optim.lr == 0.5 and cfg.data.crop_size == [64, 96]
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").to_dict() == cfg.to_dict()
    assert parse_override("train.name=a=b") == {"train": {"name": "a=b"}}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("lr=3")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="model.encoder: Unknown timm encoder 'resnet17'"):
        load_config(None, ["model.encoder=resnet17"])


def test_every_smp_architecture_is_a_valid_arch():
    for arch, encoder in [("segformer", "mit_b0"), ("upernet", "convnext_tiny"), ("dpt", "vit_small_patch16_224"),
                          ("unetplusplus", "efficientnet_b0"), ("pan", "resnet50")]:
        cfg = load_config(None, [f"model.arch={arch}", f"model.encoder={encoder}", "data.crop_size=[256, 256]"])
        assert cfg.model.arch == arch
    with pytest.raises(ConfigError, match="model.arch 'segnet' is not valid; choose one of unet, unetplusplus"):
        load_config(None, ["model.arch=segnet"])


def test_model_options_pass_through_and_round_trip(tmp_path):
    cfg = load_config(None, ["model.encoder_kwargs={drop_path_rate: 0.1}", "model.encoder=resnet18",
                             "model.arch_kwargs={decoder_attention_type: scse}"])
    assert cfg.model.encoder_kwargs == {"drop_path_rate": 0.1}
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").model.arch_kwargs == {"decoder_attention_type": "scse"}
    model = build_for_config(cfg, 5)
    assert any(type(m).__name__ == "DropPath" and m.drop_prob > 0 for m in model.modules())
    assert any(type(m).__name__ == "SCSEModule" for m in model.modules())


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.arch=dpt"], "model.encoder: dpt needs a ViT-like timm encoder"),
    (["model.arch=linknet", "model.encoder=mit_b0"], "model.encoder: smp does not build linknet over its MiT"),
    (["model.encoder_kwargs={in_chans: 4}"], "model.encoder_kwargs: 'in_chans' is set by segdist and smp"),
    (["model.encoder_kwargs=0.1"], "model.encoder_kwargs: must be a mapping"),
    (["model.arch_kwargs={activation: softmax}"], "model.arch_kwargs: 'activation' cannot be set here"),
    (["model.arch=deeplabv3", "model.output_stride=32"],
     "model.output_stride: deeplabv3 takes output_stride in (8, 16)"),
    (["model.arch=deeplabv3plus", "data.batch_size=1", "data.crop_size=[64, 64]"],
     "model.arch: deeplabv3plus over encoder resnet34 cannot run on a 1x3x64x64 input: Expected more than 1 value"),
    (["model.arch=pan", "data.crop_size=[64, 64]"], "model.arch: pan over encoder resnet34 cannot run on a 8x3x64x64"),
])
def test_model_errors_name_the_option_at_load(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert message in str(error.value)
