"""segdist's Python API: the functions the command line calls, for notebooks and scripts.

    >>> import segdist
    >>> segdist.prepare_folder("camvid/train", "camvid/trainannot", "Sky,Building,...", "shards/camvid",
    ...                        source_ignore=11)
    >>> summary = segdist.train("configs/camvid-cpu-50m.yaml", data={"shards": "shards/camvid"},
    ...                         train={"name": "camvid", "epochs": 2})
    >>> run = segdist.load_run(summary["run_dir"])
    >>> classes = run.predict("photo.png")                 # HxW class ids at the photo's size
    >>> segdist.evaluate(summary["run_dir"], split="val")["miou"]
    >>> segdist.verify("shards/camvid")["ok"]             # every shard present, with its recorded sha256

Each function imports its heavy packages (torch, Ray, pycocotools) when called, so `import segdist`
stays cheap and Ray workers, which import segdist.prepare, never pay for torch. Errors are raised
(segdist.errors.DataError, ConfigError), never turned into an exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segdist.config import Config
    from segdist.runs.run import Run

__all__ = ["prepare_coco", "prepare_cityscapes", "prepare_folder", "verify", "train", "load_run", "evaluate"]


def prepare_coco(images: str | Path, annotations: str | Path, classes: str | Sequence[str], out: str | Path, *,
                 workers: int | None = None, address: str | None = None, overwrite: bool = False,
                 work_dir: str | Path | None = None, **options: Any) -> dict:
    """Convert COCO instance annotations for a class subset into WebDataset shards with Ray.

    Args:
        images: the folder of the images the annotations name (e.g. coco/train2017).
        annotations: a COCO instances JSON (e.g. instances_train2017.json).
        classes: COCO names or ids, a list or comma-separated; the label is the position (0 = background).
        out: a dataset directory (e.g. shards/coco3) or an s3://bucket/prefix.
        workers: Ray tasks at once (default: every core of the cluster).
        address: an existing Ray cluster's address (default: start a local one).
        overwrite: replace the splits this run writes.
        work_dir: with an s3:// `out`, where shards are converted before upload.
        **options: those of `segdist prepare coco` with `_` for `-`: split ("train"), splits
            ({"train": 0.8, "val": 0.2}), per_class, seed, overlap ("area", "order", "ignore",
            "ignore-between-classes"), crowd ("ignore", "label"), keep_empty, ignore_index,
            max_pixels, shard_size (256), shard_bytes.

    Returns:
        The dataset's dataset.json as a dict (classes, palette, per-split samples, shards, statistics).

    Example:
        >>> segdist.prepare_coco("coco/val2017", "coco/annotations/instances_val2017.json",
        ...                      ["person", "bicycle", "car"], "shards/coco3", split="val")
    """
    from segdist.prepare.jobs import coco_job
    from segdist.prepare.run import prepare

    names = list(classes) if not isinstance(classes, str) else classes
    return prepare(lambda: coco_job(images, annotations, names, **options), out, workers=workers, address=address,
                   overwrite=overwrite, work_dir=work_dir)


def prepare_cityscapes(root: str | Path, split: str, out: str | Path, *, workers: int | None = None,
                       address: str | None = None, overwrite: bool = False, work_dir: str | Path | None = None,
                       **options: Any) -> dict:
    """Convert a Cityscapes split (leftImg8bit + gtFine labelIds) into shards of the 19 trainIds.

    Args:
        root: the Cityscapes folder holding leftImg8bit/ and gtFine/.
        split: "train", "val" or "test".
        out, workers, address, overwrite, work_dir: as for `prepare_coco`.
        **options: image_format ("png" keeps the bytes, "jpeg" transcodes), ignore_index, max_pixels,
            shard_size, shard_bytes.

    Returns:
        The dataset's dataset.json as a dict.

    Example:
        >>> segdist.prepare_cityscapes("cityscapes", "val", "shards/cityscapes")
    """
    from segdist.prepare.jobs import cityscapes_job
    from segdist.prepare.run import prepare

    return prepare(lambda: cityscapes_job(root, split, **options), out, workers=workers, address=address,
                   overwrite=overwrite, work_dir=work_dir)


def prepare_folder(images: str | Path, masks: str | Path, classes: str | Sequence[str], out: str | Path, *,
                   workers: int | None = None, address: str | None = None, overwrite: bool = False,
                   work_dir: str | Path | None = None, **options: Any) -> dict:
    """Convert an image folder and a mask folder, paired by file stem, into shards.

    Args:
        images: the image folder.
        masks: the mask folder: index masks (class ids) or colour masks (with `palette`).
        classes: names, a list or comma-separated; a mask value is the position in it.
        out, workers, address, overwrite, work_dir: as for `prepare_coco`.
        **options: split ("train"), palette (a JSON file of colours), source_ignore (a mask value
            meaning ignore, e.g. CamVid's 11), unknown_to_ignore, mask_suffix, ignore_index,
            max_pixels, shard_size, shard_bytes.

    Returns:
        The dataset's dataset.json as a dict.

    Example:
        >>> segdist.prepare_folder("camvid/train", "camvid/trainannot", CAMVID_CLASSES, "shards/camvid",
        ...                        source_ignore=11)
    """
    from segdist.prepare.jobs import folder_job
    from segdist.prepare.run import prepare

    names = list(classes) if not isinstance(classes, str) else classes
    return prepare(lambda: folder_job(images, masks, names, **options), out, workers=workers, address=address,
                   overwrite=overwrite, work_dir=work_dir)


def verify(shards: str | Path, *, split: str | Sequence[str] | None = None) -> dict:
    """Check every shard of a prepared dataset against its dataset.json: present, recorded size and sha256.

    Args:
        shards: a dataset directory or a URL prefix (http(s)://, s3://, pipe:), as for training.
        split: a split or a list of splits (default: every split).

    Returns:
        {"ok": no shard missing, unreadable or different, "splits": {split: {status: count}},
        "problems": {shard name: "status (detail)"}}; statuses: "ok", "missing", "size mismatch",
        "hash mismatch", "unreadable", "no checksum recorded" (an older manifest: not a failure).

    Example:
        >>> segdist.verify("s3://datasets/coco3")["problems"]
        {'train-000007.tar': 'hash mismatch (sha256 9f2c..., dataset.json records 41ab...)'}
    """
    from collections import Counter

    from segdist.data.verify import OK, failed, verify_dataset

    checks = verify_dataset(shards, split)
    splits: dict[str, Counter] = {}
    for check in checks:
        splits.setdefault(check.split, Counter())[check.status] += 1
    return {"ok": not failed(checks), "splits": {name: dict(counts) for name, counts in splits.items()},
            "problems": {c.name: c.status + (f" ({c.detail})" if c.detail else "") for c in checks if c.status != OK}}


def train(config: str | Path | Config | None = None, *, resume: str | Path | bool | None = None,
          overwrite: bool = False, resume_inexact: bool = False, overrides: Sequence[str] = (),
          **sections: dict) -> dict:
    """Train a model as `segdist train` does, in this process (or under `accelerate launch`).

    Args:
        config: a YAML recipe (configs/*.yaml), a `segdist.config.Config`, or None for the defaults.
        resume: "latest" or True (the run's newest complete checkpoint) or a checkpoint directory.
        overwrite: delete an earlier run of the same train.name first; without it (or `resume`) a
            run directory that holds checkpoints is refused (DataError).
        resume_inexact: resume even when the checkpoint's RNG states cannot be restored (said once:
            dropout and other random layers then draw differently; the sample order is kept). Without
            it such a checkpoint is refused (CheckpointError naming the file).
        overrides: dotted overrides as on the command line, e.g. ["optim.lr=0.01"].
        **sections: overrides by section, e.g. train={"epochs": 2}, data={"shards": "shards/demo"}.

    Returns:
        The run's summary (also runs/NAME/summary.json): run_dir, steps, best_miou, best_step, ...

    Example:
        >>> summary = segdist.train("configs/demo.yaml", train={"epochs": 1, "name": "notebook"})
        >>> summary["best_miou"], summary["run_dir"]
    """
    from segdist.models.preflight import check_config
    from segdist.training.loop import main

    resume = "latest" if resume is True else (None if resume is False or resume is None else str(resume))
    return main(check_config(resolved_config(config, overrides, sections)), resume=resume, overwrite=overwrite,
                resume_inexact=resume_inexact)


def resolved_config(config: str | Path | Config | None, overrides: Sequence[str] = (),
                    sections: dict | None = None) -> Config:
    """A config from a recipe path or a Config, with dotted overrides and section overrides applied, validated."""
    import copy

    from segdist.config import Config, apply, load_config, parse_override, validate

    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
        for item in overrides:
            apply(cfg, parse_override(item), f"override '{item}'")
    else:
        cfg = load_config(config, list(overrides))
    apply(cfg, sections or {}, "segdist.train(...)")
    validate(cfg)
    return cfg


def load_run(run_dir: str | Path, checkpoint: str = "best") -> Run:
    """A trained run, ready to predict: its config, classes, palette and model restored from a checkpoint.

    Args:
        run_dir: a run directory written by `segdist train` (runs/NAME).
        checkpoint: "best" (default), "last" (the newest step checkpoint) or a checkpoint path.

    Returns:
        A `segdist.runs.run.Run`: `.predict(image)` gives the HxW class map of an RGB array or an
        image file, with `segdist predict`'s preprocessing, modes and TTA; `.classes`, `.palette`,
        `.ignore_index`, `.model` (eval mode, CPU), `.config`.

    Example:
        >>> run = segdist.load_run("runs/demo")
        >>> classes = run.predict(rgb_array, tta="flip")
    """
    from segdist.runs.run import load_run as load

    return load(run_dir, checkpoint)


def evaluate(run_dir: str | Path, *, split: str | None = None, checkpoint: str = "best", tta: str | None = None,
             **options: Any) -> dict:
    """Exact dataset-level metrics of a run's checkpoint on a split, as `segdist evaluate` writes them.

    Args:
        run_dir: a run directory written by `segdist train`.
        split: the split to score (default: the run's data.val_split).
        checkpoint: "best", "last" or a checkpoint path.
        tta: None, "flip" or "scales=0.5,1.0,1.5[,flip]".
        **options: shards (another dataset directory or URL), mode ("whole"/"slide"), crop, stride,
            batch_size, workers, tensorboard, output_format ("segdist"/"cityscapes"), results_dir,
            max_pixels (default: the run's data.max_pixels).

    Returns:
        The report written to runs/NAME/eval/<split>/metrics.json: miou, mdice, pixel_accuracy,
        per_class {name: {iou, dice, precision, recall, accuracy}}, confusion, samples, ...

    Example:
        >>> segdist.evaluate("runs/demo", split="val")["miou"]
    """
    from segdist.evaluation.evaluate import evaluate as run_evaluation
    from segdist.models.inference import parse_tta

    return run_evaluation(run_dir, split=split, checkpoint=checkpoint, tta=parse_tta(tta), **options)
