"""Checkpoints: written by every rank, complete only when every rank's files are in, published atomically.

A checkpoint directory is written under a temporary name. accelerate's `save_state` writes the
model, optimizer, scheduler and scaler from the main process and `random_states_<rank>.pkl` from
every rank, with no barrier at its end; so all ranks first agree that their writes succeeded, then
the main process checks that every rank's file is there, writes `segdist_complete.json` (the file
list) and renames the directory into place. A directory without that file, or missing a file it
lists, is incomplete: `--resume` and evaluation skip it. `checkpoints/best` is a symbolic link to a
`best_<step>` directory, replaced by an atomic rename, so there is always a complete best model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from segdist.distributed import any_rank
from segdist.errors import DataError
from segdist.utils import faults

STATE_FILE = "segdist_state.json"
COMPLETE_FILE = "segdist_complete.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"


class CheckpointError(DataError):
    """A checkpoint could not be written or read; the message names the path."""


def step_name(update: int) -> str:
    return f"step_{update:08d}"


def missing_files(path: Path) -> list[str]:
    """What keeps `path` from being a complete checkpoint ([] when it is complete)."""
    marker = path / COMPLETE_FILE
    if not marker.is_file():
        return [COMPLETE_FILE]
    return [name for name in json.loads(marker.read_text())["files"] if not (path / name).is_file()]


def weights_file(checkpoint: Path, ema: bool) -> Path:
    """The weights a checkpoint is used with: the EMA when the run kept one (`ema`) and the checkpoint has it."""
    return checkpoint / (EMA_FILE if ema and (checkpoint / EMA_FILE).is_file() else WEIGHTS_FILE)


def step_checkpoints(run_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first."""
    return sorted(p for p in (run_dir / "checkpoints").glob("step_*") if not missing_files(p))


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """`--resume` (the latest complete checkpoint), `--resume PATH` (refused if incomplete), or None."""
    if resume is None:
        return None
    if resume != "latest":
        path = Path(resume)
        missing = missing_files(path) if path.is_dir() else ["the directory itself"]
        if missing:
            raise CheckpointError(f"{path} is not a complete segdist checkpoint (missing {', '.join(missing)}); "
                                  f"complete ones: {[p.name for p in step_checkpoints(run_dir)] or 'none'}")
        return path
    incomplete = [p.name for p in (run_dir / "checkpoints").glob("step_*") if missing_files(p)]
    if incomplete:
        print(f"segdist: ignoring incomplete checkpoint(s) {', '.join(sorted(incomplete))}", flush=True)
    found = step_checkpoints(run_dir)
    return found[-1] if found else None


def save_training_state(accelerator, run_dir: Path, state: dict, ema=None) -> Path:  # noqa: ANN001
    """Everything `--resume` needs (model, optimizer, scheduler, scaler, every rank's RNG, EMA, loop state)."""
    def write(tmp: Path) -> None:
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process and ema is not None:
            save_file(_contiguous(ema.state_dict()), str(tmp / EMA_FILE))

    final = run_dir / "checkpoints" / step_name(state["update"])
    return _publish(accelerator, final, state, write, ranks=accelerator.num_processes)


def save_best(accelerator, run_dir: Path, state: dict, model: torch.nn.Module, ema=None) -> Path:  # noqa: ANN001
    """Weights only (and the EMA's); `checkpoints/best` is switched to them atomically."""
    def write(tmp: Path) -> None:
        if accelerator.is_main_process:
            tmp.mkdir(parents=True, exist_ok=True)
            save_file(_contiguous(accelerator.unwrap_model(model).state_dict()), str(tmp / WEIGHTS_FILE))
            if ema is not None:
                save_file(_contiguous(ema.state_dict()), str(tmp / EMA_FILE))

    checkpoints = run_dir / "checkpoints"
    target = _publish(accelerator, checkpoints / f"best_{state['update']:08d}", state, write, ranks=0)
    if accelerator.is_main_process:
        link = checkpoints / "best"
        previous = link.resolve() if link.is_symlink() else None
        staged = checkpoints / ".best.link"
        staged.unlink(missing_ok=True)
        staged.symlink_to(target.name)
        if link.exists() and not link.is_symlink():  # a plain directory from an older segdist
            shutil.rmtree(link)
        os.replace(staged, link)
        if previous is not None and previous != target.resolve():
            shutil.rmtree(previous, ignore_errors=True)
    accelerator.wait_for_everyone()
    return target


