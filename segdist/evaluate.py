"""`segdist evaluate`: exact dataset-level metrics of a run's checkpoint on one split, on one or many processes.

Every process reads its share of the split (`eval_loader`: each sample exactly once, whatever
the world size, batch size or shard layout), predicts at the label's resolution and adds to
its own C x C confusion matrix; the matrices are summed across processes once at the end and
every figure comes from that one matrix. Only the main process writes, under
`runs/NAME/eval/<split>/`: metrics.json, confusion.png and per_class_iou.png. With
`output_format="cityscapes"` every process also writes each prediction it scores as a Cityscapes
labelIds PNG into `results_dir` (see cityscapes_results), for cityscapesScripts' evaluator.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from segdist.cityscapes_results import ResultWriter, check_cityscapes_dataset, check_format, stray_results
from segdist.data import DatasetInfo, eval_loader, load_dataset_info
from segdist.distributed import agree, make_accelerator
from segdist.inference import NO_TTA, TTA, check_mode
from segdist.manifest import write_json_atomic
from segdist.metrics import SegmentationMetrics, format_table, metrics_from_confusion
from segdist.runs import Run, load_run
from segdist.scoring import score
from segdist.sources.common import DataError

NAN_NOTE = (
    "null is NaN (0/0): all figures of a class absent from both ground truth and prediction (absent_classes), "
    "the precision of a class never predicted, the recall/accuracy of a class not in the ground truth. "
    "NaN figures are left out of every mean."
)


def evaluate(run_dir: str | Path, *, checkpoint: str = "best", split: str | None = None,
             shards: str | Path | None = None, mode: str = "whole", crop: Sequence[int] | None = None,
             stride: Sequence[int] | None = None, tta: TTA = NO_TTA, batch_size: int | None = None,
             workers: int | None = None, tensorboard: bool = False, output_format: str = "segdist",
             results_dir: str | Path | None = None) -> dict:
    """Evaluate `run_dir`'s checkpoint on `split` of `shards` (default: the run's val split and shards).

    Returns the report written to metrics.json (on every process; only the main one writes it).
    `output_format="cityscapes"` also writes the predictions as Cityscapes labelIds PNGs into `results_dir`.
    """
    check_mode(mode, crop, stride)
    check_format(output_format)
    if (output_format == "cityscapes") != (results_dir is not None):
        raise DataError("--format cityscapes and --out DIR go together: DIR receives the labelIds PNGs")
    run = load_run(run_dir, checkpoint)
    accelerator = make_accelerator(timeout_s=run.config.train.collective_timeout)  # precision: see score()
    split = split or run.config.data.val_split
    info = load_dataset_info(shards or run.config.data.shards)
    if info.classes != run.classes or info.ignore_index != run.ignore_index:
        raise DataError(f"{info.root} has classes {info.classes} (ignore {info.ignore_index}) but the run was "
                        f"trained on {run.classes} (ignore {run.ignore_index})")
    expected = info.split(split)["samples"]
    writer = result_writer(info, split, results_dir) if output_format == "cityscapes" else None
    device, main = accelerator.device, accelerator.is_main_process
    world, rank = accelerator.num_processes, accelerator.process_index
    precision = run.config.train.mixed_precision
    metrics = SegmentationMetrics(run.num_classes, run.ignore_index).to(device)
    batch_size = batch_size or run.config.data.val_batch_size
    accelerator.print(f"evaluating {run.checkpoint} on {info.root} split '{split}' ({expected} samples), "
                      f"{world} process(es) on {device}, mode {mode}, TTA {tta}, precision {precision}")
    with eval_loader(run.config.data, info, split, rank=rank, world_size=world, size=run.eval_size,
                     batch_size=batch_size, workers=workers) as loader, \
            tqdm(total=math.ceil(expected / world), disable=not main, desc=f"evaluate {split}", unit="img",
                 dynamic_ncols=True) as bar:
        scored = score(run.model_on(device), loader, run.normalizer().to(device), metrics, device=device,
                       precision=precision, mode=mode, crop=crop, stride=stride, tta=tta, progress=bar.update,
                       on_prediction=writer)
    confusion = metrics.confusion()  # collective: sums every process's matrix
    samples, unreadable, written, unnamed = (int(v) for v in agree(
        accelerator, scored.samples, len(scored.unreadable), writer.written if writer else 0,
        len(writer.unnamed) if writer else 0))
    report = {
        "run": str(run.dir), "checkpoint": str(run.checkpoint), "checkpoint_step": run.step,
        "split": split, "shards": str(info.root), "samples": samples, "unreadable_samples": unreadable,
        "unreadable_examples": [list(u) for u in scored.unreadable[:20]], "world_size": world,
        "batch_size": batch_size, "eval_size": run.eval_size, "mode": mode, "precision": precision,
        "crop": list(crop) if crop else None, "stride": list(stride) if stride else None, "tta": str(tta),
        "output_format": output_format, "results": str(writer.out) if writer else None,
        **with_class_accuracy(metrics_from_confusion(confusion, run.classes)),
        "note": NAN_NOTE,
    }
    if main:
        if unreadable:
            print(f"segdist: WARNING: {unreadable} sample(s) of split '{split}' could not be read and are not "
                  f"scored, e.g. {scored.unreadable[:3]}", file=sys.stderr)
        elif samples != expected:
            print(f"segdist: WARNING: evaluated {samples} samples but {info.root}/dataset.json lists {expected} "
                  f"for split '{split}'", file=sys.stderr)
        out = run.dir / "eval" / split
        write_outputs(report, out)
        print(f"\n{format_table(report)}\nclass accuracy = recall; mean class accuracy = mean recall\n"
              f"wrote {out}/metrics.json, confusion.png, per_class_iou.png")
        if tensorboard:
            log_to_tensorboard(run, report, out)
        if writer:
            report_results(writer, written, unnamed)
    accelerator.wait_for_everyone()
    return report


def result_writer(info: DatasetInfo, split: str, out: str | Path) -> ResultWriter:
    """The Cityscapes result writer of this process, once the dataset is known to be Cityscapes'."""
    check_cityscapes_dataset(info.manifest, f"{info.root}/dataset.json", split)
    return ResultWriter(Path(out))


