"""Issue 31's recipe options: `train.mixed_precision: auto` (fp32 or bf16, timed on the job), progressive resizing
(`data.resize_schedule`) kept across a resume, and `model.tta` / `model.checkpoint` as evaluate's defaults."""

import json
import re
from types import SimpleNamespace

import pytest
import torch
import yaml
from helpers import run_cli, run_train, synthetic_shards

AUTO_LINE = "train.mixed_precision auto: a step takes"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_cluster):
    return synthetic_shards(tmp_path_factory.mktemp("auto"), images=12, val_images=4, seed=8, width=96, height=64)


def fake_session(model: torch.nn.Module | None = None) -> SimpleNamespace:
    said = []
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1)
    return SimpleNamespace(accelerator=accelerator, cfg=SimpleNamespace(train=SimpleNamespace(mixed_precision="auto")),
                           autocast_precision="no", say=said.append, said=said, model=model)


@pytest.mark.parametrize(("seconds", "expected"), [({"no": 0.4, "bf16": 0.25}, "bf16"),
                                                    ({"no": 0.3, "bf16": 0.5}, "no")])
def test_auto_uses_the_faster_precision_and_records_it(seconds, expected):
    from segdist.training import precision

    s = fake_session()
    measured = precision.choose(s, seconds.__getitem__)
    assert measured == seconds
    assert s.autocast_precision == expected and s.cfg.train.mixed_precision == expected
    assert s.said == [f"{AUTO_LINE} {seconds['no']:.3f} s in fp32, {seconds['bf16']:.3f} s in bf16 -> {expected}"]


def test_the_sessions_bf16_forward_autocasts_and_returns_fp32_logits():
    from segdist.training.session import Session

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 1))
    seen = []
    model[0].register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    s = fake_session(model)
    images = torch.randn(2, 3, 16, 16)
    fp32 = Session.forward(s, images)
    s.autocast_precision = "bf16"
    bf16 = Session.forward(s, images)
    assert seen == [torch.float32, torch.bfloat16]  # the convolution ran in bf16
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)
    torch.testing.assert_close(bf16, fp32, atol=0.05, rtol=0.05)


@pytest.mark.slow
def test_an_auto_budget_run_chooses_in_calibration_keeps_choice_and_stages_on_resume_and_evaluates_with_its_tta(
        shards, tmp_path):
    common = ["train.name=auto", "train.mixed_precision=auto", "data.workers=0", "train.checkpoint_every=2",
              "model.tta=flip", "model.checkpoint=last", "data.resize_schedule=[[0.5,0.5],[1.0,0.5]]"]
    out = run_train(shards, tmp_path, *common, "train.budget=45s")
    assert out.count(AUTO_LINE) == 1 and out.index(AUTO_LINE) < out.index("budget 45s"), out[-3000:]
    config = yaml.safe_load((tmp_path / "auto/config.yaml").read_text())
    chosen, steps = config["train"]["mixed_precision"], config["train"]["max_steps"]  # after the budget's checks
    assert chosen in ("no", "bf16") and f"-> {chosen}" in out
    planned = int(re.search(r"-> (\d+) optimizer steps \(", out).group(1))  # the calibration's plan fixes the stages
    half = round(planned / 2)
    assert f"data.resize_schedule: scale 0.5 for steps 1-{half}, scale 1 for steps {half + 1}-{planned}" in out

    out = run_train(shards, tmp_path, *common, f"train.max_steps={steps + 2}", resume=True)
    assert AUTO_LINE not in out and "resumed from" in out  # the checkpoint's precision, not a new timing
    assert f"scale 1 for steps {half + 1}-{steps + 2}" in out  # the stages stay where the first plan put them
    state = json.loads(next((tmp_path / "auto/checkpoints").glob(f"*{steps + 2}/segdist_state.json")).read_text())
    assert state["precision"] == chosen and state["resize_stages"] == [[0, 0.5], [half, 1.0]]
    assert yaml.safe_load((tmp_path / "auto/config.yaml").read_text())["train"]["mixed_precision"] == chosen
    assert (tmp_path / "auto/checkpoints/best").exists()
    for asked, used in ((), "flip"), (("--tta", "none"), "none"):
        run_cli("evaluate", "--run", tmp_path / "auto", *asked)
        metrics = json.loads((tmp_path / "auto/eval/val/metrics.json").read_text())
        assert metrics["tta"] == used and metrics["checkpoint_step"] == steps + 2  # model.checkpoint: last, not best
        assert f"step_{steps + 2:08d}" in metrics["checkpoint"]


def test_model_checkpoint_is_best_or_last():
    from segdist.config import Config
    from segdist.errors import ConfigError
    from segdist.models.preflight import check_config

    cfg = Config()
    cfg.model.checkpoint = "newest"
    with pytest.raises(ConfigError, match="model.checkpoint 'newest' is not valid; choose one of best, last"):
        check_config(cfg)


def test_a_runs_model_checkpoint_is_never_taken_as_a_path(tmp_path):
    from segdist.errors import ConfigError
    from segdist.runs.run import recipe_checkpoint

    config = SimpleNamespace(model=SimpleNamespace(checkpoint="/elsewhere/model.safetensors"))
    with pytest.raises(ConfigError, match=f"{tmp_path}/config.yaml: model.checkpoint '/elsewhere/model.safetensors'"):
        recipe_checkpoint(tmp_path, config)
    config.model.checkpoint = "last"
    assert recipe_checkpoint(tmp_path, config) == "last"


def test_a_bad_model_tta_in_a_runs_config_is_refused_naming_the_file(tmp_path):
    from pathlib import Path

    from segdist.errors import ConfigError
    from segdist.models.inference import TTA
    from segdist.runs.run import Run

    run = SimpleNamespace(config=SimpleNamespace(model=SimpleNamespace(tta="scales=x")), dir=Path(tmp_path))
    with pytest.raises(ConfigError, match=f"{tmp_path}/config.yaml: model.tta: TTA 'scales=x'"):
        Run.tta(run)
    assert Run.tta(run, TTA(flip=True)) == TTA(flip=True)  # --tta wins without reading model.tta
