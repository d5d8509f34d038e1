"""A split's manifest entry, summed from its shard records, and the dataset.json that publishes the run."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from segdist.errors import DataError
from segdist.format.manifest import FORMAT, MANIFEST, label_dtype
from segdist.prepare.jobs import PrepareJob
from segdist.prepare.staging import Staging
from segdist.prepare.tally import Tally
from segdist.utils.files import write_json_atomic
from segdist.version import __version__


def split_record(job: PrepareJob, split: str, records: dict[int, dict], fp: str) -> dict:
    """The manifest entry of one split, summed from its shard records in shard order."""
    tally = Tally(len(job.classes))
    shards = []
    for index in sorted(records):
        tally.merge(Tally.from_json(len(job.classes), records[index]["tally"]))
        shards += records[index]["parts"]
    tally.skipped.update(job.unpaired)
    dropped: Counter = Counter()
    for spec in job.splits[split]:
        dropped.update(getattr(spec, "dropped", {}))
    mean, std = tally.mean_std()
    t = tally.to_json()
    details = t.pop("skipped_details")
    t.pop("channel_sum"), t.pop("channel_sumsq")
    return {**t, "shards": shards, "mean": mean, "std": std, "dropped_annotations": dict(sorted(dropped.items())),
            "skipped_examples": details, "source": job.source, "shard_size": job.shard_size,
            "shard_bytes": job.shard_bytes, "fingerprint": fp}


def check_converted(splits: dict[str, dict]) -> None:
    for split, rec in splits.items():
        if rec["samples"] == 0:
            example = next(iter(rec["skipped_examples"]), None)
            raise DataError(f"split '{split}': no input could be converted; skipped: {rec['skipped']}"
                            + (f"; e.g. {example[2]}" if example else ""))


def new_manifest(job: PrepareJob, manifest: dict | None, splits: dict[str, dict]) -> dict:
    """dataset.json after this run: the splits written replace theirs in `manifest` (the one in place, if any)."""
    new = {"format": FORMAT, "segdist": __version__, "classes": job.classes, "num_classes": len(job.classes),
           "palette": job.palette, "ignore_index": job.ignore_index,
           "label_dtype": label_dtype(len(job.classes), job.ignore_index).__name__,
           "splits": dict(manifest["splits"]) if manifest else {}}
    new["splits"].update(splits)
    new["splits"] = dict(sorted(new["splits"].items()))
    stats_split = "train" if "train" in new["splits"] else next(iter(new["splits"]))
    new["mean"], new["std"] = new["splits"][stats_split]["mean"], new["splits"][stats_split]["std"]
    return new


def publish(out: Path, job: PrepareJob, manifest: dict | None, stagings: dict[str, Staging],
            splits: dict[str, dict]) -> dict:
    """Move every split's shards into place, then write dataset.json and remove the staging directories."""
    new = new_manifest(job, manifest, splits)
    for staging in stagings.values():
        staging.mark_promoting()
    for split, staging in stagings.items():
        staging.move_into_place([part["name"] for part in splits[split]["shards"]])
    write_json_atomic(out / MANIFEST, new)
    for staging in stagings.values():
        staging.remove(with_others=True)
    return new
