"""Issue 26: the launcher's precision is obeyed, and a run directory belongs to one run."""

import hashlib
import json
import sys
from pathlib import Path

import pytest
import yaml
from helpers import REPO, SMALL, run_cli, run_train, synthetic_shards, train_log

OVERRIDE = "segdist: train.mixed_precision=no overrides the launcher's bf16"


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_cluster):
    return synthetic_shards(tmp_path_factory.mktemp("run_dir"), images=12, val_images=4, seed=6, width=96,
                            height=64, keep_empty=True)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one process-wide state: each Accelerator here starts from none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root` with the SHA-256 of its bytes (directories: 'dir')."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def test_make_accelerator_takes_the_launchers_precision_unless_told_otherwise_and_says_so_once(
        monkeypatch, capsys, fresh_accelerate_state):
    from accelerate.state import AcceleratorState

    from segdist.distributed import make_accelerator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert make_accelerator().mixed_precision == "bf16"
    assert "overrides" not in capsys.readouterr().out
    AcceleratorState._reset_state(True)
    assert make_accelerator(mixed_precision="no").mixed_precision == "no"
    assert capsys.readouterr().out.count(OVERRIDE) == 1
    AcceleratorState._reset_state(True)
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION")
    assert make_accelerator().mixed_precision == "no"  # a plain process: fp32


def test_evaluate_and_predict_use_the_launchers_precision_under_accelerate_launch_else_the_runs(monkeypatch):
    from segdist.distributed import inference_precision

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    assert [inference_precision(p) for p in ("bf16", "no", None)] == ["bf16", "no", "no"]
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    assert [inference_precision(p) for p in ("bf16", "no", None)] == ["fp16", "fp16", "fp16"]


def test_an_old_run_config_that_says_no_still_loads():
    from segdist.config import load_config

    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"
    assert load_config(None).train.mixed_precision is None


def test_resume_is_a_flag_and_overrides_after_it_stay_overrides():
    from segdist.cli import build_parser

    parse = build_parser().parse_args
    args = parse(["train", "--config", "x.yaml", "--resume", "train.max_steps=10"])
    assert (args.resume, args.resume_from, args.overwrite) == (True, None, False)
    assert args.overrides == ["train.max_steps=10"]
    args = parse(["train", "--config", "x.yaml", "--resume-from", "runs/a/checkpoints/step_00000004", "optim.lr=0.1"])
    assert (args.resume, args.resume_from) == (False, "runs/a/checkpoints/step_00000004")
    assert args.overrides == ["optim.lr=0.1"]
    args = parse(["train", "--overwrite", "train.name=a"])
    assert args.overwrite and args.overrides == ["train.name=a"]
    with pytest.raises(SystemExit):
        parse(["train", "--resume", "--overwrite"])


def test_a_new_run_into_a_directory_with_checkpoints_is_refused_and_touches_nothing(shards, tmp_path, capsys):
    old = tmp_path / "runs" / "taken"
    (old / "checkpoints" / "step_00000002").mkdir(parents=True)
    (old / "checkpoints" / "step_00000002" / "model.safetensors").write_bytes(b"weights")
    (old / "train_log.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (old / "dataset.json").write_text("{}")
    before = snapshot(old)
    with pytest.raises(SystemExit) as exit_:
        run_cli("train", "--config", REPO / "configs/demo.yaml", f"data.shards={shards}",
                f"train.runs_dir={tmp_path / 'runs'}", "train.name=taken", *SMALL)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert all(word in err for word in ("--resume", "--overwrite", "train.name=taken")), err
    assert snapshot(old) == before


@pytest.mark.slow
def test_the_launchers_bf16_is_recorded_and_an_explicit_no_wins_and_is_said_once(shards, tmp_path):
    config = tmp_path / "one.yaml"  # one process; the flag below overrides this file's precision
    config.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: 'NO'\nnum_machines: 1\n"
                      "num_processes: 1\nmixed_precision: 'no'\ndynamo_backend: 'NO'\n")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
              "--num_processes", "1", "--mixed_precision", "bf16"]
    common = ["train.max_steps=2", "data.workers=0"]
    out = run_train(shards, tmp_path, *common, "train.name=launcher", launch=launch)
    assert yaml.safe_load((tmp_path / "launcher/config.yaml").read_text())["train"]["mixed_precision"] == "bf16"
    assert "overrides the launcher" not in out
    out = run_train(shards, tmp_path, *common, "train.name=recipe", "train.mixed_precision=no", launch=launch)
    assert yaml.safe_load((tmp_path / "recipe/config.yaml").read_text())["train"]["mixed_precision"] == "no"
    assert out.count(OVERRIDE) == 1


@pytest.mark.slow
def test_a_run_directory_is_refused_then_resumed_with_overrides_then_overwritten(shards, tmp_path):
    common = ["train.name=one", "data.workers=0"]
    run = tmp_path / "one"
    run_train(shards, tmp_path, *common, "train.max_steps=2")
    assert (run / "config.yaml").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["mixed_precision"] == "no"  # a plain process
    before = snapshot(run)
    out = run_train(shards, tmp_path, *common, "train.max_steps=3", expect=2)
    assert "--resume" in out and "--overwrite" in out and "train.name=one" in out
    assert snapshot(run) == before
    out = run_train(shards, tmp_path, *common, "--resume", "train.max_steps=3")  # overrides on both sides of it
    assert "resumed from" in out and "at step 2" in out
    assert [e["step"] for e in train_log(run)] == [1, 2, 3]
    assert json.loads((run / "summary.json").read_text())["steps"] == 3
    run_train(shards, tmp_path, *common, "train.max_steps=1", overwrite=True)
    assert [e["step"] for e in train_log(run)] == [1]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000001"]
