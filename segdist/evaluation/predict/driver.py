"""One process's share of `segdist predict`: read in DataLoader workers, predicted one image at a time, written.

The processes advance in lock-step, one all-reduce per batch (a process whose share is used up
takes part with an empty one): it sums the progress for the main process's bar and tells every
process at once when one has failed, so all stop with that process's error instead of waiting
for it until the collective timeout.
"""

from __future__ import annotations

from tqdm import tqdm

from segdist.data.tar_reader import Reader
from segdist.data.workers import Loader
from segdist.distributed import agree, first_reason
from segdist.errors import DataError
from segdist.evaluation.predict.destination import Destination
from segdist.evaluation.predict.inputs import Input
from segdist.evaluation.predict.outputs import OutputPlan, encoded
from segdist.evaluation.predict.ranks import share
from segdist.evaluation.predict.reading import InputImages, Loaded
from segdist.evaluation.predict.summary import Tally
from segdist.evaluation.predict.tile_outputs import either_suffix
from segdist.evaluation.predict.tiles import TiledInputs, predict_tiled
from segdist.models.inference import argmax
from segdist.runs.run import Run
from segdist.utils import faults


def predict_share(run: Run, items: list[Input], plan: OutputPlan, destination: Destination, accelerator,  # noqa: ANN001
                  *, overwrite: bool, batch_size: int, workers: int, max_pixels: int, options: dict,
                  tiling: dict | None = None) -> Tally:
    """Predict this process's share of `items` (see ranks.share) into `destination`; what it did.

    `tiling` ({"tile": (H, W), "overlap": P}): each image band by band in the main thread (tiles.py).
    """
    destination.prepare(accelerator.is_main_process)
    accelerator.wait_for_everyone()  # a crashed run's temporary files are gone before any process writes
    existing = set() if overwrite else destination.existing()
    mine = share(items, accelerator.process_index, accelerator.num_processes)
    if tiling:  # nothing decoded ahead: predict_tiled reads each image by rows
        existing, workers = either_suffix(existing), 0
        tiling = {**tiling, "tta": options["tta"], "max_pixels": max_pixels}
    images = (TiledInputs if tiling else InputImages)(mine, plan, existing, Reader.from_config(run.config.data),
                                                      run.eval_size, run.resize_side, max_pixels)
    tally = Tally()
    with Loader(images, batch_size=batch_size, num_workers=min(workers, len(mine)), collate_fn=list) as loader, \
            tqdm(total=len(items), disable=not accelerator.is_main_process, desc="predict", unit="img",
                 dynamic_ncols=True) as bar:
        batches = iter(loader)
        while True:
            batch, error = None, None
            try:
                batch = next(batches, None) if batches is not None else None
                if batch is not None:
                    predict_batch(run, batch, plan, destination, accelerator.device, options, tally, tiling)
            except Exception as exc:  # noqa: BLE001 - the other processes must hear of it (stop_all)
                error = exc
            batches = batches if batch is not None else None
            more, failed, handled = agree(accelerator, batch is not None, error is not None, len(batch or ()))
            bar.update(int(handled))
            if failed:
                stop_all(accelerator, error)
            if not more:
                return tally


def predict_batch(run: Run, batch: list[Loaded], plan: OutputPlan, destination: Destination, device,  # noqa: ANN001
                  options: dict, tally: Tally, tiling: dict | None = None) -> None:
    """Predict each readable input of `batch` that still needs files and write those files; count the others."""
    ready = [item for item in batch if item.ready]
    for item in batch:
        if not item.ready:
            tally.count(item)
    for item in ready:
        if tiling:
            faults.at_step(len(tally.written))
            item.error = predict_tiled(run, item, destination, device, **tiling)
            if item.error:
                tally.count(item)
            else:
                tally.written.append(item.where)
            continue
        # alone, as Run.predict: a forward pass's batch size changes its float rounding (oneDNN, cuDNN), and
        # so the outputs would depend on which images share a batch: on the process count and on what is done
        (probs,) = run.probabilities([item.image], [item.rgb.shape[:2]], device, **options)
        labels = argmax(probs).cpu().numpy()
        stored = plan.quantized(probs) if "probs" in item.files else None
        faults.at_step(len(tally.written))  # SEGDIST_FAULT=kill_in_predict@N: while writing the (N+1)th input
        for output, data in encoded(list(item.files), item.rgb, labels, stored, run):
            destination.put(item.files[output], data)
        tally.written.append(item.where)


def stop_all(accelerator, error: Exception | None) -> None:  # noqa: ANN001
    """Every process: raise the failed process's error (its own where it failed), naming it."""
    mine = None if error is None else str(error) if isinstance(error, DataError) else f"{type(error).__name__}: {error}"
    reason = first_reason(accelerator, mine)
    if error is not None:
        raise error
    raise DataError(f"stopped because {reason}")
