"""A time budget, the EMA of the weights and training on several splits."""

import json
import re

import numpy as np
import pytest
import torch
import yaml
from helpers import launcher, rank_lines, run_train, synthetic_shards, train_log
from safetensors.numpy import load_file

from segdist.config import OptimConfig
from segdist.config.schema import parse_duration
from segdist.training.budget import Costs, steps_that_fit
from segdist.training.optim import lr_factor


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_cluster):
    root = tmp_path_factory.mktemp("options")
    return synthetic_shards(root, images=24, val_images=8, seed=2, width=128, height=96,
                            shard_size=5, keep_empty=True)


def test_durations_read_as_seconds():
    assert [parse_duration(t) for t in ("50m", "1h30m", "90s", "2h", "3600", "02:30:00", "1-00:00:00", "45:00")] == \
        [3000, 5400, 90, 7200, 3600, 9000, 86400, 2700]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("fifty minutes")


def test_the_step_count_is_the_largest_that_fits_with_its_validations_and_checkpoints():
    costs = Costs(step=1.0, validation=10.0, checkpoint=2.0)
    n = steps_that_fit(1000, costs, per_epoch_updates=100, val_every=1, checkpoint_every=0)

    def cost(steps):  # written out independently: validations and checkpoints per epoch, plus the final ones
        epochs = steps // 100
        return steps * 1.0 + (epochs + 1) * 10.0 + (epochs + epochs + 1 + 1) * 2.0

    assert cost(n) <= 1000 < cost(n + 1)
    # planned again after 250 steps: 500 s for steps 251..m, their validations, checkpoints and the final ones
    m = steps_that_fit(500, costs, per_epoch_updates=100, val_every=1, checkpoint_every=0, done=250)
    assert cost(m) - cost(250) + 10.0 + 2.0 * 2 <= 500 < cost(m + 1) - cost(250) + 10.0 + 2.0 * 2


def test_a_refitted_schedule_is_continuous_and_ends_at_the_new_last_step():
    poly = OptimConfig(scheduler="poly", poly_power=0.9)
    refitted = lr_factor(poly, 100, [[50, 75]])  # after step 50, the remaining 50 steps' decay in 25
    for step in (0, 30, 50, 60, 74, 75):
        expected = (1 - step / 100) ** 0.9 if step <= 50 else (1 - (50 + (step - 50) * 2) / 100) ** 0.9
        assert refitted(step) == pytest.approx(expected), step
    warm = OptimConfig(scheduler="cosine", warmup_steps=10)
    at_warmup_end = lr_factor(warm, 100, [[10, 60]])  # refitted where the decay begins: the plain schedule
    assert all(at_warmup_end(s) == pytest.approx(lr_factor(warm, 60)(s)) for s in range(61))
    twice = lr_factor(poly, 100, [[20, 80], [40, 50]])
    assert twice(50) == pytest.approx(0.0) and twice(40) == pytest.approx(lr_factor(poly, 100, [[20, 80]])(40))


def lr_decay_is_continuous(log: list[dict]) -> bool:
    """After the warmup no step changes the LR by more than twice the larger change beside it.

    A re-plan may steepen the decay (a kink); a schedule restarted mid-decay for a new step count
    jumps (at step 60 of a poly decay cut from 400 to 200 steps: 0.90 -> 0.79 of the peak, where
    a step changes it by about 0.003).
    """
    lrs = [e["lr"] for e in log]
    decay = lrs[lrs.index(max(lrs)):]
    changes = [abs(a - b) for a, b in zip(decay, decay[1:])]
    beside = [0.0, *changes, 0.0]
    return all(change <= 2 * max(beside[i], beside[i + 2]) + 1e-12 for i, change in enumerate(changes))


@pytest.mark.slow
def test_a_budget_sets_max_steps_that_fit_even_when_the_machine_slows_down_and_resume_keeps_them(shards, tmp_path):
    common = ["train.budget=60s", "data.epoch_samples=16", "data.workers=0", "train.checkpoint_every=4"]
    # from step 40 on every training step is slower than calibrated: a later check re-plans
    out = run_train(shards, tmp_path, *common, "train.name=b", env={"SEGDIST_FAULT": "slow_step@40+"})
    planned = int(re.search(r"-> (\d+) optimizer steps", out).group(1))
    chosen = yaml.safe_load((tmp_path / "b/config.yaml").read_text())["train"]["max_steps"]
    summary = json.loads((tmp_path / "b/summary.json").read_text())
    cuts = [(int(at), int(was), int(now)) for at, was, now in
            re.findall(r"budget check at step (\d+): .* was (\d+), now (\d+) optimizer steps", out)]
    assert any(at > 40 and now < was for at, was, now in cuts), out[-3000:]
    assert summary["steps"] == chosen < planned, summary
    assert summary["elapsed_s"] <= 60 * 1.15, summary  # calibration, training, validations and checkpoints
    log = train_log(tmp_path / "b")
    assert log[-1]["lr"] == pytest.approx(0.0, abs=1e-12) and lr_decay_is_continuous(log)
    # interrupted after a re-plan, a budget run resumes to the same step count on the same bent schedule
    shorter = [*common, "train.budget=30s"]
    out = run_train(shards, tmp_path, *shorter, "train.name=c", env={"SEGDIST_FAULT": "slow_step@21+,sigusr1@45"})
    assert re.search(r"budget check at step (2|4)0: .* was \d+, now", out), out[-3000:]
    chosen_c = yaml.safe_load((tmp_path / "c/config.yaml").read_text())["train"]["max_steps"]
    out = run_train(shards, tmp_path, *shorter, "train.name=c", resume=True)
    assert "a step takes" not in out and "budget check" not in out  # the count and schedule come from the checkpoint
    assert yaml.safe_load((tmp_path / "c/config.yaml").read_text())["train"]["max_steps"] == chosen_c
    assert json.loads((tmp_path / "c/summary.json").read_text())["steps"] == chosen_c
    log = train_log(tmp_path / "c")
    assert [e["step"] for e in log] == list(range(1, chosen_c + 1)) and lr_decay_is_continuous(log)
    assert log[-1]["lr"] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.slow
