"""segdist: distributed training and evaluation for semantic segmentation.

The Python API (segdist.api): prepare_dataset (and prepare_coco, prepare_cityscapes, prepare_folder), verify, train,
load_run, evaluate. The packages, imports pointing down only (checked by import-linter, pyproject.toml):

    cli.py, demo.py     the command line and the built-in demo
    api.py              the functions above, which the command line calls
    training/           session and resume, the loop, one step, validation, log book, budget, optimizer, trackers
    evaluation/         metrics, scoring, evaluate and its report, Cityscapes results, predict, export
    runs/               a finished run (config, dataset, model), checkpoints, EMA
    data/ models/       loaders, tar reader, augmentation | model factory, encoders, losses, inference
    prepare/ synth/     sources -> jobs -> Ray driver -> shard tasks -> dataset.json | synthetic COCO, Cityscapes
    format/ storage/    dataset.json, the tar writer, label tables | local, http(s)://, s3://, pipe:
    config/ distributed.py env.py   the config schema | the process group | `segdist env`
    utils/              atomic files, console lines, image decoding, palettes and PNG charts, fault injection
    errors.py version.py
"""

from segdist.api import (evaluate, load_run, prepare_cityscapes, prepare_coco, prepare_dataset, prepare_folder, train,
                         verify)
from segdist.version import __version__

__all__ = ["__version__", "prepare_dataset", "prepare_coco", "prepare_cityscapes", "prepare_folder", "verify", "train",
           "load_run", "evaluate"]
