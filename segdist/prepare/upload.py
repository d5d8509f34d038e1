"""`segdist prepare --out s3://bucket/prefix`: convert in a local work directory, then upload.

The conversion is exactly the local one (`shards.write_dataset`, with its staging, rollback and
shard-by-shard resume) into a work directory that mirrors the store. Then every shard of the
splits written is uploaded (an object-store PUT is whole or absent), `dataset.json` last, and
only then are shards of those splits that the new manifest no longer lists deleted. Which
objects are uploaded is recorded in the work directory, so an interrupted upload resumes where it
stopped without converting again. The work directory is removed once the store holds the
dataset. On a multi-node Ray cluster it must be on a filesystem every node sees, as `--out` is.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from segdist import storage
from segdist.errors import DataError
from segdist.format.manifest import MANIFEST
from segdist.prepare.driver import write_dataset
from segdist.prepare.fingerprint import fingerprint
from segdist.prepare.jobs import PrepareJob
from segdist.prepare.store_staging import delete_unlisted
from segdist.utils.files import write_json_atomic

UPLOADED = ".uploaded.json"  # {"fingerprints": {split: fp}, "objects": {name: bytes}} of this work directory
PARALLEL_UPLOADS = 8


def default_work_dir(url: str) -> Path:
    """~/.cache/segdist/prepare/<hash of the URL> (SEGDIST_WORK_DIR overrides the parent)."""
    parent = Path(os.environ.get("SEGDIST_WORK_DIR", Path.home() / ".cache/segdist/prepare"))
    return parent / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def prepare_to_store(url: str, job: PrepareJob, *, work_dir: Path | None = None, workers: int | None = None,
                     address: str | None = None, overwrite: bool = False) -> dict:
    """Write `job` to the object-store prefix `url` (through `work_dir`); returns the manifest uploaded."""
    if storage.kind(url) != "s3":
        raise DataError(f"--out {url}: prepare writes to a local directory or an s3:// prefix "
                        f"({storage.kind(url)} sources can only be read)")
    work = Path(work_dir or default_work_dir(url)).resolve()
    work.mkdir(parents=True, exist_ok=True)
    wanted = {split: fingerprint(job, split) for split in job.splits}
    manifest = _converted(work, wanted)
    if manifest is None:  # nothing converted for these inputs yet: mirror the store, then convert
        _mirror_manifest(url, work)
        manifest = write_dataset(work, job, workers=workers, address=address, overwrite=overwrite)
    else:
        print(f"{work}: the splits {', '.join(job.splits)} are already converted for these inputs; uploading")
    upload(work, url, manifest, list(job.splits))
    shutil.rmtree(work, ignore_errors=True)
    return manifest


def _converted(work: Path, wanted: dict[str, str]) -> dict | None:
    """The work directory's manifest when it holds exactly these splits converted from these inputs."""
    try:
        manifest = json.loads((work / MANIFEST).read_text())
        uploaded = json.loads((work / UPLOADED).read_text())
    except (OSError, ValueError):
        return None
    if uploaded.get("fingerprints") != wanted:
        return None
    splits = manifest.get("splits", {})
    return manifest if all(splits.get(s, {}).get("fingerprint") == fp for s, fp in wanted.items()) else None


def _mirror_manifest(url: str, work: Path) -> None:
    """Make the work directory hold what the store holds: its manifest, no shards of an older attempt."""
    for path in work.glob("*.tar"):
        path.unlink()
    (work / UPLOADED).unlink(missing_ok=True)
    remote = storage.join(url, MANIFEST)
    if storage.exists(remote):
        write_json_atomic(work / MANIFEST, storage.read_json(remote))
    else:
        (work / MANIFEST).unlink(missing_ok=True)


def upload(work: Path, url: str, manifest: dict, splits: list[str]) -> None:
    """Upload the shards of `splits` not uploaded yet, then the manifest, then delete what it no longer lists."""
    record_path = work / UPLOADED
    record = {"fingerprints": {s: manifest["splits"][s]["fingerprint"] for s in splits}, "objects": {}}
    if record_path.exists():
        record["objects"] = json.loads(record_path.read_text()).get("objects", {})
    write_json_atomic(record_path, record)
    parts = [part for split in splits for part in manifest["splits"][split]["shards"]]
    todo = [part for part in parts if record["objects"].get(part["name"]) != part["bytes"]]

    def put(part: dict) -> dict:
        storage.publish_file(work / part["name"], storage.join(url, part["name"]))
        return part

    failures = []
    with ThreadPoolExecutor(PARALLEL_UPLOADS) as pool, \
            tqdm(total=len(parts), initial=len(parts) - len(todo), desc="upload", unit="shard") as bar:
        for future in as_completed([pool.submit(put, part) for part in todo]):
            try:
                part = future.result()
            except storage.ShardUnavailable as exc:
                failures.append(exc)
                continue
            record["objects"][part["name"]] = part["bytes"]
            write_json_atomic(record_path, record)
            bar.update()
    if failures:
        raise DataError(f"could not upload to {url}: {failures[0]}; {len(record['objects'])} of {len(parts)} shards "
                        "are up; rerun the same command to upload the rest (no conversion is redone)")
    storage.publish_file(work / MANIFEST, storage.join(url, MANIFEST))  # last: readers see the new dataset whole
    delete_unlisted(url, manifest, splits)

