"""Tests for segdist.metrics (dataset-level confusion-matrix metrics) and its two viz charts."""

from __future__ import annotations

import json
import math
import os
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import free_port
from PIL import Image

from segdist.evaluation.metrics import SegmentationMetrics, format_table, metrics_from_confusion
from segdist.utils.viz import confusion_png, per_class_iou_png

IGNORE = 255
NUM_CLASSES = 6
ABSENT_CLASS = 4  # in neither ground truth nor prediction
PREDICTED_ONLY_CLASS = 5  # predicted, never in ground truth
GT_CLASSES = [0, 1, 2, 3]
PRED_CLASSES = [0, 1, 2, 3, PREDICTED_ONLY_CLASS]


def random_batch(rng: np.random.Generator, n: int, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Class-id preds and targets [n, size, size]: ~70% correct, ~10% ignore pixels (with arbitrary preds)."""
    target = rng.choice(GT_CLASSES, size=(n, size, size))
    preds = np.where(rng.random(target.shape) < 0.7, target, rng.choice(PRED_CLASSES, size=target.shape))
    target[rng.random(target.shape) < 0.1] = IGNORE
    return preds.astype(np.int64), target.astype(np.int64)


def random_batches(seed: int, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [random_batch(rng, n) for n in sizes]


def reference_confusion(batches: list[tuple[np.ndarray, np.ndarray]], num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Independent NumPy confusion: bincount of gt * C + pred over the non-ignored pixels."""
    preds = np.concatenate([p.ravel() for p, _ in batches])
    target = np.concatenate([t.ravel() for _, t in batches])
    counted = target != IGNORE
    codes = target[counted] * num_classes + preds[counted]
    return np.bincount(codes, minlength=num_classes**2).reshape(num_classes, num_classes)


def accumulate(batches: list[tuple[np.ndarray, np.ndarray]], num_classes: int = NUM_CLASSES) -> SegmentationMetrics:
    metric = SegmentationMetrics(num_classes, ignore_index=IGNORE)
    for preds, target in batches:
        metric.update(torch.from_numpy(preds), torch.from_numpy(target))
    return metric


def assert_figure(actual: float, expected: float) -> None:
    if math.isnan(expected):
        assert math.isnan(actual)
    else:
        assert actual == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_matches_numpy_reference_with_absent_and_predicted_only_classes():
    batches = random_batches(seed=0, sizes=[2, 3, 1])
    metric = accumulate(batches)

    confusion = metric.confusion()
    assert confusion.dtype == torch.int64 and confusion.shape == (NUM_CLASSES, NUM_CLASSES)
    np.testing.assert_array_equal(confusion.numpy(), reference_confusion(batches))

    result = metric.compute()
    preds = np.concatenate([p.ravel() for p, _ in batches])
    target = np.concatenate([t.ravel() for _, t in batches])
    counted = target != IGNORE
    preds, target = preds[counted], target[counted]
    assert result["pixels"] == counted.sum() and result["num_classes"] == NUM_CLASSES

    expected = {key: [] for key in ("iou", "dice", "precision", "recall")}
    for c in range(NUM_CLASSES):
        tp = np.sum((target == c) & (preds == c))
        fp = np.sum((target != c) & (preds == c))
        fn = np.sum((target == c) & (preds != c))
        with np.errstate(invalid="ignore"):
            expected["iou"].append(np.float64(tp) / (tp + fp + fn))
            expected["dice"].append(np.float64(2 * tp) / (2 * tp + fp + fn))
            expected["precision"].append(np.float64(tp) / (tp + fp))
            expected["recall"].append(np.float64(tp) / (tp + fn))
        for key in expected:
            assert_figure(result["per_class"][str(c)][key], expected[key][c])

    absent = result["per_class"][str(ABSENT_CLASS)]
    assert all(math.isnan(absent[key]) for key in expected)
    assert result["absent_classes"] == [str(ABSENT_CLASS)]
    predicted_only = result["per_class"][str(PREDICTED_ONLY_CLASS)]
    assert predicted_only["iou"] == 0 and predicted_only["precision"] == 0 and math.isnan(predicted_only["recall"])

    present = [c for c in range(NUM_CLASSES) if c != ABSENT_CLASS]
    assert_figure(result["miou"], np.mean([expected["iou"][c] for c in present]))
    assert_figure(result["mdice"], np.mean([expected["dice"][c] for c in present]))
    assert_figure(result["mprecision"], np.mean([expected["precision"][c] for c in present]))
    recalls = [expected["recall"][c] for c in GT_CLASSES]  # predicted-only class has NaN recall
    assert_figure(result["mean_class_accuracy"], np.mean(recalls))
    assert_figure(result["mrecall"], np.mean(recalls))
    assert_figure(result["pixel_accuracy"], np.mean(preds == target))
    np.testing.assert_array_equal(np.array(result["confusion"]), reference_confusion(batches))


def test_logits_give_the_same_as_their_argmax():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, NUM_CLASSES, 8, 8, generator=generator)
    target = torch.randint(0, NUM_CLASSES, (3, 8, 8), generator=generator)
    target[:, :2] = IGNORE

    from_logits = SegmentationMetrics(NUM_CLASSES)
    from_logits.update(logits, target)
    from_ids = SegmentationMetrics(NUM_CLASSES)
    from_ids.update(logits.argmax(dim=1), target)

    np.testing.assert_array_equal(from_logits.confusion().numpy(), from_ids.confusion().numpy())
    assert from_logits.confusion().sum() == (target != IGNORE).sum()


