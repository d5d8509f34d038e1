"""Progressive resizing (`data.resize_schedule`): the run's steps cut into stages, each with its own scale.

`[[0.5, 0.7], [1.0, 0.3]]` draws the first 70% of the optimizer steps' crops from images scaled
by half (the `data.scale_range` factors times 0.5) and the last 30% around full size, as FixRes
fine-tunes at the test resolution. Every stage crops `data.crop_size`, so a step costs the same in
each and the budget's one calibration serves all of them; at half scale a crop of the same size
covers about four times as much of the frame.

The stages are fixed in optimizer steps once the run's step count is (session.start) and kept in
the checkpoints: a budget's later re-planning lengthens or shortens the last stage, and a resumed
run and every loader worker agree on the stage of each micro-batch.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


def plan_stages(schedule: Sequence[Sequence[float]], steps: int) -> list[list[float]]:
    """[[first optimizer step (0-based), scale], ...] of `schedule`'s [scale, share] stages in a run of `steps`."""
    stages, done = [], 0.0
    for scale, share in schedule:
        stages.append([round(done * steps), float(scale)])
        done += share
    return stages


def scale_at(stages: Sequence[Sequence[float]], update: int) -> float:
    """The scale of the stage that optimizer step `update` (0-based) belongs to."""
    return stages[max(0, bisect_right([first for first, _ in stages], update) - 1)][1]


def describe(stages: Sequence[Sequence[float]], steps: int) -> str:
    """'scale 0.5 for steps 1-700, scale 1 for steps 701-1000': the stages of a run of `steps` steps, 1-based."""
    ends = [int(first) for first, _ in stages[1:]] + [steps]
    return ", ".join(f"scale {scale:g} for steps {int(first) + 1}-{end}" for (first, scale), end in zip(stages, ends))
