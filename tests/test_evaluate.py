"""`segdist evaluate` on a real 2-step run: 1 vs 2 processes, an independent reference, modes, outputs, errors.

Runs compared for exact equality use the same per-forward batch size and one thread each:
float32 convolutions give bitwise-equal results for a sample only under those conditions,
and a 1e-6 difference can flip the argmax of a pixel whose two best classes tie.
"""

import json
import math
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import free_port, read_shards, run_cli

from segdist.data.augment import eval_transform
from segdist.evaluation.metrics import format_table, metrics_from_confusion
from segdist.evaluation.report import with_class_accuracy, write_outputs
from segdist.models.inference import infer
from segdist.runs.run import load_run

REPO = Path(__file__).resolve().parents[1]
CLASSES = 4
IGNORE = 255


@contextmanager
def one_thread():
    """The arithmetic of an `accelerate launch`ed process (torchrun sets OMP_NUM_THREADS=1)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def evaluate(run: Path, *args) -> dict:
    """In-process `segdist evaluate ...`; returns the metrics.json it wrote."""
    with one_thread():
        run_cli("evaluate", "--run", run, *args)
    return json.loads((run / "eval/val/metrics.json").read_text())



def _without(metrics: dict, *keys: str) -> dict:
    return {k: v for k, v in metrics.items() if k not in keys}


@pytest.mark.slow
def test_two_processes_give_the_same_matrix_and_figures_as_one(tiny_run, capsys):
    # batch 1 in both: a sample's logits then come from the same kernels (oneDNN's differ with the batch
    # size by a few ulps, enough to flip a pixel at a tie), so the matrices must agree exactly
    one = evaluate(tiny_run, "--batch-size", "1", "--workers", "0")
    val = json.loads((Path(one["shards"]) / "dataset.json").read_text())["splits"]["val"]
    # uneven shards, and 13 samples leave a remainder over world size x batch size = 2
    assert [s["samples"] for s in val["shards"]] == [5, 5, 3] and val["samples"] % 2 == 1
    events_before = set((tiny_run / "tb").glob("events.out.tfevents.*"))

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "launch/cpu-2proc.yaml"),
              "--main_process_port", str(free_port()), "-m", "segdist", "evaluate", "--run", str(tiny_run),
              "--batch-size", "1", "--workers", "1", "--tensorboard"]
    result = subprocess.run(launch, capture_output=True, text=True, timeout=300, cwd=REPO,
                            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    two = json.loads((tiny_run / "eval/val/metrics.json").read_text())

    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["samples"] == one["samples"] == val["samples"] == 13
    assert two["confusion"] == one["confusion"]
    assert _without(two, "world_size") == _without(one, "world_size")
    # only the main process prints the table and writes: one new event file, no temporary files
    assert result.stdout.count("mIoU ") == 1 and "WARNING" not in result.stderr
    assert len(set((tiny_run / "tb").glob("events.out.tfevents.*")) - events_before) == 1
    assert sorted(p.name for p in (tiny_run / "eval/val").iterdir()) == [
        "confusion.png", "metrics.json", "per_class_iou.png"]


@pytest.mark.slow
def test_matches_an_independent_reference(tiny_run):
    """Confusion rebuilt sample by sample from the shards with NumPy: every sample once, labels at full size."""
    report = evaluate(tiny_run, "--batch-size", "1")
    run = load_run(tiny_run)
    normalize, transform = run.normalizer(), eval_transform(run.eval_size)
    confusion = np.zeros((CLASSES, CLASSES), np.int64)
    samples = read_shards(Path(report["shards"]), "val")
    for sample in samples:
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(sample["image_bytes"], np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
        image = torch.from_numpy(transform(image=rgb)["image"].transpose(2, 0, 1).copy())[None]
        label = sample["label"]
        assert image.shape[-2:] == (48, 64) and label.shape == (60, 80)  # scored at the label's resolution
        with one_thread():
            probs = infer(run.model_on(torch.device("cpu")), normalize(image))  # the layout evaluate uses
        pred = F.interpolate(probs, size=label.shape, mode="bilinear", align_corners=False).argmax(1)[0].numpy()
        counted = label != IGNORE
        confusion += np.bincount(label[counted].astype(np.int64) * CLASSES + pred[counted],
                                 minlength=CLASSES**2).reshape(CLASSES, CLASSES)

    assert report["samples"] == len(samples) == 13
    assert report["pixels"] == sum(int((s["label"] != IGNORE).sum()) for s in samples)
    np.testing.assert_array_equal(np.array(report["confusion"]), confusion)
    tp, gt, pred = np.diag(confusion), confusion.sum(1), confusion.sum(0)
    iou = tp / (gt + pred - tp)
    assert report["miou"] == pytest.approx(iou.mean())
    assert report["mdice"] == pytest.approx((2 * tp / (gt + pred)).mean())
    assert report["pixel_accuracy"] == pytest.approx(tp.sum() / confusion.sum())
    assert report["mean_class_accuracy"] == pytest.approx((tp / gt).mean())
    for i, name in enumerate(run.classes):
        figures = report["per_class"][name]
        assert figures["iou"] == pytest.approx(iou[i]) and figures["precision"] == pytest.approx(tp[i] / pred[i])
        assert figures["recall"] == figures["accuracy"] == pytest.approx(tp[i] / gt[i])
    assert report["checkpoint"].endswith("checkpoints/best/model.safetensors") and report["checkpoint_step"] == 2


@pytest.mark.slow
def test_slide_with_a_window_covering_the_image_equals_whole(tiny_run):
    whole = evaluate(tiny_run, "--batch-size", "2")
    # images are 64x48 at inference: one 64x64 window (the image padded up to it), as whole pads to 64x64
    slide = evaluate(tiny_run, "--batch-size", "2", "--mode", "slide", "--crop", "64", "64", "--stride", "32", "32")
    assert slide["confusion"] == whole["confusion"]
    assert (slide["mode"], slide["crop"], slide["stride"]) == ("slide", [64, 64], [32, 32])
    small = evaluate(tiny_run, "--mode", "slide", "--crop", "32", "32", "--stride", "16", "24")
    assert small["samples"] == 13 and small["pixels"] == whole["pixels"]


@pytest.mark.slow
def test_tta_and_tensorboard(tiny_run, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    report = evaluate(tiny_run, "--tta", "scales=0.75,1.0,flip", "--tensorboard")
    assert report["tta"] == "scales=0.75,1,flip" and report["samples"] == 13
    out = capsys.readouterr().out
    assert "mIoU " in out and "TensorBoard: logged under 'eval/val' at step 2" in out
    events = max((tiny_run / "tb").glob("events.out.tfevents.*"), key=os.path.getmtime)
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    (miou,) = acc.Scalars("eval/val/miou")
    assert miou.step == 2 and miou.value == pytest.approx(report["miou"])
    assert f"eval/val/iou/{load_run(tiny_run).classes[1]}" in acc.Tags()["scalars"]
    assert {"eval/val/confusion", "eval/val/per_class_iou"} <= set(acc.Tags()["images"])


def test_absent_classes_are_nan_written_as_null_and_left_out_of_the_means(tmp_path):
    names = ["background", "person", "bicycle", "car"]
    confusion = np.array([[50, 5, 0, 0], [10, 30, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])  # bicycle, car absent
    report = {"run": "runs/x", "split": "val", "samples": 3,
              **with_class_accuracy(metrics_from_confusion(confusion, names))}
    write_outputs(report, tmp_path)

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    written = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert written["absent_classes"] == ["bicycle", "car"]
    assert set(written["per_class"]["car"].values()) == {None}
    assert written["miou"] == pytest.approx((50 / 65 + 30 / 45) / 2)
    assert math.isnan(report["per_class"]["car"]["iou"])
    assert "NaN, left out of the means): bicycle, car" in format_table(report)
    assert (tmp_path / "confusion.png").stat().st_size and (tmp_path / "per_class_iou.png").stat().st_size


def test_checkpoint_choices_and_user_errors(tiny_run, tmp_path, capsys):
    last = evaluate(tiny_run, "--checkpoint", "last")
    assert last["checkpoint"].endswith("step_00000002/model.safetensors")
    by_path = evaluate(tiny_run, "--checkpoint", tiny_run / "checkpoints/step_00000002")
    assert by_path["confusion"] == last["confusion"]
    capsys.readouterr()
    cases = [
        (["--checkpoint", "nope"], "Complete checkpoints in"),
        (["--split", "test"], "has no split 'test'"),
        (["--mode", "slide", "--crop", "32", "32"], "--mode slide needs --crop H W and --stride H W"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit):
            run_cli("evaluate", "--run", tiny_run, *args)
        assert message in capsys.readouterr().err, args
    with pytest.raises(SystemExit):
        run_cli("evaluate", "--run", tmp_path)
    assert "is not a segdist run: config.yaml is missing" in capsys.readouterr().err


def test_the_model_runs_channels_last_on_cpu_unless_the_run_says_otherwise(tiny_run):
    run = load_run(tiny_run)
    conv = next(m for m in run.model_on(torch.device("cpu")).modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    run.config.model.channels_last = False
    conv = next(m for m in run.model_on(torch.device("cpu")).modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous()