def test_hand_made_two_by_two():
    target = torch.tensor([[[0, 0], [1, 1]]])
    preds = torch.tensor([[[0, 1], [1, 1]]])
    metric = SegmentationMetrics(2)
    metric.update(preds, target)
    result = metric.compute()

    assert result["confusion"] == [[1, 1], [0, 2]]
    assert result["per_class"]["0"] == pytest.approx({"iou": 1 / 2, "dice": 2 / 3, "precision": 1.0, "recall": 1 / 2})
    assert result["per_class"]["1"] == pytest.approx({"iou": 2 / 3, "dice": 4 / 5, "precision": 2 / 3, "recall": 1.0})
    assert result["miou"] == pytest.approx(7 / 12)
    assert result["pixel_accuracy"] == pytest.approx(3 / 4)
    assert result["mean_class_accuracy"] == pytest.approx(3 / 4)
    assert result["absent_classes"] == []


def test_ignored_pixels_never_count_even_with_out_of_range_preds():
    target = torch.tensor([[[0, IGNORE], [1, IGNORE]]], dtype=torch.uint8)
    preds = torch.tensor([[[0, 200], [1, 1]]])  # 200 at an ignored pixel must neither count nor raise
    metric = SegmentationMetrics(2, ignore_index=IGNORE)
    metric.update(preds, target)
    assert metric.confusion().tolist() == [[1, 0], [0, 1]]


def test_out_of_range_ids_are_rejected():
    metric = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.tensor([[[0, 1]]]), torch.tensor([[[0, 7]]]))
    with pytest.raises(ValueError, match="outside"):
        metric.update(torch.tensor([[[0, 3]]]), torch.tensor([[[0, 1]]]))
    with pytest.raises(ValueError, match="shape"):
        metric.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))


def test_gt_only_class_has_iou_zero_and_nan_precision():
    metric = SegmentationMetrics(3)
    metric.update(torch.tensor([[[0, 0]]]), torch.tensor([[[0, 2]]]))  # class 2 missed, class 1 absent
    result = metric.compute()
    assert result["per_class"]["2"]["iou"] == 0 and result["per_class"]["2"]["recall"] == 0
    assert math.isnan(result["per_class"]["2"]["precision"])
    assert result["absent_classes"] == ["1"]
    assert result["miou"] == pytest.approx((1 / 2 + 0) / 2)


def test_dataset_level_not_mean_of_batches():
    all_background = (torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    mostly_wrong = (torch.ones(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 1], [1, 1]]]))
    per_batch = []
    for preds, target in (all_background, mostly_wrong):
        single = SegmentationMetrics(2)
        single.update(preds, target)
        per_batch.append(single.compute()["miou"])
    assert per_batch == pytest.approx([1.0, (0 + 3 / 4) / 2])

    metric = SegmentationMetrics(2)
    for preds, target in (all_background, mostly_wrong):
        metric.update(preds, target)
    dataset_miou = (4 / 5 + 3 / 4) / 2  # confusion [[4, 1], [0, 3]]
    assert metric.compute()["miou"] == pytest.approx(dataset_miou)
    assert abs(np.mean(per_batch) - dataset_miou) > 0.05


