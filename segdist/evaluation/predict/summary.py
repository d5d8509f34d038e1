"""What the processes of `segdist predict` did, counted over all of them and told once by the main process."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from segdist.distributed import agree
from segdist.errors import DataError
from segdist.evaluation.predict.outputs import OutputPlan
from segdist.evaluation.predict.ranks import gathered
from segdist.evaluation.predict.reading import Loaded
from segdist.utils.console import print_line
from segdist.utils.secrets import redact


@dataclass
class Tally:
    """One process's inputs: predicted and written, already done, unnamed by the format, unreadable (with why)."""

    written: list[str] = field(default_factory=list)
    done: list[str] = field(default_factory=list)
    unnamed: list[str] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)

    def count(self, item: Loaded) -> None:
        """Count an input that is not predicted: done, unnamed or unreadable."""
        if item.unnamed:
            self.unnamed.append(item.where)
        elif item.error is not None:
            self.unreadable.append((item.where, item.error))
        else:
            self.done.append(item.where)


def report(accelerator, tally: Tally, plan: OutputPlan, out: str, inputs: int) -> dict:  # noqa: ANN001
    """Print each rank's counts and, on the main process, the job's; returns this rank's lists and the job's totals.

    Raises a DataError on every rank when no input was written or found done.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    written, done, unnamed, unreadable = (int(n) for n in agree(
        accelerator, len(tally.written), len(tally.done), len(tally.unnamed), len(tally.unreadable)))
    if world > 1:
        print_line(f"[rank {rank}/{world}] wrote {len(tally.written)}, already done {len(tally.done)}, "
                   f"unreadable {len(tally.unreadable)}, unnamed {len(tally.unnamed)}")
    unnamed_all, unreadable_all = sorted(gathered(accelerator, tally.unnamed)), sorted(
        gathered(accelerator, tally.unreadable))
    if accelerator.is_main_process:
        tell(plan, redact(out), written, done, unnamed_all, unreadable_all)
    if not written and not done:
        raise DataError(f"none of the {inputs} input file(s) could be read")
    return result(tally, {"inputs": inputs, "written": written, "already_done": done, "unnamed": unnamed,
                          "unreadable": unreadable, "processes": world})


def report_whole(tally: Tally, plan: OutputPlan, out: str, inputs: int, processes: int) -> dict:
    """`report` for a tally that already holds the whole job's inputs (Ray: the driver collects every outcome)."""
    tell(plan, redact(out), len(tally.written), len(tally.done), sorted(tally.unnamed), sorted(tally.unreadable))
    if not tally.written and not tally.done:
        raise DataError(f"none of the {inputs} input file(s) could be read")
    return result(tally, {"inputs": inputs, "written": len(tally.written), "already_done": len(tally.done),
                          "unnamed": len(tally.unnamed), "unreadable": len(tally.unreadable), "processes": processes})


def result(tally: Tally, totals: dict) -> dict:
    """What `predict` returns: this process's lists and the job's totals."""
    return {"written": tally.written, "already_done": tally.done,
            "skipped": [(where, "its name holds no Cityscapes frame <city>_<seq>_<frame>") for where in tally.unnamed]
            + tally.unreadable,
            "totals": totals}


def tell(plan: OutputPlan, out: str, written: int, done: int, unnamed: list[str],
         unreadable: list[tuple[str, str]]) -> None:
    """The closing summary (main process)."""
    print(f"wrote {written} prediction(s) to {plan.where(out)}")
    if done:
        print(f"already done: {done} (every output already in {out}; --overwrite redoes them)")
    if unnamed:
        print(f"skipped {len(unnamed)} file(s) whose name holds no Cityscapes frame <city>_<seq>_<frame>:\n"
              + "\n".join(f"  {where}" for where in unnamed))
    if unreadable:
        print(f"skipped {len(unreadable)} unreadable file(s):\n"
              + "\n".join(f"  {where}: {why}" for where, why in unreadable))
    sys.stdout.flush()
