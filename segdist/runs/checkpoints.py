"""Checkpoints: written by every rank, complete only when every rank's files are in, published atomically.

A checkpoint directory is written under a temporary name. The main process writes the model
(`model.safetensors`), the optimizer (`optimizer.bin`: tensors, numbers and strings only, read back
with `torch.load(weights_only=True)`), the LR scheduler and the gradient scaler (`scheduler.json`,
`scaler.json`), the EMA (`ema.safetensors`) and the loop state (`segdist_state.json`); every rank
writes its RNG states (`random_states_<rank>.json`). Nothing is pickled, so loading a checkpoint
never runs code (accelerate's `save_state`/`load_state` are not used: they unpickle registered
objects with `weights_only=False` and swallow a failure to restore the RNG states). All ranks first
agree that their writes succeeded, then the main process checks that every rank's file is there,
writes `segdist_complete.json` (the file list) and renames the directory into place. A directory
without that file, or missing a file it lists, is incomplete: `--resume` and evaluation skip it.
`checkpoints/best` is a symbolic link to a `best_<step>` directory, replaced by an atomic rename, so
there is always a complete best model.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from segdist.distributed import any_rank, first_reason
from segdist.errors import CheckpointError
from segdist.runs.rng_state import rng_state, set_rng_state
from segdist.utils import faults

STATE_FILE = "segdist_state.json"
COMPLETE_FILE = "segdist_complete.json"
WEIGHTS_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
OPTIMIZER_FILE = "optimizer.bin"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
INEXACT = ("the random draws of stochastic layers (dropout, drop path) differ from an uninterrupted run's; "
           "the sample order and each sample's augmentation are kept")


def rng_file(rank: int) -> str:
    """Rank `rank`'s RNG states (Python, NumPy, torch CPU and CUDA) as JSON."""
    return f"random_states_{rank}.json"


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


def save_training_state(accelerator, run_dir: Path, state: dict, model: torch.nn.Module,  # noqa: ANN001
                        optimizer: torch.optim.Optimizer, scheduler=None, ema=None) -> Path:  # noqa: ANN001
    """Everything `--resume` needs (model, optimizer, scheduler, scaler, every rank's RNG, EMA, loop state).

    `scheduler` None: none built yet (a budget's calibration). See the module's docstring for the files.
    """
    def write(tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        if accelerator.is_main_process:
            net = accelerator.unwrap_model(model, keep_torch_compile=False)
            save_file(_contiguous(net.state_dict()), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
            if scheduler is not None:
                _write_json(tmp / SCHEDULER_FILE, scheduler_state(scheduler))
            if accelerator.scaler is not None:
                _write_json(tmp / SCALER_FILE, accelerator.scaler.state_dict())
            if ema is not None:
                save_file(_contiguous(ema.state_dict()), str(tmp / EMA_FILE))
        _write_json(tmp / rng_file(accelerator.process_index), rng_state())

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


def load_training_state(accelerator, path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,  # noqa: ANN001
                        scheduler, processes: int, inexact: bool = False) -> None:  # noqa: ANN001
    """Restore a complete checkpoint's model, optimizer, scheduler, scaler and this rank's RNG states.

    Nothing is unpickled: safetensors, JSON and `torch.load(weights_only=True)` only. A file that
    cannot be restored raises CheckpointError naming it; with `inexact`, unrestorable RNG states are
    said once and the run goes on. Ranks from `processes` (the checkpoint's process count) on have no
    RNG file (a resume on more processes) and keep their seeded states.
    """
    net = accelerator.unwrap_model(model, keep_torch_compile=False)
    with _restoring(path / WEIGHTS_FILE, "model's weights"):
        weights = load_file(str(_present(path / WEIGHTS_FILE)))
        net.load_state_dict({plain_key(k): v for k, v in weights.items()})
    with _restoring(path / OPTIMIZER_FILE, "optimizer's state"):
        optimizer.load_state_dict(torch.load(_present(path / OPTIMIZER_FILE), map_location="cpu", weights_only=True))
    if scheduler is not None:
        with _restoring(path / SCHEDULER_FILE, "LR scheduler's state"):
            load_scheduler_state(scheduler, _read_json(_present(path / SCHEDULER_FILE)))
    if accelerator.scaler is not None:
        with _restoring(path / SCALER_FILE, "gradient scaler's state"):
            saved, current = _read_json(_present(path / SCALER_FILE)), accelerator.scaler.state_dict()
            _check_plain(saved, current)
            accelerator.scaler.load_state_dict(saved)
    _restore_rng(accelerator, path, processes, inexact)


def scheduler_state(scheduler) -> dict:  # noqa: ANN001
    """A LambdaLR's or ReduceLROnPlateau's state as JSON; LambdaLR's functions are left out (refit_schedule)."""
    state = scheduler.state_dict()
    state.pop("lr_lambdas", None)
    return state


def load_scheduler_state(scheduler, saved: dict) -> None:  # noqa: ANN001
    """`scheduler_state`'s numbers back into `scheduler` (its LR functions are rebuilt by segdist, not loaded)."""
    _check_plain(saved, scheduler_state(scheduler))
    if hasattr(scheduler, "lr_lambdas"):
        saved["lr_lambdas"] = [None] * len(scheduler.lr_lambdas)
    scheduler.load_state_dict(saved)


def _restore_rng(accelerator, path: Path, processes: int, inexact: bool) -> None:  # noqa: ANN001
    rank, problem = accelerator.process_index, None
    if rank < processes:
        file = path / rng_file(rank)
        try:
            with _restoring(file, "random states"):
                set_rng_state(_read_json(_present(file)))
        except CheckpointError as exc:
            problem = str(exc)
    if not any_rank(accelerator, problem is not None):
        return
    reason = first_reason(accelerator, problem)
    if not inexact:
        raise CheckpointError(f"{reason}; without them the resume is not exact: pass --resume-inexact to continue "
                              f"anyway ({INEXACT})")
    if accelerator.is_main_process:
        print(f"segdist: --resume-inexact: {reason}; continuing with freshly seeded random states: {INEXACT}",
              flush=True)


def _check_plain(saved, current: dict) -> None:  # noqa: ANN001
    """`saved` has only keys `current` has, each a number, string, None or list of them like `current`'s."""
    if not isinstance(saved, dict):
        raise ValueError(f"expected a mapping, found {type(saved).__name__}")
    unknown = sorted(str(k) for k in set(saved) - set(current))
    if unknown:
        raise ValueError(f"unexpected entries {unknown[:5]}")
    scalar = (int, float, str, type(None))
    for key, value in saved.items():
        plain = isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value))
        if not plain or isinstance(value, list) != isinstance(current[key], list | tuple):
            raise ValueError(f"{key} is {value!r:.60}")


