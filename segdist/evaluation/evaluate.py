"""`segdist evaluate`: exact dataset-level metrics of a run's checkpoint on one split, on one or many processes.

Every process reads its share of the split (`eval_loader`: each sample exactly once, whatever
the world size, batch size or shard layout), predicts at the label's resolution and adds to
its own C x C confusion matrix; the matrices are summed across processes once at the end and
every figure comes from that one matrix. Only the main process writes, under
`runs/NAME/eval/<split>/`: metrics.json, confusion.png and per_class_iou.png (report.py). With
`output_format="cityscapes"` every process also writes each prediction it scores as a Cityscapes
labelIds PNG into `results_dir` (see cityscapes_results), for cityscapesScripts' evaluator.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

from tqdm import tqdm

from segdist.data.eval_loader import eval_loader
from segdist.data.info import DatasetInfo, load_dataset_info
from segdist.distributed import agree, make_accelerator
from segdist.errors import DataError
from segdist.evaluation.cityscapes_results import ResultWriter, check_cityscapes_dataset, check_format, stray_results
from segdist.evaluation.metrics import SegmentationMetrics, format_table, metrics_from_confusion
from segdist.evaluation.report import NAN_NOTE, log_to_tensorboard, with_class_accuracy, write_outputs
from segdist.evaluation.scoring import Scored, score
from segdist.models.inference import TTA, check_mode
from segdist.runs.run import Run, load_run, run_shards
from segdist.utils.secrets import redact


def evaluate(run_dir: str | Path, *, checkpoint: str | None = None, split: str | None = None,
             shards: str | Path | None = None, mode: str = "whole", crop: Sequence[int] | None = None,
             stride: Sequence[int] | None = None, tta: TTA | None = None, batch_size: int | None = None,
             workers: int | None = None, tensorboard: bool = False, output_format: str = "segdist",
             results_dir: str | Path | None = None, max_pixels: int | None = None) -> dict:
    """Evaluate `run_dir`'s checkpoint on `split` of `shards` (default: the run's val split and shards).

    `tta` None: the run's `model.tta`.
    Returns the report written to metrics.json (on every process; only the main one writes it).
    `output_format="cityscapes"` also writes the predictions as Cityscapes labelIds PNGs into `results_dir`.
    Samples over `max_pixels` (default: the run's data.max_pixels) are counted as unreadable, never decoded.
    """
    check_mode(mode, crop, stride)
    check_format(output_format)
    if (output_format == "cityscapes") != (results_dir is not None):
        raise DataError("--format cityscapes and --out DIR go together: DIR receives the labelIds PNGs")
    shards = shards or run_shards(run_dir)  # before the model: a pipe: command of the run's config is refused
    run = load_run(run_dir, checkpoint)
    if max_pixels is not None:
        run.config.data.max_pixels = max_pixels
    accelerator = make_accelerator(timeout_s=run.config.train.collective_timeout)  # precision: see score()
    split = split or run.config.data.val_split
    info = dataset_of(run, shards)
    writer = result_writer(info, split, results_dir) if output_format == "cityscapes" else None
    tta = run.tta(tta)
    options = {"mode": mode, "crop": crop, "stride": stride, "tta": tta}
    batch_size = batch_size or run.config.data.val_batch_size
    metrics = SegmentationMetrics(run.num_classes, run.ignore_index).to(accelerator.device)
    scored = score_split(run, info, split, metrics, accelerator, batch_size, workers, writer, options)
    confusion = metrics.confusion()  # collective: sums every process's matrix
    samples, unreadable, written, unnamed = (int(v) for v in agree(
        accelerator, scored.samples, len(scored.unreadable), writer.written if writer else 0,
        len(writer.unnamed) if writer else 0))
    report = {
        "run": str(run.dir), "checkpoint": str(run.checkpoint), "checkpoint_step": run.step,
        "split": split, "shards": redact(info.root), "samples": samples, "unreadable_samples": unreadable,
        "unreadable_examples": [list(u) for u in scored.unreadable[:20]], "world_size": accelerator.num_processes,
        "batch_size": batch_size, "eval_size": run.eval_size, "mode": mode,
        "precision": run.config.train.mixed_precision, "crop": list(crop) if crop else None,
        "stride": list(stride) if stride else None, "tta": str(tta), "output_format": output_format,
        "results": str(writer.out) if writer else None,
        **with_class_accuracy(metrics_from_confusion(confusion, run.classes)), "note": NAN_NOTE,
    }
    if accelerator.is_main_process:
        publish(run, info, report, scored, tensorboard)
        if writer:
            report_results(writer, written, unnamed)
    accelerator.wait_for_everyone()
    return report


def dataset_of(run: Run, shards: str | Path | None) -> DatasetInfo:
    """The dataset to evaluate on (default: the run's), refused if its classes are not the run's."""
    info = load_dataset_info(shards or run.config.data.shards)
    if info.classes != run.classes or info.ignore_index != run.ignore_index:
        raise DataError(f"{redact(info.root)} has classes {info.classes} (ignore {info.ignore_index}) but the run was "
                        f"trained on {run.classes} (ignore {run.ignore_index})")
    return info


def score_split(run: Run, info: DatasetInfo, split: str, metrics: SegmentationMetrics, accelerator,  # noqa: ANN001
                batch_size: int, workers: int | None, writer: ResultWriter | None, options: dict) -> Scored:
    """This process's share of `split`, predicted and added to `metrics`, with a progress bar."""
    device, world, precision = accelerator.device, accelerator.num_processes, run.config.train.mixed_precision
    expected = info.split(split)["samples"]
    accelerator.print(f"evaluating {run.checkpoint} on {redact(info.root)} split '{split}' ({expected} samples), "
                      f"{world} process(es) on {device}, mode {options['mode']}, TTA {options['tta']}, "
                      f"precision {precision}")
    with eval_loader(run.config.data, info, split, rank=accelerator.process_index, world_size=world,
                     size=run.eval_size, batch_size=batch_size, workers=workers) as loader, \
            tqdm(total=math.ceil(expected / world), disable=not accelerator.is_main_process,
                 desc=f"evaluate {split}", unit="img", dynamic_ncols=True) as bar:
        return score(run.model_on(device), loader, run.normalizer().to(device), metrics, device=device,
                     precision=precision, progress=bar.update, on_prediction=writer, **options)


def publish(run: Run, info: DatasetInfo, report: dict, scored: Scored, tensorboard: bool) -> None:
    """Main process: warn about unread samples, write metrics.json and the charts, print the table."""
    split, samples, unreadable = report["split"], report["samples"], report["unreadable_samples"]
    expected = info.split(split)["samples"]
    if unreadable:
        print(f"segdist: WARNING: {unreadable} sample(s) of split '{split}' could not be read and are not "
              f"scored, e.g. {scored.unreadable[:3]}", file=sys.stderr)
    elif samples != expected:
        print(f"segdist: WARNING: evaluated {samples} samples but {redact(info.root)}/dataset.json lists {expected} "
              f"for split '{split}'", file=sys.stderr)
    out = run.dir / "eval" / split
    write_outputs(report, out)
    print(f"\n{format_table(report)}\nclass accuracy = recall; mean class accuracy = mean recall\n"
          f"wrote {out}/metrics.json, confusion.png, per_class_iou.png")
    if tensorboard:
        log_to_tensorboard(run, report, out)


def result_writer(info: DatasetInfo, split: str, out: str | Path) -> ResultWriter:
    """The Cityscapes result writer of this process, once the dataset is known to be Cityscapes'."""
    check_cityscapes_dataset(info.manifest, f"{redact(info.root)}/dataset.json", split)
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
