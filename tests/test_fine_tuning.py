"""Fine-tuning: init_from (run, checkpoint, safetensors, nested .pth), freezing, per-part LRs, the LR floor."""

import json
import shutil

import pytest
import torch
import yaml
from helpers import launcher, run_cli, run_train, synthetic_shards, train_log
from safetensors.torch import load_file, save_file

from segdist.config import OptimConfig, load_config
from segdist.errors import DataError
from segdist.models import build_from_config, build_model
from segdist.runs.init_from import init_from
from segdist.training.optim import build_optimizer, build_scheduler, refit_schedule


@pytest.fixture(scope="module")
def datasets(tmp_path_factory, ray_cluster):
    """The same synthetic COCO prepared twice: person, bicycle, car (4 classes) and person, car (3 classes)."""
    root = tmp_path_factory.mktemp("fine_tuning")
    four = synthetic_shards(root, images=24, val_images=6, seed=2, width=120, height=96, shard_size=6)
    for split in ("train", "val"):
        run_cli("prepare", "coco", "--images", root / "raw" / split, "--annotations",
                root / "raw" / "annotations" / f"instances_{split}.json", "--classes", "person,car", "--split",
                split, "--out", root / "three", "--shard-size", "6")
    return four, root / "three"


@pytest.fixture(scope="module")
def source_run(datasets, tmp_path_factory):
    """A 4-class run of 3 steps with an EMA: its best checkpoint holds the EMA's weights."""
    runs = tmp_path_factory.mktemp("source_runs")
    run_train(datasets[0], runs, "train.max_steps=3", "train.name=source", "train.ema_decay=0.5", "data.workers=0")
    return runs / "source"


def encoder_tensors(state: dict) -> dict:
    return {k: v for k, v in state.items() if k.startswith("encoder.")}


def three_class_model(source_run):
    cfg = load_config(source_run / "config.yaml")
    return cfg, build_from_config(cfg.model, 3, pretrained=False)


def assert_encoder_from(model, weights: dict) -> None:
    state = model.state_dict()
    assert encoder_tensors(state).keys() == encoder_tensors(weights).keys()
    assert all(torch.equal(state[k], v) for k, v in encoder_tensors(weights).items())


def test_init_from_a_run_loads_its_best_ema_weights_and_reinitialises_the_head_for_another_class_count(source_run):
    cfg, model = three_class_model(source_run)
    report = init_from(model, source_run, cfg.model.arch, cfg.model.encoder)
    ema = {k.removeprefix("module."): v for k, v in load_file(source_run / "checkpoints/best/ema.safetensors").items()}
    assert_encoder_from(model, ema)
    assert report.weights.endswith("ema.safetensors")
    head = [k for k in model.state_dict() if k.startswith("segmentation_head") and k.endswith("weight")]
    assert set(head) <= set(report.reinitialised) and set(head) <= set(report.ignored)
    assert report.to_dict()["loaded"] == len(model.state_dict()) - len(report.reinitialised)


def test_init_from_a_checkpoint_directory_a_safetensors_file_and_an_mmseg_style_pth(source_run, tmp_path):
    cfg, _ = three_class_model(source_run)
    step = source_run / "checkpoints/step_00000003"
    weights = load_file(step / "model.safetensors")
    save_file(weights, tmp_path / "plain.safetensors")
    torch.save({"meta": {"epoch": 3}, "state_dict": {f"module.{k}": v for k, v in weights.items()}},
               tmp_path / "mmseg.pth")
    ema = {k.removeprefix("module."): v for k, v in load_file(step / "ema.safetensors").items()}
    # a checkpoint of a run that kept an EMA gives the EMA, as load_run does; a file gives what it holds
    for source, expected in ((step, ema), (tmp_path / "plain.safetensors", weights), (tmp_path / "mmseg.pth", weights)):
        _, model = three_class_model(source_run)
        report = init_from(model, source, cfg.model.arch, cfg.model.encoder)
        assert_encoder_from(model, expected)
        assert any(k.startswith("segmentation_head") for k in report.reinitialised), source


