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