def test_every_rank_plans_the_same_steps_when_the_processes_started_at_different_times(shards, tmp_path):
    # rank 1 counts 30 s more since its start (a slower node): planning from its own clock, it chose
    # fewer steps than rank 0 and the job broke in mismatched collectives at the end
    out = run_train(shards, tmp_path, "train.budget=35s", "data.epoch_samples=16", "data.workers=0",
                    "train.name=skew", "train.collective_timeout=30", launch=launcher(),
                    env={"SEGDIST_FAULT": "late_start#1"})
    chosen = yaml.safe_load((tmp_path / "skew/config.yaml").read_text())["train"]["max_steps"]
    ranks = rank_lines(out)
    assert len(ranks) == 2 and ranks[0]["steps"] == ranks[1]["steps"] == chosen, out[-3000:]


def test_the_ema_follows_the_update_rule_with_buffers():
    from segdist.runs.ema import make_ema, model_weights

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
    ema = make_ema(model, 0.9)
    expected = None
    for i in range(4):
        with torch.no_grad():
            model[0].weight.add_(float(i + 1))
        model(torch.randn(2, 3, 4, 4))  # moves the BatchNorm running statistics
        current = {k: v.clone().float() for k, v in model.state_dict().items()}
        ema.update_parameters(model)
        expected = current if expected is None else {k: 0.9 * expected[k] + 0.1 * current[k] for k in current}
    averaged = model_weights(ema.state_dict())
    for key in ("0.weight", "1.running_mean", "1.running_var"):
        assert torch.allclose(averaged[key].float(), expected[key], atol=1e-6), key


@pytest.mark.slow
def test_with_ema_validation_best_and_evaluate_use_the_average(shards, tmp_path):
    run_train(shards, tmp_path, "train.max_steps=6", "data.epoch_samples=16", "data.workers=0", "train.name=e",
              "train.ema_decay=0.8")
    checkpoint = tmp_path / "e/checkpoints/step_00000006"
    raw, ema = load_file(str(checkpoint / "model.safetensors")), load_file(str(checkpoint / "ema.safetensors"))
    key = next(k for k in raw if k.endswith("weight"))
    assert not np.array_equal(raw[key], ema["module." + key.removeprefix("module.")])
    from segdist.evaluation.evaluate import evaluate

    report = evaluate(tmp_path / "e", checkpoint="last", workers=0)
    assert report["checkpoint"].endswith("ema.safetensors")
    assert report["miou"] == json.loads((tmp_path / "e/summary.json").read_text())["last_miou"]


def test_training_on_two_splits_reads_both_and_combines_their_statistics(shards):
    from segdist.config import load_config
    from segdist.data.info import load_dataset_info
    from segdist.data.plan import Shape, plan_for
    from segdist.format.class_stats import class_weights
    from segdist.training.optim import build_criterion

    info = load_dataset_info(shards)
    cfg = load_config(None, [f"data.shards={shards}", "data.train_split=[train, val]", "data.batch_size=4",
                             "loss.name=weighted_ce", "loss.class_weights=inverse"])
    train, val = info.split("train"), info.split("val")
    plan = plan_for(cfg.data, info, 0, Shape(4, 1, 1))
    assert plan.samples_per_epoch == (train["samples"] + val["samples"]) // 4 * 4  # both splits, whole batches
    expected = sorted(str(shards / s["name"]) for s in train["shards"] + val["shards"])
    assert sorted(plan.index.urls) == expected
    combined = {k: (np.asarray(train[k]) + np.asarray(val[k])).tolist()
                for k in ("class_pixels", "class_image_pixels")}
    weights = build_criterion(cfg, info).loss.weight
    assert torch.allclose(weights, torch.tensor(class_weights(combined, "inverse")))
    assert not torch.allclose(weights, torch.tensor(class_weights(train, "inverse")))


def test_sync_bn_is_converted_for_gpus_and_refused_with_its_fix_on_cpu_processes():
    from types import SimpleNamespace

    from segdist.distributed import sync_batchnorm
    from segdist.errors import DataError

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.BatchNorm2d(2))
    cpu = torch.device("cpu")
    assert sync_batchnorm(SimpleNamespace(num_processes=1, device=cpu), model) is model
    # on gloo CPU processes torch would fail only at the first forward, naming neither option nor fix
    with pytest.raises(DataError, match=r"model.sync_bn needs GPUs.*set model.sync_bn=false for the 2 cpu"):
        sync_batchnorm(SimpleNamespace(num_processes=2, device=cpu), model)
    converted = sync_batchnorm(SimpleNamespace(num_processes=2, device=torch.device("cuda")), model)
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)  # the conversion itself needs no GPU
