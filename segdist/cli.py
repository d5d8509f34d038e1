"""One entry point: `segdist synth|prepare|verify|stats|show|train|bench-data|evaluate|predict|export|demo|env`.

The parser and one thin `cmd_*` function per command; each calls the package that does the work
(mostly through segdist.api, the same functions notebooks call).
"""

from __future__ import annotations

import argparse
import sys

from segdist.errors import ConfigError, DataError
from segdist.utils.secrets import redact
from segdist.utils.images import DEFAULT_MAX_PIXELS

DESCRIPTION = "One entry point: `segdist synth|prepare|verify|stats|show|train|evaluate|predict|export|demo|env`."


def _size(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    return int(w), int(h)


def _bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = text.strip().lower().removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def cmd_synth(args: argparse.Namespace) -> None:
    if args.like_train2017:
        counts = _synth_like_train2017(args)
    elif args.images is None or args.images_for or args.write_images is not None:
        raise DataError("synth: --images is required; --images-for and --write-images go with --like-train2017")
    else:
        if args.format == "coco":
            from segdist.synth.coco import write_synthetic_coco as write
        else:
            from segdist.synth.cityscapes import write_synthetic_cityscapes as write
        width, height = args.size or ((640, 480) if args.format == "coco" else (512, 256))
        counts = write(args.out, args.images, args.val_images, seed=args.seed, width=width, height=height)
    print(f"wrote synthetic {args.format} to {args.out}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def _synth_like_train2017(args: argparse.Namespace) -> dict:
    from segdist.synth.coco_large import TRAIN2017_IMAGES, write_coco_like_train2017

    if args.format != "coco" or args.size or args.val_images is not None:
        raise DataError("synth: --like-train2017 writes COCO train2017's image sizes and no val split (coco only, "
                        "without --size and --val-images)")
    images_for = [name.strip() for name in args.images_for.split(",")] if args.images_for else None
    return write_coco_like_train2017(args.out, args.images or TRAIN2017_IMAGES, seed=args.seed,
                                     images_for=images_for, write_images=args.write_images)


JOB_OPTIONS = ("ignore_index", "max_pixels", "shard_size", "shard_bytes")  # every source's job takes these
RUN_OPTIONS = ("workers", "address", "overwrite", "work_dir")


def _options(args: argparse.Namespace, names: tuple[str, ...] | list[str]) -> dict:
    return {name: getattr(args, name) for name in names}


def prepare_job(args: argparse.Namespace):  # noqa: ANN201 - a segdist.prepare.jobs.PrepareJob
    """What `segdist prepare SOURCE ...` will write, built from its arguments (nothing is written yet)."""
    from segdist.prepare.sources import SOURCES

    source = SOURCES[args.source]
    return source.job(**_options(args, [*source.keywords(), *JOB_OPTIONS]))


def cmd_prepare(args: argparse.Namespace) -> None:
    from segdist import api
    from segdist.prepare.sources import SOURCES

    options = _options(args, [*SOURCES[args.source].keywords(), *JOB_OPTIONS, *RUN_OPTIONS])
    api.prepare_dataset(args.source, args.out, **options)


def cmd_verify(args: argparse.Namespace) -> None:
    from segdist.data.verify import failed, report, verify_dataset

    checks = verify_dataset(args.dir, args.split)
    print(report(args.dir, checks))
    bad = failed(checks)
    if bad:
        raise DataError(f"{len(bad)} of {len(checks)} shards of {args.dir} are not what dataset.json records: "
                        + ", ".join(f"{c.name} ({c.status})" for c in bad))


def cmd_stats(args: argparse.Namespace) -> None:
    from segdist.format.class_stats import write_stats

    write_stats(args.dir, args.split, args.out)


def cmd_show(args: argparse.Namespace) -> None:
    from segdist.data.show import show

    show(args.dir, args.split, args.out, args.n, args.max_pixels)


def cmd_train(args: argparse.Namespace) -> None:
    from segdist import api
    from segdist.distributed import errors_reported_once

    overrides = [*args.overrides, *([f"train.budget={args.budget}"] if args.budget else [])]
    with errors_reported_once():
        api.train(args.config, resume=args.resume_from or ("latest" if args.resume else None),
                  overwrite=args.overwrite, resume_inexact=args.resume_inexact, overrides=overrides)


def cmd_bench_data(args: argparse.Namespace) -> None:
    from segdist.api import resolved_config
    from segdist.data.bench import bench_data
    from segdist.models.preflight import check_config

    cfg = check_config(resolved_config(args.config, args.overrides))
    workers = [int(w) for w in args.workers.split(",")] if args.workers else None
    bench_data(cfg, workers, seconds=args.seconds)


def _tta(text: str):  # noqa: ANN202
    from segdist.models.inference import parse_tta

    try:
        return parse_tta(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _inference_options(args: argparse.Namespace) -> dict:
    from segdist.models.inference import check_mode

    try:
        check_mode(args.mode, args.crop, args.stride)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    return {"mode": args.mode, "crop": args.crop, "stride": args.stride, "tta": args.tta}  # None: the run's model.tta


def cmd_evaluate(args: argparse.Namespace) -> None:
    from segdist.distributed import errors_reported_once
    from segdist.evaluation.evaluate import evaluate

    with errors_reported_once():
        evaluate(args.run, checkpoint=args.checkpoint, split=args.split, shards=args.shards,
                 batch_size=args.batch_size, workers=args.workers, tensorboard=args.tensorboard,
                 output_format=args.format, results_dir=args.out, max_pixels=args.max_pixels,
                 **_inference_options(args))


def cmd_predict(args: argparse.Namespace) -> None:
    from segdist.distributed import errors_reported_once
    from segdist.evaluation.predict import predict

    with errors_reported_once():
        if args.ray:
            from segdist.evaluation.predict.ray_pipeline import predict_on_ray

            if args.tile is not None:
                raise DataError("--tile runs in the plain predict (one process, or accelerate launch), not with --ray")

            predict_on_ray(args.run, args.input, args.out, checkpoint=args.checkpoint, batch_size=args.batch_size,
                           output_format=args.format, max_pixels=args.max_pixels, outputs=args.outputs,
                           probs_dtype=args.probs_dtype, overwrite=args.overwrite, shards=args.shards,
                           split=args.split, address=args.address, replicas=args.replicas,
                           cpus_per_replica=args.cpus_per_replica, **_inference_options(args))
            return
        predict(args.run, args.input, args.out, checkpoint=args.checkpoint, batch_size=args.batch_size,
                workers=args.workers, output_format=args.format, max_pixels=args.max_pixels, outputs=args.outputs,
                probs_dtype=args.probs_dtype, overwrite=args.overwrite, shards=args.shards, split=args.split,
                tile=args.tile, overlap=args.overlap, **_inference_options(args))


def cmd_export(args: argparse.Namespace) -> None:
    from segdist.evaluation.export import export

    export(args.run, args.format, args.out, checkpoint=args.checkpoint, tolerance=args.tolerance)


def cmd_demo(args: argparse.Namespace) -> None:
    from segdist.demo import demo

    demo(args.workdir, args.images, args.epochs)


def cmd_env(args: argparse.Namespace) -> None:
    import os

    from segdist import env

    print(env.report() if os.environ.get("RANK", "0") == "0" else env.rank_line(), flush=True)


def build_parser() -> argparse.ArgumentParser:
    from segdist.version import __version__

    parser = argparse.ArgumentParser(prog="segdist", description=DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"segdist {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_synth, _add_prepare, _add_verify, _add_stats, _add_show, _add_train, _add_bench_data):
        add(sub)
    run, infer = _run_options(), _inference_parser()
    _add_evaluate(sub, run, infer)
    _add_predict(sub, run, infer)
    _add_export(sub, run)
    _add_demo(sub)
    _add_env(sub)
    return parser


def _add_synth(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write a synthetic dataset in a real format (COCO or Cityscapes)")
    p.add_argument("format", choices=["coco", "cityscapes"])
    p.add_argument("--out", required=True)
    p.add_argument("--images", type=int, default=None,
                   help="training images (required, but for --like-train2017: 118287 by default)")
    p.add_argument("--val-images", type=int, default=None, help="validation images (default images/4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=_size, default=None, help="WxH (default 640x480 COCO, 512x256 Cityscapes)")
    p.add_argument("--like-train2017", action="store_true",
                   help="coco: an instances file the size and shape of COCO train2017 (80 classes, ~860k instances)")
    p.add_argument("--images-for", default=None, metavar="CLASSES",
                   help="with --like-train2017: write image files only for images holding one of these classes")
    p.add_argument("--write-images", type=int, default=None, metavar="N",
                   help="with --like-train2017: write image files for the first N images")
    p.set_defaults(func=cmd_synth)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    from segdist.prepare.sources import SOURCES

    p = sub.add_parser("prepare", help="convert a dataset into WebDataset shards with Ray")
    src = p.add_subparsers(dest="source", required=True)
    common = _prepare_options()
    for source in SOURCES.values():
        parser = src.add_parser(source.name, parents=[common], help=source.help, description=source.help)
        for flags, settings in source.options:
            parser.add_argument(*flags, **settings)
        if source.exclusive:
            group = parser.add_mutually_exclusive_group()
            for flags, settings in source.exclusive:
                group.add_argument(*flags, **settings)
    p.set_defaults(func=cmd_prepare)


def _prepare_options() -> argparse.ArgumentParser:
    """The options every `segdist prepare SOURCE` takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", required=True, help="dataset directory, e.g. shards/NAME, or s3://BUCKET/PREFIX")
    common.add_argument("--work-dir", default=None,
                        help="with an s3:// --out and local inputs: where shards are converted before upload "
                             "(default ~/.cache/segdist/prepare/<hash>; shared by every Ray node); with s3:// "
                             "inputs each task uploads its own shard and no work directory is used")
    common.add_argument("--workers", type=int, default=None, help="Ray tasks at once (default: all cores)")
    common.add_argument("--address", default=None, help="existing Ray cluster (default: start a local one)")
    common.add_argument("--shard-size", type=int, default=256, help="samples per shard")
    common.add_argument("--shard-bytes", type=_bytes, default=None, help="also cap shard size, e.g. 512MB")
    common.add_argument("--ignore-index", type=int, default=None,
                        help="label value meaning 'ignore' (default 255, or 65535 with more than 255 classes)")
    common.add_argument("--max-pixels", type=_max_pixels, default=DEFAULT_MAX_PIXELS,
                        help="skip (and count) images and masks larger than this (default: PIL's limit)")
    common.add_argument("--overwrite", action="store_true", help="replace the splits this run writes")
    return common


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="check every shard of a dataset against dataset.json (present, size, sha256)")
    p.add_argument("dir", help="dataset directory or URL prefix (http(s)://, s3://, pipe:)")
    p.add_argument("--split", action="append", default=None, help="only this split (repeatable; default: all)")
    p.set_defaults(func=cmd_verify)


def _add_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("stats", help="print a dataset's class statistics and write a class histogram")
    p.add_argument("dir")
    p.add_argument("--split", default=None)
    p.add_argument("--out", default=None, help="folder for the PNG (default: the dataset directory)")
    p.set_defaults(func=cmd_stats)


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="write image | mask | overlay PNGs read from the shards")
    p.add_argument("dir")
    p.add_argument("--split", default="train")
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--out", required=True)
    p.add_argument("--max-pixels", type=_max_pixels, default=DEFAULT_MAX_PIXELS,
                   help="skip (and name) samples larger than this, read from the header (default: PIL's limit)")
    p.set_defaults(func=cmd_show)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (single process, or under `accelerate launch`)")
    p.add_argument("--config", default=None, help="YAML recipe (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=0.01")
    run_dir = p.add_mutually_exclusive_group()
    run_dir.add_argument("--resume", action="store_true",
                         help="continue the run (train.name) from its latest complete checkpoint")
    run_dir.add_argument("--resume-from", metavar="PATH", default=None,
                         help="continue the run from this checkpoint directory (runs/NAME/checkpoints/step_N)")
    run_dir.add_argument("--overwrite", action="store_true",
                         help="delete an earlier run of the same train.name and start over (without this, "
                              "--resume or --resume-from, a run directory with checkpoints is refused)")
    p.add_argument("--resume-inexact", action="store_true",
                   help="with --resume/--resume-from: go on when the checkpoint's RNG states cannot be restored "
                        "(said once; dropout and other random layers then draw differently, the sample order "
                        "and augmentation are kept); without it such a checkpoint is refused")
    p.add_argument("--budget", default=None,
                   help="wall-clock budget (50m, 1h30m, 01:30:00): train.max_steps is set to fit it (train.budget)")
    p.set_defaults(func=cmd_train)


def _add_bench_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench-data", help="the training loader alone at full speed: images/s per process and core")
    p.add_argument("--config", default=None, help="YAML recipe (configs/*.yaml)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides")
    p.add_argument("--workers", default=None, help="worker counts to try, e.g. 1,2,4 (default: data.workers)")
    p.add_argument("--seconds", type=float, default=15.0, help="measuring time per worker count")
    p.set_defaults(func=cmd_bench_data)


def _run_options() -> argparse.ArgumentParser:
    """--run and --checkpoint, shared by evaluate, predict and export."""
    run = argparse.ArgumentParser(add_help=False)
    run.add_argument("--run", required=True, help="run directory written by `segdist train`, e.g. runs/NAME")
    run.add_argument("--checkpoint", help="best, last, or a checkpoint directory/file (default: the run's "
                     "model.checkpoint, best unless the recipe says last)")
    return run


def _inference_parser() -> argparse.ArgumentParser:
    """--mode, --crop, --stride, --tta and --workers, shared by evaluate and predict."""
    infer = argparse.ArgumentParser(add_help=False)
    infer.add_argument("--mode", choices=["whole", "slide"], default="whole",
                       help="whole image at once, or overlapping windows averaged (slide)")
    infer.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"), default=None, help="slide window size")
    infer.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"), default=None, help="slide window step")
    infer.add_argument("--tta", type=_tta, default=None,
                       help="none, flip, or scales=0.5,0.75,1.0,1.25,1.5[,flip]: softmax averaged over the views "
                            "(default: the run's model.tta)")
    infer.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the run's data.workers)")
    infer.add_argument("--max-pixels", type=_max_pixels, default=None,
                       help="skip (and name) images larger than this, read from the header before decoding "
                            "(default: the run's data.max_pixels)")
    return infer


def _max_pixels(text: str) -> int:
    from segdist.utils.images import check_max_pixels

    try:
        return check_max_pixels(int(text))
    except (ValueError, DataError) as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_evaluate(sub: argparse._SubParsersAction, run: argparse.ArgumentParser,
                  infer: argparse.ArgumentParser) -> None:
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


def _add_predict(sub: argparse._SubParsersAction, run: argparse.ArgumentParser, infer: argparse.ArgumentParser) -> None:
    p = sub.add_parser("predict", parents=[run, infer],
                       help="class-id, colour, overlay and probability images for image files or a split "
                            "(single process, or under `accelerate launch`)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", default=None,
                        help="an image file, a folder, a glob (quote it), @LIST (a file naming one path or URL a "
                             "line), or an http(s):// or s3:// image URL or s3:// prefix")
    source.add_argument("--shards", default=None, help="a prepared dataset (folder or URL): predict a split's images")
    p.add_argument("--split", default=None, help="with --shards: the split; outputs are named by sample key")
    p.add_argument("--out", required=True,
                   help="output folder or s3:// prefix (index/, color/, overlay/, probs/, or the labelIds PNGs)")
    p.add_argument("--format", choices=["segdist", "cityscapes"], default="segdist",
                   help="segdist: the --outputs folders; cityscapes: labelIds PNGs named "
                        "<city>_<seq>_<frame>_leftImg8bit.png for the benchmark server")
    p.add_argument("--outputs", default=None,
                   help="comma-separated: index, color, overlay, probs (default index,color,overlay); probs: "
                        "probs/<stem>.npz, per-class softmax probabilities at the image's size")
    p.add_argument("--probs-dtype", choices=["uint8", "float16"], default="uint8",
                   help="uint8 (default: probability x 255, rounded) or float16")
    p.add_argument("--overwrite", action="store_true",
                   help="predict again the inputs whose outputs are all in --out (default: skip them, i.e. "
                        "resume; done is judged by file names, so pass it after changing the checkpoint or TTA)")
    p.add_argument("--batch-size", type=int, default=4,
                   help="images read ahead and written per step, per process (each is predicted alone)")
    p.add_argument("--tile", type=int, nargs=2, metavar=("H", "W"), default=None,
                   help="images of any size: slide windows of H x W, one row of windows held at a time, files "
                        "written as rows finish (index and color; BigTIFF past PIL's pixel limit)")
    p.add_argument("--overlap", type=int, default=0, metavar="P", help="with --tile: pixels shared by neighbours")
    ray = p.add_argument_group("on a Ray cluster (Ray Data: decode tasks, an actor pool of model replicas)")
    ray.add_argument("--ray", action="store_true", help="predict as a Ray Data pipeline (a local cluster by default)")
    ray.add_argument("--address", default=None, help="with --ray: join this cluster (e.g. auto, or HOST:6379)")
    ray.add_argument("--replicas", type=int, default=None,
                     help="with --ray: model replicas (default: one per GPU, or as many as the CPUs fit)")
    ray.add_argument("--cpus-per-replica", type=float, default=1,
                     help="with --ray: CPUs (and torch threads) per replica (default 1)")
    p.set_defaults(func=cmd_predict)


def _add_export(sub: argparse._SubParsersAction, run: argparse.ArgumentParser) -> None:
    p = sub.add_parser("export", parents=[run], help="ONNX or TorchScript with dynamic height/width, checked")
    p.add_argument("--format", choices=["onnx", "torchscript"], required=True)
    p.add_argument("--out", default=None, help="file (default: RUN/export/model.onnx or model.torchscript.pt)")
    p.add_argument("--tolerance", type=float, default=1e-3, help="max abs logit difference allowed by the check")
    p.set_defaults(func=cmd_export)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the built-in default job on synthetic data")
    p.add_argument("--workdir", default="shards/demo")
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--epochs", type=int, default=8)
    p.set_defaults(func=cmd_demo)


def _add_env(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("env", help="versions of the stack, devices and process layout (for bug reports)")
    p.set_defaults(func=cmd_env)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and isinstance(getattr(args, "overrides", None), list) and all(
            "=" in a and not a.startswith("-") for a in extra):
        args.overrides += extra  # overrides on both sides of a flag: `a=1 --resume b=2`
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        args.func(args)
    except (DataError, ConfigError) as exc:
        print(f"segdist: error: {redact(exc)}", file=sys.stderr)  # a credential in a URL shows as ***
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
