"""Training-step speed of decoders and CPU encoders, in fp32 and bf16 autocast, on this machine (issue 31).

One rank's share of the CamVid recipe's step: a batch of 4 random 192x256 crops, 11 classes,
forward, cross-entropy, backward and an AdamW update, channels-last, on the threads one of the
recipe's two processes gets (1 of 2 cores). Each model is timed `--repeat` times over `--steps`
steps after 2 warm-up steps, alternating fp32 and bf16 so both see the same host; medians are
reported as steps per minute and as a ratio against the recipe's U-Net ResNet-18 in fp32
measured in the same run. Accuracy is not measured here (benchmarks/camvid_proxy.py trains).

    python benchmarks/model_speed.py [--steps 8] [--repeat 3] [--threads 1] [--only unet:resnet18,...]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import time
from pathlib import Path

import torch

from segdist.models import build_model

BASELINE = ("unet", "resnet18", None)
MODELS = [  # (arch, encoder, decoder_channels or None: smp's default)
    BASELINE,
    ("unet", "resnet18", [128, 64, 32, 16, 8]),
    ("linknet", "resnet18", None),
    ("fpn", "resnet18", None),
    ("deeplabv3plus", "resnet18", None),
    ("unet", "resnet18d", None),
    ("unet", "regnetx_004", None),
    ("unet", "regnetx_006", None),
    ("unet", "mobilenetv4_conv_small", None),
    ("unet", "mobilenetv4_conv_medium", None),
    ("unet", "efficientnet_lite0", None),
    ("unet", "ghostnet_100", None),
    ("fpn", "regnetx_006", None),
    ("linknet", "mobilenetv4_conv_medium", None),
]


def label(arch: str, encoder: str, channels: list[int] | None) -> str:
    return f"{arch}:{encoder}" + (f" decoder_channels={channels}" if channels else "")


def step_seconds(arch: str, encoder: str, channels: list[int] | None, precision: str, steps: int) -> float:
    """Median seconds of one training step after 2 warm-up steps."""
    torch.manual_seed(0)
    kwargs = {"decoder_channels": channels} if channels else {}
    model = build_model(arch, encoder, 11, arch_kwargs=kwargs).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    images = torch.randn(4, 3, 192, 256).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 11, (4, 192, 256))
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = model(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def cpu_line() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    name = re.search(r"Model name:\s*(.*)", text)
    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in text]
    return f"{name.group(1).strip() if name else 'unknown CPU'}; native bf16: {', '.join(bf16) or 'none'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (the recipe: 1 per process)")
    parser.add_argument("--only", default=None, help="arch:encoder,... (default: the whole list)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    models = [m for m in MODELS if args.only is None or f"{m[0]}:{m[1]}" in args.only.split(",") or m == BASELINE]
    seconds: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeat):
        for arch, encoder, channels in models:
            for precision in ("no", "bf16"):
                seconds.setdefault(label(arch, encoder, channels), {}).setdefault(precision, []).append(
                    step_seconds(arch, encoder, channels, precision, args.steps))
    medians = {name: {p: statistics.median(v) for p, v in by.items()} for name, by in seconds.items()}
    base = medians[label(*BASELINE)]["no"]
    print(f"{cpu_line()}; {args.threads} thread(s); batch 4 x 192x256; medians of {args.repeat} x {args.steps} steps")
    print("| model | params (M) | fp32 steps/min | bf16 steps/min | fp32 vs U-Net R18 fp32 | bf16 vs U-Net R18 fp32 |")
    print("|---|---:|---:|---:|---:|---:|")
    for (arch, encoder, channels), name in zip(models, medians):
        kwargs = {"decoder_channels": channels} if channels else {}
        params = sum(p.numel() for p in build_model(arch, encoder, 11, arch_kwargs=kwargs).parameters()) / 1e6
        fp32, bf16 = medians[name]["no"], medians[name]["bf16"]
        print(f"| {name} | {params:.1f} | {60 / fp32:.0f} | {60 / bf16:.0f} "
              f"| {base / fp32:.2f}x | {base / bf16:.2f}x |")
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu_line(), "threads": args.threads, "seconds": seconds}, indent=1))


if __name__ == "__main__":
    main()