def test_init_from_a_run_takes_the_checkpoint_its_config_names(source_run, tmp_path):
    """A run whose model.checkpoint is `last` gives its last step, as `segdist evaluate --run` does."""
    run = tmp_path / "run"
    shutil.copytree(source_run, run)
    best = run / "checkpoints/best/ema.safetensors"
    save_file({k: torch.zeros_like(v) for k, v in load_file(best).items()}, best)  # best now differs from last
    cfg, model = three_class_model(run)
    init_from(model, run, cfg.model.arch, cfg.model.encoder)
    assert all(not v.any() for k, v in encoder_tensors(model.state_dict()).items() if "weight" in k)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["checkpoint"] = "last"
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    _, model = three_class_model(run)
    report = init_from(model, run, cfg.model.arch, cfg.model.encoder)
    last = load_file(run / "checkpoints/step_00000003/ema.safetensors")
    assert_encoder_from(model, {k.removeprefix("module."): v for k, v in last.items()})
    assert "step_00000003" in report.weights


def test_init_from_refuses_another_architecture_or_encoder_naming_both(source_run, tmp_path):
    cfg, _ = three_class_model(source_run)
    with pytest.raises(DataError, match=r"holds unet over encoder test_resnet, this run builds fpn over encoder"):
        init_from(build_model("fpn", "test_resnet", 3), source_run, "fpn", "test_resnet")
    save_file(build_model("unet", "resnet18", 3).state_dict(), tmp_path / "r18.safetensors")
    with pytest.raises(DataError, match="its encoder is not the model's resnet34"):
        init_from(build_model("unet", "resnet34", 3), tmp_path / "r18.safetensors", "unet", "resnet34")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="none of its 1 tensors fits"):
        init_from(build_model("unet", "test_resnet", 3), tmp_path / "other.pt", "unet", "test_resnet")


def test_a_pickled_object_in_a_weights_file_is_refused_not_run(source_run, tmp_path):
    class Payload:
        def __reduce__(self):
            return (open, (str(tmp_path / "ran"), "w"))

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pth")
    cfg, model = three_class_model(source_run)
    with pytest.raises(DataError, match="cannot read the weights"):
        init_from(model, tmp_path / "evil.pth", cfg.model.arch, cfg.model.encoder)
    assert not (tmp_path / "ran").exists()