def report_results(writer: ResultWriter, written: int, unnamed: int) -> None:
    """Where the Cityscapes results went, and what would keep the official evaluator from reading them."""
    print(f"wrote {written} Cityscapes labelIds prediction(s) to {writer.out} (all processes)")
    if unnamed:
        print(f"segdist: WARNING: {unnamed} sample key(s) name no Cityscapes frame <city>_<seq>_<frame> and were "
              f"not written, e.g. {writer.unnamed[:3]}", file=sys.stderr)
    stray = stray_results(writer.out, written)
    if stray:
        print(f"segdist: WARNING: {writer.out} holds {stray} other PNG file(s); cityscapesScripts matches predictions "
              "by <city>_<seq>_<frame>*.png anywhere below it and stops at a duplicate: use an empty folder",
              file=sys.stderr)


def with_class_accuracy(figures: dict) -> dict:
    """Add per-class `accuracy` (MMSegmentation's Acc: correct pixels of the class / its pixels = recall)."""
    for per_class in figures["per_class"].values():
        per_class["accuracy"] = per_class["recall"]
    return figures


def write_outputs(report: dict, out: Path) -> None:
    """metrics.json (NaN written as null), the row-normalised confusion matrix and the per-class IoU chart."""
    from segdist.viz import confusion_png, per_class_iou_png

    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "metrics.json", nan_to_none(report))
    title = f"{Path(report['run']).name} {report['split']} ({report['samples']} samples)"
    confusion_png(report["confusion"], report["class_names"], out / "confusion.png", title)
    per_class_iou_png(report, out / "per_class_iou.png", title)


def nan_to_none(value):  # noqa: ANN001, ANN201
    """JSON has no NaN: write null instead (strict parsers reject Python's bare NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [nan_to_none(v) for v in value]
    return value


def log_to_tensorboard(run: Run, report: dict, out: Path) -> None:
    """Means, per-class IoU and both charts in the run's TensorBoard, at the checkpoint's step."""
    import numpy as np
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    step, tag = run.step or 0, f"eval/{report['split']}"
    with SummaryWriter(str(run.dir / "tb")) as writer:
        for key in ("miou", "mdice", "pixel_accuracy", "mean_class_accuracy", "mprecision", "mrecall"):
            if not math.isnan(report[key]):
                writer.add_scalar(f"{tag}/{key}", report[key], step)
        for name, figures in report["per_class"].items():
            if not math.isnan(figures["iou"]):
                writer.add_scalar(f"{tag}/iou/{name}", figures["iou"], step)
        for chart in ("confusion", "per_class_iou"):
            image = np.asarray(Image.open(out / f"{chart}.png").convert("RGB"))
            writer.add_image(f"{tag}/{chart}", image, step, dataformats="HWC")
    print(f"TensorBoard: logged under '{tag}' at step {step} in {run.dir / 'tb'}")
