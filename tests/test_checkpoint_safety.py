"""Issue 27: a checkpoint holds safetensors and JSON (the optimizer: weights-only torch data), and
`--resume` never unpickles anything that can run code; unrestorable RNG states stop the resume
unless `--resume-inexact` says the run goes on."""

import builtins
import shutil
from pathlib import Path

import pytest
import torch
from helpers import run_train, synthetic_shards

RUN = ["train.max_steps=2", "train.checkpoint_every=2", "data.workers=0", "train.name=r"]
STEP = "checkpoints/step_00000002"


class Payload:
    """Unpickled without restriction, creates `marker` (a stand-in for any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return builtins.open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_cluster):
    return synthetic_shards(tmp_path_factory.mktemp("safety"), images=12, val_images=4, seed=6, width=96,
                            height=64, keep_empty=True)


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    run_train(shards, runs, *RUN)
    return runs / "r"


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A copy of the trained run, free to tamper with."""
    return Path(shutil.copytree(trained, tmp_path / "r", symlinks=True))


def bomb(file: Path, marker: Path) -> None:
    torch.save({"state": Payload(marker)}, file)


def test_a_checkpoint_holds_only_safetensors_json_and_a_weights_only_optimizer_file(trained):
    files = sorted(p.name for p in (trained / STEP).iterdir())
    assert "random_states_0.json" in files and "scheduler.json" in files and "model.safetensors" in files
    assert {Path(f).suffix for f in files} <= {".safetensors", ".json", ".bin"}, files
    assert [f for f in files if f.endswith(".bin")] == ["optimizer.bin"]
    assert torch.load(trained / STEP / "optimizer.bin", weights_only=True)["param_groups"]


def test_a_pickle_bomb_named_like_accelerates_scheduler_file_is_never_loaded(shards, run, tmp_path):
    marker = tmp_path / "ran"
    bomb(run / STEP / "custom_checkpoint_0.pkl", marker)
    out = run_train(shards, run.parent, *RUN, resume=True)
    assert "resumed from" in out and "at step 2" in out
    assert not marker.exists()
    torch.load(run / STEP / "custom_checkpoint_0.pkl", weights_only=False)  # the payload is real
    assert marker.exists()


@pytest.mark.parametrize("name", ["optimizer.bin", "random_states_0.pkl"])
def test_a_pickled_payload_in_a_state_file_runs_nothing_and_fails_the_resume_naming_the_file(
        shards, run, tmp_path, name):
    marker = tmp_path / "ran"
    failing = run / STEP / name
    if name.startswith("random_states"):  # accelerate's pickled RNG file in place of the JSON one: never read
        failing = run / STEP / "random_states_0.json"
        failing.unlink()
        listed = run / STEP / "segdist_complete.json"
        listed.write_text(listed.read_text().replace("random_states_0.json", name))
    bomb(run / STEP / name, marker)
    out = run_train(shards, run.parent, *RUN, resume=True, expect=2)
    assert f"{failing}: cannot restore" in out
    assert not marker.exists()


def test_unreadable_random_states_fail_the_resume_naming_the_file_and_resume_inexact_goes_on_saying_so(
        shards, run):
    rng = run / STEP / "random_states_0.json"
    rng.write_text('{"python": [3, [1, 2], null], "numpy": "truncated')
    out = run_train(shards, run.parent, *RUN, resume=True, expect=2)
    assert f"{rng}: cannot restore the random states" in out and "--resume-inexact" in out
    assert "resumed from" not in out

    out = run_train(shards, run.parent, *RUN, "--resume-inexact", resume=True)
    assert out.count("continuing with freshly seeded random states") == 1
    assert str(rng) in out and "the sample order and each sample's augmentation are kept" in out
    assert "resumed from" in out and "at step 2" in out
