"""`--out s3://...` with remote inputs: every task uploads its own shard, the driver publishes dataset.json last.

Who reads and writes what: the driver reads the annotation file or the listing (the source's job),
the store's dataset.json and listing, and the small shard records; each Ray task reads its own
inputs from the store and uploads its shard part(s), then its record, into the split's staging
prefix (store_staging.py). No byte of an image or a shard passes through the driver or a disk
shared between nodes, so the nodes need no shared filesystem. Once every shard of every split is
in, the parts are copied into place (server-side), dataset.json is written, shards the new
manifest no longer lists are deleted, and the staging prefixes are removed.

An interrupted run resumes from the records in the store; a run-stopping DataError removes what
this run uploaded (a failed upload keeps it: the same command resumes).
"""

from __future__ import annotations

import json

from segdist import storage
from segdist.errors import DataError
from segdist.format.manifest import MANIFEST, check_names
from segdist.prepare.driver import ResumableError, check_job, check_target, convert_splits
from segdist.prepare.fingerprint import fingerprint
from segdist.prepare.jobs import PrepareJob
from segdist.prepare.splits import check_converted, new_manifest, split_record
from segdist.prepare.store_staging import StoreStaging, delete_unlisted


def write_to_store(url: str, job: PrepareJob, *, workers: int | None = None, address: str | None = None,
                   overwrite: bool = False) -> dict:
    """Convert every split of `job` into shards under the s3:// prefix `url`, then publish dataset.json; returns it."""
    check_job(job, workers)
    url = url.rstrip("/")
    names = _listing(url)
    manifest = _manifest(url) if MANIFEST in names else None
    stagings = {split: StoreStaging(url, split, fingerprint(job, split)) for split in job.splits}
    for split, staging in stagings.items():
        staging.check((manifest or {"splits": {}})["splits"].get(split), overwrite, names)
    check_target(url, job, manifest, overwrite)
    opened = {split: staging.open() for split, staging in stagings.items()}
    try:
        records = convert_splits(job, stagings, workers, address)
        splits = {split: split_record(job, split, records[split], stagings[split].fp) for split in job.splits}
        check_converted(splits)
    except ResumableError as exc:
        raise DataError(f"{exc}; the shards finished are kept: rerun the same command to resume") from None
    except DataError:
        for split, staging in stagings.items():
            staging.rollback(*opened[split])
        raise
    return publish(url, job, manifest, stagings, splits, names)


def _listing(url: str) -> set[str]:
    if storage.kind(url) != "s3":
        raise DataError(f"--out {url}: prepare writes to a local directory or an s3:// prefix "
                        f"({storage.kind(url)} sources can only be read)")
    try:
        return {obj.name for obj in storage.list_objects(url, recursive=True)}
    except storage.ShardUnavailable as exc:
        raise DataError(f"cannot list --out {exc}") from None


def _manifest(url: str) -> dict:
    where = storage.join(url, MANIFEST)
    try:
        return check_names(storage.read_json(where), where)
    except (storage.ShardUnavailable, ValueError) as exc:
        raise DataError(f"cannot read {where}: {exc}") from None


def publish(url: str, job: PrepareJob, manifest: dict | None, stagings: dict[str, StoreStaging],
            splits: dict[str, dict], names: set[str]) -> dict:
    """Copy every split's parts into place, then write dataset.json, then delete what it no longer lists."""
    new = new_manifest(job, manifest, splits)
    try:
        for split, staging in stagings.items():
            staging.copy_into_place([part["name"] for part in splits[split]["shards"]])
        storage.publish_bytes((json.dumps(new, indent=1) + "\n").encode(), storage.join(url, MANIFEST))
    except storage.ShardUnavailable as exc:
        raise DataError(f"could not publish to {url}: {exc}; every shard is converted: rerun the same command "
                        "to publish") from None
    delete_unlisted(url, new, list(job.splits))
    for staging in stagings.values():
        staging.remove(names, with_others=True)
    return new