def prune(run_dir: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` complete step checkpoints (main process only)."""
    for old in step_checkpoints(run_dir)[:-keep_last] if keep_last else []:
        shutil.rmtree(old)


def remove_partial(run_dir: Path) -> None:
    """Temporary directories left by a job killed while it wrote a checkpoint (main process, at start)."""
    for tmp in (run_dir / "checkpoints").glob(".*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


def resolve(run_dir: Path, choice: str) -> Path:
    """The checkpoint directory for `best`, `last` (the latest complete step) or a directory path."""
    checkpoints = run_dir / "checkpoints"
    if choice == "last":
        found = step_checkpoints(run_dir)
        if not found:
            raise CheckpointError(f"{run_dir} has no complete step checkpoint. {_available(checkpoints)}")
        return found[-1]
    path = checkpoints / "best" if choice == "best" else Path(choice)
    if path.is_file():
        path = path.parent
    if not path.is_dir():
        what = "no best checkpoint (it is written when validation runs)" if choice == "best" else \
            f"no checkpoint directory '{choice}' (use best, last or a path)"
        raise CheckpointError(f"{run_dir} has {what}. {_available(checkpoints)}")
    missing = missing_files(path)
    if missing:
        raise CheckpointError(f"{path} is an incomplete checkpoint (missing {', '.join(missing)}). "
                              f"{_available(checkpoints)}")
    return path


def _available(checkpoints: Path) -> str:
    found = sorted(p.name for p in checkpoints.glob("*")  # best_<step> directories show as `best`
                   if p.is_dir() and not p.name.startswith("best_") and not missing_files(p))
    return f"Complete checkpoints in {checkpoints}: {', '.join(found)}." if found else \
        f"{checkpoints} holds no complete checkpoint."


def nonfinite_weights(model: torch.nn.Module) -> list[str]:
    """Names of parameters and buffers holding NaN or inf."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    return [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _contiguous(state: dict) -> dict:
    return {k: v.detach().contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}


def _publish(accelerator, final: Path, state: dict, write: Callable[[Path], None], ranks: int) -> Path:  # noqa: ANN001
    """Write `final` under a temporary name on every rank, agree, check, mark complete, rename."""
    tmp = final.with_name(f".{final.name}.tmp")
    main = accelerator.is_main_process
    accelerator.wait_for_everyone()
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    error: BaseException | None = None
    try:
        write(tmp)
        faults.hit("checkpoint")
        if main:
            (tmp / STATE_FILE).write_text(json.dumps(state))
    except Exception as exc:  # noqa: BLE001 - a full disk surfaces as OSError, RuntimeError, SafetensorError...
        error = exc
    if any_rank(accelerator, error is not None):  # doubles as the barrier save_state lacks
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        reason = _first_reason(accelerator, f"{type(error).__name__}: {error}" if error else None)
        raise CheckpointError(f"could not write checkpoint {final}: {reason}; the previous checkpoints are intact")
    faults.hit("kill_in_checkpoint")
    if main:
        _mark_complete(tmp, ranks)
        if final.exists():  # the same step saved again (a resumed run redoing an epoch end)
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _first_reason(accelerator, mine: str | None) -> str:  # noqa: ANN001
    """The first failing rank's error, known on every rank (whichever rank prints it, it names the cause)."""
    reasons = [mine]
    if accelerator.num_processes > 1:
        reasons = [None] * accelerator.num_processes
        torch.distributed.all_gather_object(reasons, mine)
    rank, reason = next((r, text) for r, text in enumerate(reasons) if text)
    return reason if accelerator.num_processes == 1 else f"rank {rank}: {reason}"


def _mark_complete(tmp: Path, ranks: int) -> None:
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    missing = [f"random_states_{r}.pkl" for r in range(ranks) if f"random_states_{r}.pkl" not in files]
    if missing:
        raise CheckpointError(f"{tmp}: every rank reported success but {', '.join(missing)} is missing")
    marker = tmp / COMPLETE_FILE
    with open(marker, "w") as f:
        json.dump({"files": files}, f)
        f.flush()
        os.fsync(f.fileno())
