"""One entry point: `segdist synth|prepare|stats|show|train|evaluate|predict|export|demo|env`."""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from segdist.sources.common import (
    DEFAULT_MAX_PIXELS,
    DataError,
    check_ignore_index,
    check_max_pixels,
    default_ignore_index,
    parse_classes,
)


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _ratios(text: str) -> dict[str, float]:
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not value:
            raise argparse.ArgumentTypeError(f"expected name=ratio, got '{part}'")
        out[name.strip()] = float(value)
    return out


def cmd_synth(args: argparse.Namespace) -> None:
    from segdist.sources import synthetic

    width, height = args.size or ((640, 480) if args.format == "coco" else (512, 256))
    write = synthetic.write_synthetic_coco if args.format == "coco" else synthetic.write_synthetic_cityscapes
    counts = write(Path(args.out), args.images, args.val_images, seed=args.seed, width=width, height=height)
    print(f"wrote synthetic {args.format} to {args.out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


if TYPE_CHECKING:
    from segdist.shards import PrepareJob


def _label_options(args: argparse.Namespace, num_classes: int) -> dict:
    """The options every source's converter takes: ignore index and pixel limit, checked."""
    ignore = args.ignore_index if args.ignore_index is not None else default_ignore_index(num_classes)
    return {"ignore_index": check_ignore_index(ignore, num_classes), "max_pixels": check_max_pixels(args.max_pixels)}


def _prepare_coco(args: argparse.Namespace) -> PrepareJob:
    from segdist.shards import PrepareJob
    from segdist.viz import default_palette
    from segdist.sources import coco

    annotations = Path(args.annotations)
    data = coco.load_annotations(annotations)
    cats = coco.resolve_classes(parse_classes(args.classes), data["categories"], annotations)
    specs, orphans = coco.build_specs(
        data, Path(args.images).resolve(), cats, crowd=args.crowd, keep_empty=args.keep_empty,
        per_class=args.per_class, seed=args.seed,
    )
    if not specs:
        raise DataError(f"{annotations}: nothing selected: no image holds an instance of {args.classes} (crowd regions "
                        f"{'count' if args.crowd == 'label' else 'do not count'}); --keep-empty keeps images "
                        "without; nothing was written")
    splits = coco.split_by_ratio(specs, args.splits, args.seed) if args.splits else {args.split: specs}
    classes = ["background"] + [c["name"] for c in cats]
    opts = coco.CocoOptions(num_classes=len(classes), overlap=args.overlap, crowd=args.crowd,
                            **_label_options(args, len(classes)))
    source = {
        "type": "coco", "images": args.images, "annotations": args.annotations,
        "category_ids": [c["id"] for c in cats], "overlap": args.overlap, "crowd": args.crowd,
        "keep_empty": args.keep_empty, "per_class": args.per_class, "splits": args.splits, "seed": args.seed,
        "max_pixels": opts.max_pixels,
    }
    if orphans:  # reported, but no input is skipped for them
        print(f"{annotations}: annotations pointing at no image: " + ", ".join(f"{k}={v}" for k, v in orphans.items()))
    return PrepareJob(splits, partial(coco.convert, opts=opts), classes, default_palette(len(classes)),
                      opts.ignore_index, source, args.shard_size, args.shard_bytes)


def _prepare_cityscapes(args: argparse.Namespace) -> PrepareJob:
    from segdist.shards import PrepareJob
    from segdist.sources import cityscapes

    specs = cityscapes.build_specs(Path(args.root).resolve(), args.split)
    if not specs:
        raise DataError(f"{Path(args.root) / 'leftImg8bit' / args.split}: nothing selected: no "
                        "*/*_leftImg8bit.png frames")
    classes = cityscapes.CLASSES
    opts = cityscapes.CityscapesOptions(image_format=args.image_format, **_label_options(args, len(classes)))
    source = {"type": "cityscapes", "root": args.root, "split": args.split, "image_format": args.image_format,
              "max_pixels": opts.max_pixels}
    return PrepareJob({args.split: specs}, partial(cityscapes.convert, opts=opts), classes, cityscapes.PALETTE,
                      opts.ignore_index, source, args.shard_size, args.shard_bytes)


def _prepare_folder(args: argparse.Namespace) -> PrepareJob:
    from segdist.shards import PrepareJob
    from segdist.viz import default_palette
    from segdist.sources import folder

    classes = parse_classes(args.classes)
    palette = folder.load_palette(Path(args.palette), classes) if args.palette else None
    specs, unpaired = folder.build_specs(Path(args.images).resolve(), Path(args.masks).resolve(), args.mask_suffix)
    if not specs:
        raise DataError(f"{args.images}: nothing selected: no image has a mask named "
                        f"<stem>{args.mask_suffix}.<ext> in {args.masks}")
    opts = folder.FolderOptions(
        num_classes=len(classes), source_ignore=args.source_ignore, unknown_to_ignore=args.unknown_to_ignore,
        palette=tuple(tuple(c) for c in palette) if palette else None, **_label_options(args, len(classes)),
    )
    source = {
        "type": "folder", "images": args.images, "masks": args.masks, "mask_suffix": args.mask_suffix,
        "source_ignore": args.source_ignore, "unknown_to_ignore": args.unknown_to_ignore, "palette": palette,
        "max_pixels": opts.max_pixels,
    }
    return PrepareJob({args.split: specs}, partial(folder.convert, opts=opts), classes,
                      palette or default_palette(len(classes)), opts.ignore_index, source, args.shard_size,
                      args.shard_bytes, unpaired)


def prepare_job(args: argparse.Namespace) -> PrepareJob:
    """What `segdist prepare SOURCE ...` will write, built from its arguments (nothing is written yet)."""
    build = {"coco": _prepare_coco, "cityscapes": _prepare_cityscapes, "folder": _prepare_folder}[args.source]
    return build(args)


def cmd_prepare(args: argparse.Namespace) -> None:
    from segdist import storage
    from segdist.shards import write_dataset
    from segdist.upload import prepare_to_store

    job = prepare_job(args)
    out = args.out if not storage.is_local(args.out) else Path(args.out)
    options = {"workers": args.workers, "address": args.address, "overwrite": args.overwrite}
    if isinstance(out, Path):
        manifest = write_dataset(out, job, **options)
    else:
        manifest = prepare_to_store(out, job, work_dir=args.work_dir, **options)
    print(f"\nprepared {out} ({len(job.classes)} classes, ignore index {job.ignore_index})")
    for split in job.splits:
        rec = manifest["splits"][split]
        line = f"  {split:<6} {rec['samples']:>6} samples  {len(rec['shards']):>4} shards"
        if rec["skipped"]:
            line += "  skipped: " + ", ".join(f"{k}={v}" for k, v in rec["skipped"].items())
        if rec["dropped_annotations"]:
            line += "  dropped annotations: " + ", ".join(f"{k}={v}" for k, v in rec["dropped_annotations"].items())
        print(line)


def cmd_stats(args: argparse.Namespace) -> None:
    from segdist.manifest import read_manifest, stats_table
    from segdist.viz import class_histogram

    shard_dir = Path(args.dir)
    manifest = read_manifest(shard_dir)
    splits = [args.split] if args.split else list(manifest["splits"])
    for split in splits:
        if split not in manifest["splits"]:
            raise DataError(f"{shard_dir} has no split '{split}'; it has {sorted(manifest['splits'])}")
        rec = manifest["splits"][split]
        print(stats_table(manifest, split) + "\n")
        png = Path(args.out or shard_dir) / f"class_hist_{split}.png"
        png.parent.mkdir(parents=True, exist_ok=True)
        class_histogram(manifest["classes"], rec["class_pixels"], rec["class_images"], png, f"{shard_dir.name} {split}")
        print(f"class histogram: {png}")


def cmd_show(args: argparse.Namespace) -> None:
    from segdist.augment import CorruptSample, decode
    from segdist.data import load_dataset_info
    from segdist.tarstream import Reader, ShardRange, Skips, range_samples
    from segdist.viz import colorize, overlay, panel, save_png

    info = load_dataset_info(args.dir)  # a directory or a URL prefix, as for training
    urls, records = info.shards(args.split)
    ranges = [ShardRange(url, 0, record["samples"]) for url, record in zip(urls, records)]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written, skips = 0, Skips()
    for sample in range_samples(ranges, skips, Reader()):
        if written >= args.n:
            break
        if isinstance(sample, int):  # a shard broke off: `sample` samples could not be read
            continue
        try:
            rgb, label = decode(sample)  # the stored pixel grid, as the label
        except CorruptSample as exc:
            raise DataError(str(exc)) from None
        colour = colorize(label, info.palette, info.ignore_index)
        save_png(panel(rgb, colour, overlay(rgb, colour, label)), out / f"{sample['__key__']}.png")
        written += 1
    unread = skips.take()
    print(f"wrote {written} image | mask | overlay panels to {out}"
          + (f" (could not read: {unread['skipped']})" if unread["skipped"] else ""))


def cmd_train(args: argparse.Namespace) -> None:
    from segdist.config import ConfigError, load_config
    from segdist.distributed import errors_reported_once
    from segdist.train import train

    overrides = [*args.overrides, *([f"train.budget={args.budget}"] if args.budget else [])]
    try:
        cfg = load_config(args.config, overrides)
    except (ConfigError, ValueError) as exc:
        raise DataError(str(exc)) from None
    with errors_reported_once():
        train(cfg, resume=args.resume)


def cmd_bench_data(args: argparse.Namespace) -> None:
    from segdist.benchdata import bench_data
    from segdist.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, ValueError) as exc:
        raise DataError(str(exc)) from None
    workers = [int(w) for w in args.workers.split(",")] if args.workers else None
    bench_data(cfg, workers, seconds=args.seconds)


