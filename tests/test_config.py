"""Recipes in configs/ load, validate and build; overrides and the saved config round-trip."""

import re
from pathlib import Path

import pytest
import torch

from segdist.config import ConfigError, load_config, parse_override, save_config
from segdist.models import build_from_config
from segdist.models.preflight import check_config


def checked(path, overrides=()):
    """A config as `segdist train` takes it: loaded, then the model stack's pre-flight check."""
    return check_config(load_config(path, list(overrides)))

RECIPES = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def _header(recipe: Path) -> str:
    """A recipe's leading comment: what it reproduces and how it differs."""
    lines = recipe.read_text().splitlines()
    return "\n".join(line for line in lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))])


def test_there_is_a_recipe_per_prior_report_and_reference():
    headers = {p.name: _header(p) for p in RECIPES}
    sources = {f"prior report {n:03d}": f"Prior report {n:03d}" for n in range(5)}
    sources |= {"torchvision's reference": "torchvision's reference recipe",
                "MMSegmentation's reference": "MMSegmentation's"}
    for source, words in sources.items():
        assert [name for name, header in headers.items() if header.startswith(f"# {words}")], \
            f"no recipe in configs/ whose header starts with {words!r} ({source})"
    # the recipe table of docs/training.md lists every recipe, and only those
    training = (RECIPES[0].parents[1] / "docs" / "training.md").read_text()
    table = training[training.index("| recipe | what |"):].split("\n\n")[0]
    assert sorted(re.findall(r"^\| `([^`]+\.yaml)` \|", table, re.M)) == sorted(headers) and "demo.yaml" in headers


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_builds_a_model(recipe):
    cfg = load_config(recipe, ["model.encoder_weights=null"])  # no model hub here
    model = build_from_config(cfg.model, 5).eval()
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
        checked(None, ["model.encoder=resnet17"])


def test_scientific_notation_is_a_float_in_overrides_and_files(tmp_path):
    # YAML 1.1 reads 1e-4 (no dot) as the string '1e-4'; torch then fails deep inside the optimizer.
    assert load_config(None, ["optim.lr=1e-4"]).optim.lr == 1e-4
    recipe = tmp_path / "r.yaml"
    recipe.write_text("optim:\n  lr: 3E-5\n  weight_decay: 1e-2\ntrain:\n  name: 2024\n")
    cfg = load_config(recipe)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.train.name) == (3e-5, 1e-2, "2024")
    assert isinstance(cfg.optim.lr, float)


def test_yaml_1_1_booleans_stay_strings():
    # YAML 1.1 reads `no`, `on`, `off`, `yes` as booleans: `mixed_precision: no` would be False
    assert load_config(None, ["train.mixed_precision=no", "train.name=on"]).train.mixed_precision == "no"
    assert load_config(None, ["train.name=off"]).train.name == "off"
    assert load_config(None, ["model.channels_last=true"]).model.channels_last is True


def _wrong_value(hint):
    """A value no member of the field's type accepts: 'fast' for a float, '1.5' for an int, ..."""
    import typing

    members = [m for m in (typing.get_args(hint) or (hint,)) if m is not type(None)]
    if len(members) == 1 and members[0] in (float, int, bool):
        return {float: "fast", int: "1.5", bool: "maybe"}[members[0]]
    if any(typing.get_origin(m) is dict for m in members):
        return [1, 2]
    if str in members:
        return {"a": 1}  # str accepts numbers (a run named 2024), never a mapping
    return "not-a-list"  # list fields


def _field_cases():
    """(section.key, a value of the wrong type, the type's description) for every field of every section."""
    import dataclasses
    import typing

    from segdist.config import Config
    from segdist.config.coerce import describe

    for section in dataclasses.fields(Config):
        for key, hint in typing.get_type_hints(type(getattr(Config(), section.name))).items():
            yield f"{section.name}.{key}", _wrong_value(hint), describe(hint)


@pytest.mark.parametrize("key,bad,expected", list(_field_cases()), ids=lambda v: str(v)[:30])
def test_every_field_refuses_a_value_of_the_wrong_type_naming_key_value_and_type(key, bad, expected):
    import yaml

    override = f"{key}={yaml.safe_dump(bad, default_flow_style=True).strip()}"
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    message = str(err.value)
    assert key in message and repr(bad) in message and expected in message, message


