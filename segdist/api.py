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

__all__ = ["prepare_dataset", "prepare_coco", "prepare_cityscapes", "prepare_folder", "verify", "train", "load_run",
           "evaluate"]


def prepare_dataset(source: str, out: str | Path, *, workers: int | None = None, address: str | None = None,
                    overwrite: bool = False, work_dir: str | Path | None = None, **options: Any) -> dict:
    """Convert a dataset from one of `segdist prepare`'s sources into WebDataset shards with Ray.

    Args:
        source: "coco", "cityscapes", "voc", "ade20k", "labelme" or "folder" (segdist.prepare.sources.SOURCES).
        out: a dataset directory (e.g. shards/voc) or an s3://bucket/prefix.
        workers: Ray tasks at once (default: every core of the cluster).
        address: an existing Ray cluster's address (default: start a local one).
        overwrite: replace the splits this run writes.
        work_dir: with an s3:// `out`, where shards are converted before upload.
        **options: those of `segdist prepare SOURCE` with `_` for `-` (`--list` is list_file, `--map`
            value_map), plus ignore_index, max_pixels, shard_size (256) and shard_bytes; classes as a
            list, a comma-separated string or "@FILE".

    Returns:
        The dataset's dataset.json as a dict (classes, palette, per-split samples, shards, statistics).

    Example:
        >>> segdist.prepare_dataset("voc", "shards/voc", root="VOCdevkit/VOC2012", split="train",
        ...                         sbd="benchmark_RELEASE/dataset")
    """
    from segdist.prepare.run import prepare
    from segdist.prepare.sources import source as find_source

    chosen = find_source(source)
    return prepare(lambda: chosen.job(**options), out, workers=workers, address=address, overwrite=overwrite,
                   work_dir=work_dir)


def prepare_coco(images: str | Path, annotations: str | Path, classes: str | Sequence[str], out: str | Path,
                 **options: Any) -> dict:
    """`prepare_dataset("coco", out, images=, annotations=, classes=, ...)`: COCO instances for a class subset.

    Example:
        >>> segdist.prepare_coco("coco/val2017", "coco/annotations/instances_val2017.json",
        ...                      ["person", "bicycle", "car"], "shards/coco3", split="val")
    """
    return prepare_dataset("coco", out, images=images, annotations=annotations, classes=classes, **options)


def prepare_cityscapes(root: str | Path, split: str, out: str | Path, **options: Any) -> dict:
    """`prepare_dataset("cityscapes", out, root=, split=, ...)`: a Cityscapes split as the 19 trainIds.

    Example:
        >>> segdist.prepare_cityscapes("cityscapes", "val", "shards/cityscapes")
    """
    return prepare_dataset("cityscapes", out, root=root, split=split, **options)


def prepare_folder(images: str | Path, masks: str | Path, classes: str | Sequence[str], out: str | Path,
                   **options: Any) -> dict:
    """`prepare_dataset("folder", out, images=, masks=, classes=, ...)`: image and mask folders paired by stem.

    Example:
        >>> segdist.prepare_folder("camvid/train", "camvid/trainannot", CAMVID_CLASSES, "shards/camvid",
        ...                        source_ignore=11)
    """
    return prepare_dataset("folder", out, images=images, masks=masks, classes=classes, **options)


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


def load_run(run_dir: str | Path, checkpoint: str | None = None) -> Run:
    """A trained run, ready to predict: its config, classes, palette and model restored from a checkpoint.

    Args:
        run_dir: a run directory written by `segdist train` (runs/NAME).
        checkpoint: "best", "last" (the newest step checkpoint) or a checkpoint path; None: the run's
            `model.checkpoint` ("best" unless its recipe says "last").

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


def evaluate(run_dir: str | Path, *, split: str | None = None, checkpoint: str | None = None, tta: str | None = None,
             **options: Any) -> dict:
    """Exact dataset-level metrics of a run's checkpoint on a split, as `segdist evaluate` writes them.

    Args:
        run_dir: a run directory written by `segdist train`.
        split: the split to score (default: the run's data.val_split).
        checkpoint: "best", "last" or a checkpoint path; None: the run's `model.checkpoint`.
        tta: "none", "flip" or "scales=0.5,1.0,1.5[,flip]"; None: the run's model.tta.
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

    return run_evaluation(run_dir, split=split, checkpoint=checkpoint, tta=None if tta is None else parse_tta(tta),
                          **options)