def _tta(text: str):  # noqa: ANN202
    from segdist.inference import parse_tta

    try:
        return parse_tta(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _inference_options(args: argparse.Namespace) -> dict:
    from segdist.inference import NO_TTA, check_mode

    try:
        check_mode(args.mode, args.crop, args.stride)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return {"mode": args.mode, "crop": args.crop, "stride": args.stride, "tta": args.tta or NO_TTA}


def cmd_evaluate(args: argparse.Namespace) -> None:
    from segdist.distributed import errors_reported_once
    from segdist.evaluate import evaluate

    with errors_reported_once():
        evaluate(args.run, checkpoint=args.checkpoint, split=args.split, shards=args.shards,
                 batch_size=args.batch_size, workers=args.workers, tensorboard=args.tensorboard,
                 output_format=args.format, results_dir=args.out, **_inference_options(args))


def cmd_predict(args: argparse.Namespace) -> None:
    from segdist.predict import predict

    predict(args.run, args.input, args.out, checkpoint=args.checkpoint, batch_size=args.batch_size,
            workers=args.workers, output_format=args.format, **_inference_options(args))


def cmd_export(args: argparse.Namespace) -> None:
    from segdist.export import export

    export(args.run, args.format, args.out, checkpoint=args.checkpoint, tolerance=args.tolerance)


def cmd_demo(args: argparse.Namespace) -> None:
    import json
    import subprocess

    from segdist.manifest import read_manifest, stats_table
    from segdist.sources.synthetic import write_synthetic_coco

    shards = Path(args.workdir)
    raw = shards.with_name(shards.name + "_raw")
    print(f"[1/3] synthetic COCO -> {raw}")
    write_synthetic_coco(raw, args.images, seed=0, width=320, height=240)
    print(f"[2/3] segdist prepare coco (Ray) -> {shards}")
    common = ["--classes", "person,bicycle,car", "--out", str(shards), "--shard-size", "32", "--overwrite"]
    for split in ("train", "val"):
        main(["prepare", "coco", "--images", str(raw / split), "--annotations",
              str(raw / "annotations" / f"instances_{split}.json"), "--split", split, *common])
    manifest = read_manifest(shards)
    print("\n" + stats_table(manifest, "train"))
    print("\n[3/3] accelerate launch: 2 CPU processes (gloo) train configs/demo.yaml")
    run = Path("runs/demo")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "launch/cpu-2proc.yaml",
           "-m", "segdist", "train", "--config", "configs/demo.yaml", f"data.shards={shards}",
           f"train.epochs={args.epochs}"]
    print(" ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True)
    summary = json.loads((run / "summary.json").read_text())
    print(f"\ndemo done: val mIoU {summary['best_miou']:.3f} (best, step {summary['best_step']}) on "
          f"{manifest['splits']['val']['samples']} validation images, {summary['world_size']} processes")
    print(f"TensorBoard logs:      tensorboard --logdir {run / 'tb'}")
    print(f"validation overlays:   {run / 'val_overlays'}/*.png (image | ground truth | prediction)")
    print(f"checkpoints:           {run / 'checkpoints'}")


def cmd_env(args: argparse.Namespace) -> None:
    import os

    from segdist import env

    print(env.report() if os.environ.get("RANK", "0") == "0" else env.rank_line(), flush=True)


def build_parser() -> argparse.ArgumentParser:
    from segdist import __version__

    parser = argparse.ArgumentParser(prog="segdist", description=__doc__)
    parser.add_argument("--version", action="version", version=f"segdist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("synth", help="write a synthetic dataset in a real format (COCO or Cityscapes)")
    p.add_argument("format", choices=["coco", "cityscapes"])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, required=True, help="training images")
    p.add_argument("--val-images", type=int, default=None, help="validation images (default images/4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_size, default=None, help="WxH (default 640x480 COCO, 512x256 Cityscapes)")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("prepare", help="convert a dataset into WebDataset shards with Ray")
    src = p.add_subparsers(dest="source", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="dataset directory, e.g. shards/NAME, or s3://BUCKET/PREFIX")
    common.add_argument("--work-dir", default=None,
                        help="with an s3:// --out: where shards are converted before upload (default "
                             "~/.cache/segdist/prepare/<hash>; shared by every Ray node)")
    common.add_argument("--workers", type=int, default=None, help="Ray tasks at once (default: all cores)")
    common.add_argument("--address", default=None, help="existing Ray cluster (default: start a local one)")
    common.add_argument("--shard-size", type=int, default=256, help="samples per shard")
    common.add_argument("--shard-bytes", type=_bytes, default=None, help="also cap shard size, e.g. 512MB")
    common.add_argument("--ignore-index", type=int, default=None,
                        help="label value meaning 'ignore' (default 255, or 65535 with more than 255 classes)")
    common.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="skip (and count) images and masks larger than this (default: PIL's limit)")
    common.add_argument("--overwrite", action="store_true", help="replace the splits this run writes")

    c = src.add_parser("coco", parents=[common], help="COCO instances JSON + images")
    c.add_argument("--images", required=True)
    c.add_argument("--annotations", required=True)
    c.add_argument("--classes", required=True, help="comma-separated COCO names or ids; label = position")
    group = c.add_mutually_exclusive_group()
    group.add_argument("--split", default="train", help="split name for all selected images")
    group.add_argument("--splits", type=_ratios, default=None, help="seeded ratio split, e.g. train=0.8,val=0.2")
    c.add_argument("--per-class", type=_positive, default=None, help="at most N images per class (seeded)")
    c.add_argument("--seed", type=int, default=0, help="seed for --per-class and --splits")
    c.add_argument("--overlap", choices=["area", "order", "ignore", "ignore-between-classes"], default="area",
                   help="pixels of several instances: larger painted first (area), later class wins (order), "
                   "ignore index where 2+ instances meet (ignore, torchvision's rule) or 2+ classes meet")
    c.add_argument("--crowd", choices=["ignore", "label"], default="ignore")
    c.add_argument("--keep-empty", action="store_true", help="keep images with no selected instance")

    c = src.add_parser("cityscapes", parents=[common], help="Cityscapes leftImg8bit + gtFine (19 trainIds)")
    c.add_argument("--root", required=True)
    c.add_argument("--split", required=True, choices=["train", "val", "test"])
    c.add_argument("--image-format", choices=["png", "jpeg"], default="png")

    c = src.add_parser("folder", parents=[common], help="image folder + mask folder paired by stem")
    c.add_argument("--images", required=True)
    c.add_argument("--masks", required=True)
    c.add_argument("--classes", required=True, help="comma-separated names; mask value = position")
    c.add_argument("--split", default="train")
    c.add_argument("--source-ignore", type=int, default=None, help="mask value meaning 'ignore' in the source")
    c.add_argument("--unknown-to-ignore", action="store_true", help="out-of-range values/colours -> ignore")
    c.add_argument("--palette", default=None, help="JSON colours per class, for RGB/RGBA masks")
    c.add_argument("--mask-suffix", default="", help="mask stem = image stem + this")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("stats", help="print a dataset's class statistics and write a class histogram")
    p.add_argument("dir")
    p.add_argument("--split", default=None)
    p.add_argument("--out", default=None, help="folder for the PNG (default: the dataset directory)")
    p.set_defaults(func=cmd_stats)

    p = sub.add_parser("show", help="write image | mask | overlay PNGs read from the shards")
    p.add_argument("dir")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("train", help="train a model (single process, or under `accelerate launch`)")
    p.add_argument("--config", default=None, help="YAML recipe (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=0.01")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="continue from the latest complete checkpoint of the run (or from PATH)")
    p.add_argument("--budget", default=None,
                   help="wall-clock budget (50m, 1h30m, 01:30:00): train.max_steps is set to fit it (train.budget)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("bench-data", help="the training loader alone at full speed: images/s per process and core")
    p.add_argument("--config", default=None, help="YAML recipe (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--workers", default=None, help="worker counts to try, e.g. 1,2,4 (default: data.workers)")
    p.add_argument("--seconds", type=float, default=15.0, help="measuring time per worker count")
    p.set_defaults(func=cmd_bench_data)

    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--run", required=True, help="run directory written by `segdist train`, e.g. runs/NAME")
    run.add_argument("--checkpoint", default="best", help="best (default), last, or a checkpoint directory/file")
    infer = argparse.ArgumentParser(add_help=False)
    infer.add_argument("--mode", choices=["whole", "slide"], default="whole",
                       help="whole image at once, or overlapping windows averaged (slide)")
    infer.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=None, help="slide window size")
    infer.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), default=None, help="slide window step")
    infer.add_argument("--tta", type=_tta, default=None,
                       help="flip, or scales=0.5,0.75,1.0,1.25,1.5[,flip]: softmax averaged over the views")
    infer.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the run's data.workers)")

    p = sub.add_parser("evaluate", parents=[run, infer],
                       help="exact metrics of a run on a split (single process, or under `accelerate launch`)")
    p.add_argument("--split", default=None, help="default: the run's data.val_split")
    p.add_argument("--shards", default=None, help="dataset directory (default: the run's data.shards)")
    p.add_argument("--batch-size", type=int, default=None, help="per process (default: the run's data.val_batch_size)")
    p.add_argument("--tensorboard", action="store_true", help="also log figures and charts to the run's TensorBoard")
    p.add_argument("--format", choices=["segdist", "cityscapes"], default="segdist",
                   help="cityscapes: also write every prediction as a Cityscapes labelIds PNG into --out "
                        "(for cityscapesScripts' evalPixelLevelSemanticLabeling)")
    p.add_argument("--out", default=None, help="folder for --format cityscapes predictions")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", parents=[run, infer], help="class-id, colour and overlay images for image files")
    p.add_argument("--input", required=True, help="an image file, a folder, or a glob (quote it)")
    p.add_argument("--out", required=True, help="output folder (index/, color/, overlay/, or the labelIds PNGs)")
    p.add_argument("--format", choices=["segdist", "cityscapes"], default="segdist",
                   help="segdist: index/, color/, overlay/; cityscapes: labelIds PNGs named "
                        "<city>_<seq>_<frame>_leftImg8bit.png for the benchmark server")
    p.add_argument("--batch-size", type=int, default=4)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", parents=[run], help="ONNX or TorchScript with dynamic height/width, checked")
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--out", default=None, help="file (default: RUN/export/model.onnx or model.torchscript.pt)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max abs logit difference allowed by the check")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("demo", help="the built-in default job on synthetic data")
    p.add_argument("--workdir", default="shards/demo")
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--epochs", type=int, default=8)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("env", help="versions of the stack, devices and process layout (for bug reports)")
    p.set_defaults(func=cmd_env)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except DataError as exc:
        print(f"segdist: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
