"""`segdist verify`: every shard dataset.json lists, checked to exist with its recorded size and sha256.

Works on a local directory or a URL prefix (read through segdist.storage, with its retries). A
local shard of the wrong size is reported without being read; every other shard is streamed once
and hashed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from segdist import storage
from segdist.data.info import DatasetInfo, load_dataset_info, split_names
from segdist.format.manifest import shard_digest
from segdist.utils.checksums import Digest, stream_digest
from segdist.utils.secrets import redact

OK, MISSING, SIZE, HASH, UNCHECKED, UNREADABLE = (
    "ok", "missing", "size mismatch", "hash mismatch", "no checksum recorded", "unreadable")
BAD = (MISSING, SIZE, HASH, UNREADABLE)  # "no checksum recorded" is reported, not a failure: nothing is wrong


@dataclass(frozen=True)
class ShardCheck:
    split: str
    name: str
    status: str
    detail: str = ""


def verify_dataset(shards: str | Path, splits: str | Sequence[str] | None = None,
                   retry: storage.RetryPolicy = storage.RetryPolicy()) -> list[ShardCheck]:
    """One check per shard of `splits` (default: every split) of the dataset at `shards`."""
    info = load_dataset_info(shards)
    names = split_names(splits) if splits is not None else list(info.manifest["splits"])
    todo = [(split, shard) for split in names for shard in info.split(split)["shards"]]
    total = sum(digest.size for _, shard in todo if (digest := shard_digest(shard)) is not None)
    with tqdm(total=total or None, desc="verify", unit="B", unit_scale=True, dynamic_ncols=True) as bar:
        return [check_shard(info, split, shard, retry, bar.update) for split, shard in todo]


def check_shard(info: DatasetInfo, split: str, record: dict, retry: storage.RetryPolicy,
                progress: Callable[[int], object] | None = None) -> ShardCheck:
    """Whether one shard is there and is what `record` (its manifest entry) says; `progress(bytes read)`."""
    name, url, expected = record["name"], info.shard_url(record["name"]), shard_digest(record)
    if storage.is_local(url):
        if not Path(url).is_file():
            return ShardCheck(split, name, MISSING, f"{url} does not exist")
        size = Path(url).stat().st_size
        if expected is not None and size != expected.size:  # found without reading it
            return ShardCheck(split, name, SIZE, expected.mismatch(Digest(size)))
    try:
        with storage.open_stream(url, retry=retry, stats=storage.StorageStats()) as stream:
            actual = stream_digest(stream, progress)
    except storage.ShardUnavailable as exc:
        return ShardCheck(split, name, MISSING if _absent(url, retry) else UNREADABLE, redact(exc))
    return _compare(split, name, expected, actual)


def _compare(split: str, name: str, expected: Digest | None, actual: Digest) -> ShardCheck:
    problem = expected.mismatch(actual) if expected is not None else None
    if problem is not None:
        return ShardCheck(split, name, SIZE if actual.size != expected.size else HASH, problem)
    return ShardCheck(split, name, OK if expected is not None and expected.sha256 else UNCHECKED)


def _absent(url: str, retry: storage.RetryPolicy) -> bool:
    """Whether the store says the object is not there (a pipe: command cannot be asked)."""
    if storage.kind(url) == "pipe":
        return False
    try:
        return not storage.exists(url, retry=retry, stats=storage.StorageStats())
    except OSError:
        return False


def report(shards: str | Path, checks: list[ShardCheck]) -> str:
    """Per split, the count of each status; then one line per shard that is not ok."""
    lines = [f"verify {redact(shards)}: {len(checks)} shards"]
    for split in dict.fromkeys(c.split for c in checks):
        counts = Counter(c.status for c in checks if c.split == split)
        lines.append(f"  {split:<8}" + ", ".join(f"{counts[s]} {s}" for s in (OK, UNCHECKED, *BAD) if counts[s]))
    for c in checks:
        if c.status != OK:
            lines.append(f"  {c.name}: {c.status}" + (f" ({c.detail})" if c.detail else ""))
    unchecked = sum(c.status == UNCHECKED for c in checks)
    if unchecked:
        lines.append(f"  {unchecked} shard(s) have no sha256 in dataset.json (prepared by an older segdist): only "
                     "their presence (and size, where recorded) was checked; prepare again to record them")
    return "\n".join(lines)


def failed(checks: list[ShardCheck]) -> list[ShardCheck]:
    return [c for c in checks if c.status in BAD]