def plain_key(key: str) -> str:
    """A state-dict key without the prefixes DDP (`module.`) and torch.compile (`_orig_mod.`) add."""
    for prefix in ("_orig_mod.", "module."):
        key = key.removeprefix(prefix)
    return key


def _present(file: Path) -> Path:
    if not file.is_file():
        older = " (the directory holds pickled states of an older segdist, which are never loaded)" \
            if any(file.parent.glob("*.pkl")) else ""
        raise FileNotFoundError(f"the file is missing{older}")
    return file


class _restoring:
    """Any error inside becomes a CheckpointError naming `file` and what it holds."""

    def __init__(self, file: Path, what: str) -> None:
        self.file, self.what = file, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:  # noqa: ANN001
        if exc is None or isinstance(exc, CheckpointError) or not isinstance(exc, Exception):
            return False
        # a bad file surfaces as pickle (weights_only refusals), zip, safetensors, JSON, key or shape errors
        raise CheckpointError(f"{self.file}: cannot restore the {self.what} ({type(exc).__name__}: {exc})") from None


def _read_json(file: Path):  # noqa: ANN202
    return json.loads(file.read_text())


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json.dumps(data))


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
        reason = first_reason(accelerator, f"{type(error).__name__}: {error}" if error else None)
        raise CheckpointError(f"could not write checkpoint {final}: {reason}; the previous checkpoints are intact")
    faults.hit("kill_in_checkpoint")
    if main:
        _mark_complete(tmp, ranks)
        if final.exists():  # the same step saved again (a resumed run redoing an epoch end)
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _mark_complete(tmp: Path, ranks: int) -> None:
    files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
    missing = [rng_file(r) for r in range(ranks) if rng_file(r) not in files]
    if missing:
        raise CheckpointError(f"{tmp}: every rank reported success but {', '.join(missing)} is missing")
    marker = tmp / COMPLETE_FILE
    with open(marker, "w") as f:
        json.dump({"files": files}, f)
        f.flush()
        os.fsync(f.fileno())
