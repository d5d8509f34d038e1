"""The hidden prefix in an object store where one split is written before its shards are copied into place.

`URL/.<split>.<fingerprint>.partial/` holds each finished shard's tar part(s) and its record
`<split>-%06d.json`, both uploaded by the task that converted the shard, the record last. A shard
is done when its record is there and its parts have the recorded sizes, so an interrupted run
resumes shard by shard; its fingerprint covers the inputs, so another run's prefix is never
mixed in. Nothing is written under a final name before the split is complete: then each part is
copied into place (server-side), dataset.json is written, and the prefix is removed. No
temporaries: a task's unfinished part lives on its own node's disk.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from segdist import storage
from segdist.errors import DataError
from segdist.format.manifest import MANIFEST
from segdist.utils.files import is_plain_name

PARALLEL_REQUESTS = 8  # reads of records, copies and deletes at once


def each(function, items: Iterable) -> list:  # noqa: ANN001 - any one-argument function
    """`function` over `items` with a few requests in flight at once (each is a round trip)."""
    with ThreadPoolExecutor(PARALLEL_REQUESTS) as pool:
        return list(pool.map(function, items))


def shard_names(split: str) -> re.Pattern:
    """The names of a split's shard parts: train-000000.tar, train-000003_1.tar."""
    return re.compile(rf"{re.escape(split)}-\d+(_\d+)?\.tar")


class StoreStaging:
    """One split's staging prefix: the steps of staging.Staging, on objects (a record is whole or absent)."""

    def __init__(self, url: str, split: str, fp: str):
        self.url, self.split, self.fp = url.rstrip("/"), split, fp
        self.name = f".{split}.{fp}.partial"
        self.dir = f"{self.url}/{self.name}"

    def _own(self, names: Iterable[str]) -> list[str]:
        """Of the names under the dataset's prefix, those in this staging prefix (relative to it)."""
        return sorted(n[len(self.name) + 1:] for n in names if n.startswith(self.name + "/"))

    def _others(self, names: Iterable[str]) -> list[str]:
        """Staging prefixes of this split left by runs with other inputs or options."""
        other = re.compile(rf"\.{re.escape(self.split)}\.[0-9a-f]+\.partial")
        found = {n.split("/", 1)[0] for n in names if "/" in n}
        return sorted(p for p in found if other.fullmatch(p) and p != self.name)

    def check(self, in_manifest: dict | None, overwrite: bool, names: set[str]) -> None:
        """Refuse leftovers this run would mix with, unless --overwrite; drop what a finished run left behind.

        `names`: every object under the dataset's prefix, as listed when the run started.
        """
        own = self._own(names)
        if in_manifest is not None and in_manifest.get("fingerprint") == self.fp and own:
            self._delete(own)  # that run wrote dataset.json and stopped before cleaning up
            own = []
        if overwrite:
            return
        others = self._others(names)
        if others:
            raise DataError(
                f"{self.url} holds an interrupted run of split '{self.split}' with other inputs or options "
                f"({others[0]}); rerun it with the same ones to finish it, or pass --overwrite"
            )
        stray = sorted(n for n in names if shard_names(self.split).fullmatch(n))
        if stray and in_manifest is None and not own:
            raise DataError(f"{self.url} already holds {stray[0]} and others that {MANIFEST} does not "
                            "list; pass --overwrite to replace them")

    def open(self) -> tuple[bool, set[str]]:
        """Nothing to create in a store: returns (whether the prefix was empty, the names it held) for a rollback."""
        held = set(self._listing())
        return not held, held

    def _listing(self) -> dict[str, int]:
        return {obj.name: obj.size for obj in storage.list_objects(self.dir)}

    def completed(self) -> dict[int, dict]:
        """Records of the shards already done, by shard index."""
        sizes = self._listing()
        names = [n for n in sizes if re.fullmatch(rf"{re.escape(self.split)}-\d+\.json", n)]
        done = {}
        for record in each(self._read_record, names):
            if record is not None and all(self._present(part, sizes) for part in record.get("parts", ())):
                done[record["index"]] = record
        return done

    def _read_record(self, name: str) -> dict | None:
        try:
            record = storage.read_json(storage.join(self.dir, name))
        except (storage.ShardUnavailable, ValueError):
            return None  # converted again
        return record if isinstance(record, dict) and isinstance(record.get("index"), int) else None

    @staticmethod
    def _present(part: dict, sizes: dict[str, int]) -> bool:
        # a record is data read from the store: its names must stay plain file names inside the prefix
        return is_plain_name(part.get("name")) and sizes.get(part["name"]) == part.get("bytes")

    def remove_temporaries(self) -> None:
        """Nothing to do: a task writes its unfinished parts on its own node's disk."""

    def rollback(self, created: bool, held: set[str]) -> None:
        """Leave the staging prefix as it was before this run: empty if this run began it."""
        self._delete(sorted(set(self._listing()) - held))  # `held` is empty where this run began it

    def copy_into_place(self, names: list[str]) -> None:
        """Copy the staged parts to their final names (server-side; again after a crash: the same bytes)."""
        each(lambda name: storage.copy_object(storage.join(self.dir, name), storage.join(self.url, name)), names)

    def remove(self, names: set[str], with_others: bool = False) -> None:
        """Delete the staging prefix (and, `with_others`, those of other runs of the split, among `names`)."""
        self._delete(list(self._listing()))
        for other in self._others(names) if with_others else ():
            each(lambda n: storage.delete(f"{self.url}/{n}"), [n for n in names if n.startswith(other + "/")])

    def _delete(self, names: list[str]) -> None:
        each(lambda name: storage.delete(f"{self.dir}/{name}"), names)


def delete_unlisted(url: str, manifest: dict, splits: list[str]) -> None:
    """Remove shards of `splits` under `url` that an earlier run left and the new manifest does not list."""
    listed = {part["name"] for split in splits for part in manifest["splits"][split]["shards"]}
    patterns = [shard_names(split) for split in splits]
    unlisted = [name for name in storage.list_names(url)
                if name not in listed and any(p.fullmatch(name) for p in patterns)]
    each(lambda name: storage.delete(storage.join(url, name)), unlisted)
