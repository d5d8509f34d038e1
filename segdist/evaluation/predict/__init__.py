"""`segdist predict`: class ids, colours, overlays and class probabilities of images, each at the image's own size.

    inputs.py       what to predict: files, a folder, a glob, @LIST, http(s)/s3 URLs, a prepared split
    ranks.py        the share of each process under `accelerate launch` (rank r: items r, r+N, ...)
    reading.py      DataLoader workers read, skip done inputs, decode and resize
    outputs.py      the files of one input (index, color, overlay, probs; or Cityscapes labelIds) and their bytes
    destination.py  a local folder or an s3:// prefix, each file complete under its final name or absent
    tiles.py        --tile H W --overlap P: an image of any size, band by band, its files written row by row
    tile_inputs.py  --tile's image by rows: a TIFF by strips or tiles, anything else decoded whole
    tile_outputs.py --tile's files as rows finish: a PNG row by row, above PIL's limit a tiled BigTIFF
    driver.py       one process's loop: read in batches, predict each image, write, agree once per batch
    summary.py      the counts over all processes, told once
    ray_pipeline.py `--ray`: the same files from a Ray Data pipeline (decode tasks, an actor pool of replicas)

One process, or N under `accelerate launch` (gloo on CPUs, NCCL on GPUs): the main process lists
the inputs once, sorted (a split: in manifest order), and rank r predicts items r, r+N, r+2N, ...
Every image gets a forward pass of its own (as `Run.predict`), so its files do not depend on the
process count, the batch size or what a resumed run skips: N processes write the files one writes
where each process computes alike (the same device kind; on CPUs the same threads per process,
since oneDNN's channels-last convolutions round differently with another thread count).

Resume is the default: an input whose every requested file is already in --out is counted as
already done and not predicted again (a file input is not even read); `overwrite=True` redoes
it. Done is read from file names alone, which the write protocol makes safe (destination.py):
after changing the checkpoint, mode, TTA or probs dtype, pass `overwrite` or use a new --out.
Unreadable inputs are skipped and listed at the end; they never stop the others. An error in any
process (a failed write) ends every process with its message. The progress bar (all processes'
inputs) and the closing summary come from the main process; with N > 1 each process also prints
a `[rank r/N] wrote W, already done K, ...` line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from segdist.distributed import make_accelerator
from segdist.errors import DataError
from segdist.evaluation.cityscapes_results import check_cityscapes_dataset
from segdist.evaluation.predict.destination import Destination
from segdist.evaluation.predict.driver import predict_share
from segdist.evaluation.predict.inputs import IMAGE_SUFFIXES, Input, check_cityscapes_names, find_images, resolve
from segdist.evaluation.predict.outputs import DEFAULT_OUTPUTS, OUTPUTS, PROBS_DTYPES, OutputPlan
from segdist.evaluation.predict.ranks import from_main
from segdist.evaluation.predict.summary import report
from segdist.evaluation.predict.tiles import TILE_OUTPUTS, check_tiles
from segdist.models.inference import TTA, check_mode
from segdist.runs.run import load_run

__all__ = ["predict", "find_images", "IMAGE_SUFFIXES", "OUTPUTS", "DEFAULT_OUTPUTS", "PROBS_DTYPES"]


def predict(run_dir: str | Path, inputs: str | None, out: str | Path, *, checkpoint: str | None = None,
            mode: str = "whole", crop: Sequence[int] | None = None, stride: Sequence[int] | None = None,
            tta: TTA | None = None, batch_size: int = 4, workers: int | None = None, output_format: str = "segdist",
            max_pixels: int | None = None, outputs: Sequence[str] | str | None = None, probs_dtype: str = "uint8",
            overwrite: bool = False, shards: str | None = None, split: str | None = None,
            tile: Sequence[int] | None = None, overlap: int = 0) -> dict:
    """Predict every image `inputs` names (or every sample of `split` of `shards`) into `out`.

    `out` is a folder or an s3:// prefix; `outputs` any of index, color, overlay, probs (default the
    first three; see outputs.py for the files and how to read probs/<stem>.npz). Inputs already done
    in `out` are skipped unless `overwrite`. Under `accelerate launch` every process predicts its share.
    `tta` None: the run's `model.tta`.

    `tile=(H, W), overlap=P` predicts each image window row by window row with the windows of
    `mode="slide", crop=(H, W), stride=(H-P, W-P)` at the stored resolution, holding one window row of
    logits and writing rows as they are finished: images of any size (see tiles.py); its outputs are index
    and color (the default then).

    Returns this process's {"written": [...], "already_done": [...], "skipped": [(input, reason)]}
    and the job's "totals" (counts over all processes).
    """
    check_mode(mode, crop, stride)
    if tile is not None and outputs is None and output_format == "segdist":
        outputs = TILE_OUTPUTS  # the default with --tile: overlay and probs cannot be bounded
    plan = OutputPlan.of(output_format, outputs, probs_dtype)
    run = load_run(run_dir, checkpoint)
    tta = run.tta(tta)
    if tile is not None:
        check_tiles(tile, overlap, mode, tta, plan)
    elif overlap:
        raise DataError("--overlap belongs to --tile H W")
    destination = Destination(out, plan.folders)
    if output_format == "cityscapes":
        check_cityscapes_dataset(run.manifest, run.dir / "dataset.json")
    accelerator = make_accelerator(timeout_s=run.config.train.collective_timeout)
    items = from_main(accelerator, lambda: listed(inputs, shards, split, output_format))
    precision = run.config.train.mixed_precision
    how = f"mode {mode}" if tile is None else f"tiles {tile[0]}x{tile[1]} overlap {overlap} at the stored resolution"
    accelerator.print(f"predicting {len(items)} image(s) with {run.checkpoint} on {accelerator.num_processes} "
                      f"process(es) ({accelerator.device}), {how}, TTA {tta}, precision {precision}")
    try:
        tally = predict_share(run, items, plan, destination, accelerator, overwrite=overwrite,
                              batch_size=batch_size, workers=run.config.data.workers if workers is None else workers,
                              max_pixels=max_pixels or run.config.data.max_pixels,
                              options={"mode": mode, "crop": crop, "stride": stride, "tta": tta},
                              tiling=None if tile is None else {"tile": tuple(tile), "overlap": overlap})
    finally:
        destination.close()
    return report(accelerator, tally, plan, str(out), len(items))


def listed(inputs: str | None, shards: str | None, split: str | None, output_format: str) -> list[Input]:
    """The inputs in their fixed order, checked to give each output one input."""
    items = resolve(None if inputs is None else str(inputs), shards and str(shards), split)
    if output_format == "cityscapes":
        check_cityscapes_names(items)
    return items
