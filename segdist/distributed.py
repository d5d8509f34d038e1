"""The process group: set-up, the agreements all ranks reach together, and failure reports.

Every decision that changes the control flow (stop on a signal, a non-finite loss, a failed
checkpoint) is taken from values summed over all ranks, so all ranks take it at the same step.
A rank that dies makes the others fail in their next collective: at once where the peer's socket
closes (gloo on a live host), else after the process-group timeout (`train.collective_timeout`).
The survivors then name the lost rank(s) through the launcher's key-value store.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch

from segdist.errors import ConfigError, DataError
from segdist.utils.console import print_line


def make_accelerator(*, mixed_precision: str | None = None, accumulate: int = 1, timeout_s: float = 300,
                     trackers: list | None = None, project_dir: Path | None = None,
                     unused_parameters: bool = False):  # noqa: ANN201
    """An Accelerator for one process or `accelerate launch`; without CUDA several processes form a gloo group.

    `mixed_precision` None takes the launcher's (`accelerate launch --mixed_precision`, or its config
    file: ACCELERATE_MIXED_PRECISION), "no" for a plain process; a value given here wins, said once
    where it overrides a different launcher value. `accelerator.mixed_precision` is the one in effect.
    `unused_parameters`: DDP expects parameters without gradients (an encoder frozen for a while).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

    cpu = not torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if cpu:  # the processes of a node share its cores; more threads than cores only adds contention
        torch.set_num_threads(compute_threads(local))
    accelerator = Accelerator(
        mixed_precision=mixed_precision, cpu=cpu and int(os.environ.get("WORLD_SIZE", "1")) > 1,
        gradient_accumulation_steps=accumulate, log_with=trackers, project_dir=project_dir,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=timeout_s)),
                         DistributedDataParallelKwargs(find_unused_parameters=unused_parameters)])
    check_world_size(accelerator)
    launcher = launcher_precision()
    if mixed_precision is not None and launcher not in (None, mixed_precision) and accelerator.is_main_process:
        print(f"segdist: train.mixed_precision={mixed_precision} overrides the launcher's {launcher}", flush=True)
    return accelerator


def launcher_precision() -> str | None:
    """The precision `accelerate launch` set (its flag or config file), None outside it."""
    return os.environ.get("ACCELERATE_MIXED_PRECISION") or None


def inference_precision(recorded: str | None) -> str:
    """The autocast precision of `segdist evaluate`/`predict`: the launcher's under `accelerate launch`, else the run's.

    `recorded` is the run's `train.mixed_precision` (None in a config that never ran: "no").
    """
    return launcher_precision() or recorded or "no"


