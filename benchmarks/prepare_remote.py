"""The driver's peak memory of `segdist prepare` from S3 into S3 (issue 30), at two dataset sizes.

Synthetic COCO (segdist.synth.coco, --width x --height JPEGs) is put into moto's S3 server
(tests/servers.py) at each size; `segdist prepare coco --images s3://... --annotations s3://...
--out s3://...` then runs in a fresh process per size (its own local Ray cluster), which reports
its own peak resident memory (ru_maxrss: Ray's raylet and workers are other processes) and what
it read through segdist.storage. The tasks read the images and upload the shards, so the driver's
peak should stay flat while the images' bytes grow 8x.

    python benchmarks/prepare_remote.py [--sizes 50,400] [--width 640 --height 480] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # moto's server as the tests run it

from servers import moto_for_benchmark  # noqa: E402

BUCKET = "bench"


def driver(argv: list[str]) -> None:
    """Run `segdist prepare argv` here; print this process's peak RSS and what it read through storage."""
    from segdist.cli import main
    from segdist.storage import objects

    real, reads = objects.open_uncached, []

    def counted(url, *args, **kwargs):  # noqa: ANN001, ANN202
        reads.append(url)
        return real(url, *args, **kwargs)

    objects.open_uncached = counted
    main(["prepare", *argv])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("DRIVER " + json.dumps({"peak_mb": peak_mb, "reads": reads}))


def upload(root: Path, url: str) -> int:
    """Every file under `root` put at url/<relative path>; returns their bytes."""
    from segdist import storage

    files = [p for p in sorted(root.rglob("*")) if p.is_file()]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda p: storage.publish_file(p, f"{url}/{p.relative_to(root).as_posix()}"), files))
    return sum(p.stat().st_size for p in files)


def measure(work: Path, images: int, args: argparse.Namespace) -> dict:
    from segdist.synth.coco import write_synthetic_coco

    raw = work / f"coco{images}"
    write_synthetic_coco(raw, images=images, val_images=1, seed=0, width=args.width, height=args.height)
    prefix = f"s3://{BUCKET}/coco{images}"
    image_bytes = upload(raw / "train", f"{prefix}/train")
    upload(raw / "annotations", f"{prefix}/annotations")
    argv = ["coco", "--images", f"{prefix}/train", "--annotations", f"{prefix}/annotations/instances_train.json",
            "--classes", "person,bicycle,car", "--keep-empty", "--shard-size", "25", "--workers", str(args.workers),
            "--out", f"s3://{BUCKET}/shards{images}"]
    result = subprocess.run([sys.executable, __file__, "--driver", json.dumps(argv)], capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-4000:])
    line = next(line for line in result.stdout.splitlines() if line.startswith("DRIVER "))
    found = json.loads(line[len("DRIVER "):])
    return {"images": images, "image_mb": image_bytes / 2**20, **found}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50,400")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--driver", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.driver is not None:
        return driver(json.loads(args.driver))
    server = moto_for_benchmark(BUCKET)
    try:
        with tempfile.TemporaryDirectory(prefix="prepare-remote-") as work:
            rows = [measure(Path(work), int(n), args) for n in args.sizes.split(",")]
    finally:
        server.stop()
    for row in rows:
        images = [url for url in row["reads"] if not url.endswith(".json")]
        print(f"{row['images']:>6} images ({row['image_mb']:.1f} MB of JPEGs in the store): driver peak RSS "
              f"{row['peak_mb']:.0f} MB; the driver read {len(row['reads'])} object(s) through storage "
              f"({', '.join(sorted({Path(u).name for u in row['reads']}))}), {len(images)} of them not JSON")
    first, last = rows[0], rows[-1]
    print(f"peak ratio {last['images']}/{first['images']} images: {last['peak_mb'] / first['peak_mb']:.3f}x "
          f"(images {last['image_mb'] / first['image_mb']:.1f}x)")


if __name__ == "__main__":
    main()