def test_values_are_coerced_to_their_field_types():
    cfg = load_config(None, ["data.batch_size=4.0", "optim.grad_clip=1", "data.crop_size=[64, 96.0]",
                             "data.base_size=null", "loss.class_weights=[1, 2]", "loss.class_weights=inverse"])
    assert cfg.data.batch_size == 4 and isinstance(cfg.data.batch_size, int)
    assert cfg.optim.grad_clip == 1.0 and isinstance(cfg.optim.grad_clip, float)
    assert cfg.data.crop_size == [64, 96] and cfg.data.base_size is None
    assert cfg.loss.class_weights == "inverse"
    assert load_config(None, ["loss.class_weights=[1, 2]"]).loss.class_weights == [1.0, 2.0]
    for bad in ("train.epochs=true", "model.channels_last=1", "data.hflip=[0.5]", "data.crop_size=64"):
        with pytest.raises(ConfigError, match="is not a valid"):
            load_config(None, [bad])


def test_every_smp_architecture_is_a_valid_arch():
    for arch, encoder in [("segformer", "mit_b0"), ("upernet", "convnext_tiny"), ("dpt", "vit_small_patch16_224"),
                          ("unetplusplus", "efficientnet_b0"), ("pan", "resnet50")]:
        cfg = checked(None, [f"model.arch={arch}", f"model.encoder={encoder}", "data.crop_size=[256, 256]"])
        assert cfg.model.arch == arch
    with pytest.raises(ConfigError, match="model.arch 'segnet' is not valid; choose one of unet, unetplusplus"):
        checked(None, ["model.arch=segnet"])


def test_model_options_pass_through_and_round_trip(tmp_path):
    cfg = load_config(None, ["model.encoder_kwargs={drop_path_rate: 0.1}", "model.encoder=resnet18",
                             "model.arch_kwargs={decoder_attention_type: scse}"])
    assert cfg.model.encoder_kwargs == {"drop_path_rate": 0.1}
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").model.arch_kwargs == {"decoder_attention_type": "scse"}
    model = build_from_config(cfg.model, 5)
    assert any(type(m).__name__ == "DropPath" and m.drop_prob > 0 for m in model.modules())
    assert any(type(m).__name__ == "SCSEModule" for m in model.modules())


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.arch=dpt"], "model.encoder: dpt needs a ViT-like timm encoder"),
    (["model.arch=linknet", "model.encoder=mit_b0"], "model.encoder: smp does not build linknet over its MiT"),
    (["model.encoder_kwargs={in_chans: 4}"], "model.encoder_kwargs: 'in_chans' is set by segdist and smp"),
    (["model.encoder_kwargs=0.1"], "model.encoder_kwargs = 0.1 is not a valid mapping"),
    (["model.arch_kwargs={activation: softmax}"], "model.arch_kwargs: 'activation' cannot be set here"),
    (["model.arch=deeplabv3", "model.output_stride=32"],
     "model.output_stride: deeplabv3 takes output_stride in (8, 16)"),
    (["model.arch=deeplabv3plus", "data.batch_size=1", "data.crop_size=[64, 64]"],
     "model.arch: deeplabv3plus over encoder resnet34 cannot run on a 1x3x64x64 input: Expected more than 1 value"),
    (["model.arch=pan", "data.crop_size=[64, 64]"], "model.arch: pan over encoder resnet34 cannot run on a 8x3x64x64"),
])
def test_model_errors_name_the_option_at_load(overrides, message):
    with pytest.raises(ConfigError) as error:
        checked(None, overrides)
    assert message in str(error.value)


def test_the_config_names_no_consumer_and_train_checks_the_model_before_any_work(tmp_path, capsys):
    # loading alone takes any model name (config imports no model code); `segdist train` refuses it at once
    assert load_config(None, ["model.arch=segnet"]).model.arch == "segnet"
    from segdist.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "model.arch=segnet", f"train.runs_dir={tmp_path}"])
    assert exit_.value.code == 2
    assert "model.arch 'segnet' is not valid" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run directory, nothing written