def test_parameter_groups_scale_the_encoder_lr_and_keep_norms_and_biases_out_of_weight_decay():
    model = build_model("unet", "resnet18", 3)
    optimizer = build_optimizer(OptimConfig(lr=0.01, encoder_lr_scale=0.1, weight_decay=0.05), model, "resnet18")
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {f"{part}/{kind}" for part in ("encoder", "decoder", "segmentation_head")
                           for kind in ("decay", "no_decay")}
    assert groups["encoder/decay"]["lr"] == pytest.approx(0.001) and groups["decoder/decay"]["lr"] == 0.01
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay = [names[id(p)] for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
    assert no_decay and all(n.endswith("bias") or model.get_parameter(n).ndim == 1 for n in no_decay)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    flat = build_optimizer(OptimConfig(decay_norm_bias=True), model, "resnet18")
    assert [g["name"] for g in flat.param_groups] == ["encoder/decay", "decoder/decay", "segmentation_head/decay"]


def test_layer_decay_orders_a_cnn_encoder_inside_smps_feature_extractor_by_depth():
    model = build_model("unet", "convnext_atto", 3)
    optimizer = build_optimizer(OptimConfig(lr=1.0, layer_decay=0.5), model, "convnext_atto")
    lr = {n: g["lr"] for g in optimizer.param_groups for n, p in model.named_parameters()
          if any(p is q for q in g["params"])}
    stem, last = lr["encoder.model.stem_0.weight"], lr["encoder.model.stages_3.blocks.1.conv_dw.weight"]
    middle = lr["encoder.model.stages_1.blocks.0.conv_dw.weight"]
    assert stem < middle < last == 1.0 == lr["decoder.blocks.0.conv1.0.weight"]


def test_every_group_decays_to_min_lr_as_mmseg_poly_does():
    model = build_model("unet", "test_resnet", 3)
    o = OptimConfig(lr=0.01, encoder_lr_scale=0.1, min_lr=1.0e-4, scheduler="poly", poly_power=0.9)
    optimizer = build_optimizer(o, model, "test_resnet")
    scheduler = build_scheduler(o, optimizer, 10)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    halfway = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert halfway["decoder/decay"] == pytest.approx((0.01 - 1e-4) * 0.5 ** 0.9 + 1e-4)
    assert halfway["encoder/decay"] == pytest.approx((0.001 - 1e-4) * 0.5 ** 0.9 + 1e-4)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    assert all(g["lr"] == pytest.approx(1e-4) for g in optimizer.param_groups)


@pytest.mark.slow
def test_init_from_with_a_frozen_encoder_then_resume_across_the_unfreeze_on_another_process_count(
        datasets, source_run, tmp_path):
    """2 processes: init_from the 4-class run, frozen for 3 steps (bit-identical, BatchNorm statistics
    included), encoder LR 0.1x; then the run resumed from step 2 on 1 process trains the encoder from step 3."""
    source = {k.removeprefix("module."): v
              for k, v in load_file(source_run / "checkpoints/best/ema.safetensors").items()}
    common = [f"model.init_from={source_run}", "model.freeze_encoder=3", "optim.encoder_lr_scale=0.1",
              "train.max_steps=6", "train.checkpoint_every=2", "train.keep_last=5", "train.name=tuned"]
    out = run_train(datasets[1], tmp_path, *common, launch=launcher())
    run = tmp_path / "tuned"
    assert "segdist: init_from" in out and "the encoder trains from step 3 on" in out
    report = json.loads((run / "init_from.json").read_text())
    assert report["loaded"] > 0 and any(n.startswith("segmentation_head") for n in report["reinitialised_names"])
    at = {step: load_file(run / f"checkpoints/step_{step:08d}/model.safetensors") for step in (2, 4)}
    assert all(torch.equal(at[2][k], v) for k, v in encoder_tensors(source).items())  # weights and BN statistics
    assert not all(torch.equal(at[4][k], v) for k, v in encoder_tensors(source).items())
    optimizer = torch.load(run / "checkpoints/step_00000004/optimizer.bin", weights_only=True)
    names = [g["name"] for g in optimizer["param_groups"]]
    assert "encoder/decay" in names and "decoder/no_decay" in names
    assert {g["name"]: g["lr_scale"] for g in optimizer["param_groups"]}["encoder/decay"] == pytest.approx(0.1)

    for step in (4, 6):
        import shutil
        shutil.rmtree(run / f"checkpoints/step_{step:08d}")
    out = run_train(datasets[1], tmp_path, *common, resume=True)
    assert "resumed from" in out and "step_00000002" in out and "the encoder trains from step 3 on" in out
    assert [e["step"] for e in train_log(run)] == [1, 2, 3, 4, 5, 6]
    resumed = load_file(run / "checkpoints/step_00000004/model.safetensors")
    assert not all(torch.equal(resumed[k], v) for k, v in encoder_tensors(source).items())


def test_a_budgets_refitted_schedule_moves_every_groups_lr_not_only_the_first():
    model = build_model("unet", "test_resnet", 3)
    o = OptimConfig(lr=0.01, encoder_lr_scale=0.1, scheduler="poly")
    optimizer = build_optimizer(o, model, "test_resnet")
    scheduler = build_scheduler(o, optimizer, 100)
    refit_schedule(scheduler, o, 100, [[0, 50]])  # a budget's re-plan: 50 steps instead of 100
    for _ in range(25):
        optimizer.step()
        scheduler.step()
    expected = 0.5 ** 0.9
    assert all(g["lr"] == pytest.approx(g["initial_lr"] * expected) for g in optimizer.param_groups)


@pytest.mark.slow
def test_a_budget_checks_its_pace_only_on_steps_that_train_the_encoder_as_calibrated(datasets, tmp_path):
    """A freeze that ends mid-run is off at calibration; its faster frozen steps timed as the pace
    made the first check plan far more steps than fit (3870 -> 5582 on CamVid)."""
    import re

    from segdist.training.budget import PACE_UPDATES

    unfreeze = 30
    out = run_train(datasets[0], tmp_path, "train.budget=45s", f"model.freeze_encoder={unfreeze}", "data.workers=0",
                    "data.epoch_samples=12", "optim.warmup_steps=0", "train.name=frozen_budget")
    checks = [int(at) for at in re.findall(r"budget check at step (\d+)", out)]
    assert checks and min(checks) >= unfreeze + PACE_UPDATES, (checks, out[-2000:])