def compute_threads(local_processes: int) -> int:
    """Threads for one training process: the CPUs it may use, shared by the processes on its node."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // max(1, local_processes))


def requested_world_size() -> int | None:
    """The process count the user asked for: SEGDIST_WORLD_SIZE, else `accelerate launch`'s flags.

    Catches the `accelerate launch --cpu --num_processes 2` trap, which runs one process.
    """
    if os.environ.get("SEGDIST_WORLD_SIZE"):
        return int(os.environ["SEGDIST_WORLD_SIZE"])
    try:
        import psutil

        for proc in psutil.Process().parents()[:3]:
            args = proc.cmdline()
            if any(a.endswith(("accelerate", "accelerate.commands.launch")) for a in args[:3]):
                flags = dict(zip(args, args[1:]))
                flags.update(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
                if "--num_processes" in flags:
                    return int(flags["--num_processes"])
                if "--config_file" in flags:
                    import yaml

                    return int(yaml.safe_load(Path(flags["--config_file"]).read_text()).get("num_processes", 1))
    except (ImportError, OSError, ValueError):
        pass
    return None


def check_world_size(accelerator) -> None:  # noqa: ANN001
    """Warn loudly when the process group is smaller or larger than what the launch asked for."""
    asked, world = requested_world_size(), accelerator.num_processes
    if asked is not None and asked != world and accelerator.is_main_process:
        print(f"\n{'!' * 78}\nsegdist: WARNING: {asked} processes were requested but the process group has "
              f"{world}.\n`accelerate launch --cpu` runs ONE process; for several CPU processes use "
              f"`--multi_gpu` (segdist forms a gloo group without CUDA), as launch/cpu-2proc.yaml does.\n"
              f"{'!' * 78}\n", file=sys.stderr, flush=True)


def agree(accelerator, *values: float | torch.Tensor) -> list[float]:  # noqa: ANN001
    """The sums of `values` over all ranks, in one all-reduce and one host sync."""
    device = accelerator.device
    packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=device).detach().reshape(())
                          for v in values])
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(packed)
    return packed.tolist()


def broadcast_buffers(accelerator, module: torch.nn.Module) -> None:  # noqa: ANN001
    """Give every rank rank 0's buffers (BatchNorm running statistics).

    Under DDP each rank's running statistics move with its own last batch (DDP re-broadcasts rank
    0's at the next forward); checkpoints hold rank 0's. Validating with rank 0's on every rank makes
    validation equal `segdist evaluate` on the checkpoint, and a resumed run equal an uninterrupted one.
    """
    if accelerator.num_processes > 1:
        for buffer in module.buffers():
            torch.distributed.broadcast(buffer, src=0)


def sync_batchnorm(accelerator, model: torch.nn.Module) -> torch.nn.Module:  # noqa: ANN001
    """`model` with SyncBatchNorm layers for several processes (`model.sync_bn`); one process keeps it as is.

    torch's SyncBatchNorm runs on CUDA only: on gloo CPU processes it fails at the first forward with
    a message that names neither the option nor the fix, so that case is refused here.
    """
    if accelerator.num_processes == 1:
        return model
    if accelerator.device.type != "cuda":
        raise DataError(f"model.sync_bn needs GPUs: torch's SyncBatchNorm has no {accelerator.device.type} "
                        f"version; set model.sync_bn=false for the {accelerator.num_processes} "
                        f"{accelerator.device.type} processes (or a larger data.batch_size per process)")
    return torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)


def any_rank(accelerator, flag: bool) -> bool:  # noqa: ANN001
    """True on every rank when `flag` is true on any of them."""
    return agree(accelerator, float(flag))[0] > 0


def first_reason(accelerator, mine: str | None) -> str:  # noqa: ANN001
    """The first failing rank's error, known on every rank (whichever rank prints it, it names the cause)."""
    reasons = [mine]
    if accelerator.num_processes > 1:
        reasons = [None] * accelerator.num_processes
        torch.distributed.all_gather_object(reasons, mine)
    rank, reason = next((r, text) for r, text in enumerate(reasons) if text)
    return reason if accelerator.num_processes == 1 else f"rank {rank}: {reason}"


def _store():  # noqa: ANN202
    """A client of the launcher's key-value store, or None without one (a plain single process)."""
    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not host or not port or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return None
    try:
        return torch.distributed.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=5))
    except (RuntimeError, ValueError):
        return None


def first_to_report() -> bool:
    """True for the first rank of the job to report an error (so the job prints it once)."""
    store = _store()
    if store is None:
        return True
    try:
        return store.add("segdist/errors", 1) == 1
    except RuntimeError:
        return True


def lost_ranks(wait_s: float = 10.0) -> list[int] | None:
    """After a collective failed: the ranks that did not check in within `wait_s` (None if unknown)."""
    store, world = _store(), int(os.environ.get("WORLD_SIZE", "1"))
    if store is None:
        return None
    try:
        store.set(f"segdist/alive/{os.environ.get('RANK', '0')}", "1")
        deadline = time.monotonic() + wait_s
        while True:
            missing = [r for r in range(world) if not store.check([f"segdist/alive/{r}"])]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.25)
    except RuntimeError:
        return None


def is_collective_failure(exc: BaseException) -> bool:
    """Whether `exc` looks like a collective that failed because a peer died or hung."""
    if isinstance(exc, getattr(torch.distributed, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("gloo", "nccl", "connection closed", "connection reset", "timed out", "broken pipe"))


USER_ERRORS = (DataError, ConfigError)  # reported by their message alone, exit status 2


@contextmanager
def errors_reported_once() -> Iterator[None]:
    """End the process on any error with one message for the whole job, naming lost ranks if any.

    Exit status 2 for bad input, state or config (DataError, ConfigError), 1 for anything else (with its
    traceback).
    """
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - every error must end the process, reported once
        world, rank = int(os.environ.get("WORLD_SIZE", "1")), os.environ.get("RANK", "0")
        message = f"segdist: error: {exc}"
        if world > 1 and is_collective_failure(exc):
            lost = lost_ranks()
            who = f"rank(s) {', '.join(map(str, lost))}" if lost else "a peer rank"
            message = (f"segdist: error: rank {rank} lost contact with {who} (killed, crashed or unreachable); "
                       f"the collective failed with: {str(exc).splitlines()[0][:300]}")
        if first_to_report():
            if not isinstance(exc, USER_ERRORS) and not is_collective_failure(exc):
                traceback.print_exc()
            print_line(message, file=sys.stderr)
        raise SystemExit(2 if isinstance(exc, USER_ERRORS) else 1) from None
