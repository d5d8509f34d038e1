"""How far the budget's calibration strays between repeats: several calibrations in one training process.

Sets up `segdist train` for a recipe (2 CPU processes under accelerate launch), then calls
`segdist.training.budget.calibrate` several times in a row and prints each step time. On this machine the
CamVid recipe gave 1.76, 1.94, 2.01 s (6, 6, 20 steps) and 1.87, 2.05, 1.99 s (10+8, 20+2, 10+8
steps+warmup) where its training steps took ~1.95-2.0 s: the reason the budget checks the plan
once against the measured pace (docs/results.md).

    accelerate launch --config_file launch/cpu-2proc.yaml benchmarks/calibration_noise.py \\
        --config configs/camvid-cpu-50m.yaml data.shards=/tmp/camvid-v4/shards
"""

from __future__ import annotations

import argparse
import time

from segdist.config import load_config
from segdist.training import budget, session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--repeats", default="6:2,6:2,20:2", help="steps:warmup of each calibration, in order")
    parser.add_argument("--runs", default="/tmp/calibration-noise", help="a folder every process sees alike")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = load_config(args.config, [*args.overrides, f"train.runs_dir={args.runs}", "train.name=noise",
                                    "train.max_steps=5", "train.budget=null"])
    s = session.setup(cfg, None, started=time.time())
    for spec in args.repeats.split(","):
        steps, warmup = (int(v) for v in spec.split(":"))
        costs = budget.calibrate(s, steps=steps, warmup=warmup)
        s.say(f"calibration of {steps} steps after {warmup} warm-up steps: {costs.step:.3f} s a step")


if __name__ == "__main__":
    main()