def test_reset_and_class_names_and_json():
    metric = accumulate(random_batches(seed=2, sizes=[1]))
    metric.reset()
    assert int(metric.confusion().sum()) == 0

    names = ["road", "car", "sky", "tree", "boat", "bird"]
    result = metrics_from_confusion(reference_confusion(random_batches(seed=3, sizes=[2])), class_names=names)
    assert list(result["per_class"]) == names and result["absent_classes"] == ["boat"]
    round_trip = json.loads(json.dumps(result))
    assert round_trip["confusion"] == result["confusion"] and math.isnan(round_trip["per_class"]["boat"]["iou"])
    with pytest.raises(ValueError):
        metrics_from_confusion(np.eye(3, dtype=np.int64), class_names=["a", "b"])


def test_empty_confusion_gives_nan_not_errors():
    result = metrics_from_confusion(np.zeros((3, 3), dtype=np.int64))
    assert math.isnan(result["miou"]) and math.isnan(result["pixel_accuracy"])
    assert result["absent_classes"] == ["0", "1", "2"] and result["pixels"] == 0


def test_format_table_lists_classes_means_and_absent():
    names = ["road", "car", "sky", "tree", "boat", "bird"]
    result = metrics_from_confusion(reference_confusion(random_batches(seed=4, sizes=[2])), class_names=names)
    table = format_table(result)
    for name in names:
        assert name in table
    assert f"{100 * result['miou']:.2f}" in table and f"{100 * result['pixel_accuracy']:.2f}" in table
    assert "left out of the means" in table and table.splitlines()[-1].endswith("boat")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    batches = random_batches(seed=5, sizes=[2, 1])
    metric = SegmentationMetrics(NUM_CLASSES).to("cuda")
    for preds, target in batches:
        metric.update(torch.from_numpy(preds).cuda(), torch.from_numpy(target).cuda())
    confusion = metric.confusion()
    assert confusion.device.type == "cuda"
    np.testing.assert_array_equal(confusion.cpu().numpy(), reference_confusion(batches))


# --- synchronisation across ranks ---------------------------------------------------------------

RANK_BATCH_SIZES = {0: [2, 1], 1: [3]}  # different numbers of samples per rank



def _sync_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    try:
        metric = accumulate(random_batches(seed=10 + rank, sizes=RANK_BATCH_SIZES[rank]))
        first = metric.confusion().numpy()
        # Local state must be restored after the sync, so accumulating on and syncing again does not double count.
        extra = random_batches(seed=20 + rank, sizes=[1])[0]
        metric.update(torch.from_numpy(extra[0]), torch.from_numpy(extra[1]))
        second = metric.compute()["confusion"]
        np.savez(Path(out_dir) / f"rank{rank}.npz", first=first, second=np.array(second))
    finally:
        dist.destroy_process_group()


def test_confusion_is_summed_across_two_gloo_ranks(tmp_path):
    mp.spawn(_sync_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)

    union = [b for rank in (0, 1) for b in random_batches(seed=10 + rank, sizes=RANK_BATCH_SIZES[rank])]
    extras = [random_batches(seed=20 + rank, sizes=[1])[0] for rank in (0, 1)]
    for rank in (0, 1):
        saved = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(saved["first"], reference_confusion(union))
        np.testing.assert_array_equal(saved["second"], reference_confusion(union + extras))


# --- charts ---------------------------------------------------------------------------------------

def test_charts_write_pngs(tmp_path):
    names = ["road", "car", "sky", "tree", "boat", "bird"]
    confusion = reference_confusion(random_batches(seed=6, sizes=[2]))
    result = metrics_from_confusion(confusion, class_names=names)

    confusion_path, iou_path = tmp_path / "confusion.png", tmp_path / "iou.png"
    confusion_png(confusion, names, confusion_path, title="val")
    per_class_iou_png(result, iou_path, title="val")

    for path in (confusion_path, iou_path):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 200
        assert 5_000 < path.stat().st_size < 2_000_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["confusion.png", "iou.png"]  # no temp files left
