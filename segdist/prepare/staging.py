"""The hidden directory where one split is written before its shards are moved into place.

`OUT/.<split>.<fingerprint>.partial/` holds `state.json` (the fingerprint, and whether the
shards are being moved into place), each finished shard's tar part(s) and its record
`<split>-%06d.json` (parts, byte offsets, statistics), and the temporary files of shards being
written. A shard is done when its record exists and its parts have the recorded sizes, so an
interrupted run resumes shard by shard. Shards live on a filesystem every Ray node shares.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from segdist.errors import DataError
from segdist.utils.files import is_plain_name, write_json_atomic


class Staging:
    def __init__(self, out: Path, split: str, fp: str):
        self.out, self.split, self.fp = out, split, fp
        self.dir = out / f".{split}.{fp}.partial"
        self.state_path = self.dir / "state.json"

    def _others(self) -> list[Path]:
        """Staging directories of this split left by runs with other inputs or options."""
        return sorted(p for p in self.out.glob(f".{self.split}.*.partial") if p != self.dir)

    def _state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}

    @property
    def promoting(self) -> bool:
        return self.dir.is_dir() and self._state().get("promoting", False)

    def check(self, in_manifest: dict | None, overwrite: bool) -> None:
        """Refuse leftovers this run would mix with, unless --overwrite; drop what a finished run left behind."""
        if in_manifest is not None and in_manifest.get("fingerprint") == self.fp and self.promoting:
            shutil.rmtree(self.dir)  # that run wrote dataset.json and stopped before cleaning up
        if overwrite:
            return
        others = self._others()
        if others:
            raise DataError(
                f"{self.out} holds an interrupted run of split '{self.split}' with other inputs or options "
                f"({others[0].name}); rerun it with the same ones to finish it, or pass --overwrite"
            )
        stray = sorted(self.out.glob(f"{self.split}-[0-9]*.tar"))
        if stray and in_manifest is None and not self.promoting:
            raise DataError(f"{self.out} already holds {stray[0].name} and others that {'dataset.json'} does not "
                            "list; pass --overwrite to replace them")

    def open(self, tasks: int) -> tuple[bool, set[str]]:
        """Create the directory, or keep it to resume; returns (created, the names it held) for a rollback."""
        if self.dir.is_dir():
            return False, set(os.listdir(self.dir))
        self.dir.mkdir()
        write_json_atomic(self.state_path, {"split": self.split, "fingerprint": self.fp, "tasks": tasks,
                                            "promoting": False})
        return True, set()

    def completed(self) -> dict[int, dict]:
        """Records of the shards already done, by shard index."""
        promoting = self.promoting
        done = {}
        for path in sorted(self.dir.glob(f"{self.split}-*.json")):
            try:
                record = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # not written completely: that shard is converted again
            if all(self._present(part, promoting) for part in record["parts"]):
                done[record["index"]] = record
        return done

    def _present(self, part: dict, promoting: bool) -> bool:
        if not is_plain_name(part.get("name")):  # a record is data in a shared folder: never a path elsewhere
            return False
        for where in (self.dir, self.out) if promoting else (self.dir,):
            path = where / part["name"]
            if path.is_file() and path.stat().st_size == part["bytes"]:
                return True
        return False

    def remove_temporaries(self) -> None:
        """Delete the temporary files of unfinished shard parts and records (no task is writing any more)."""
        for path in self.dir.glob(".*.tmp"):
            path.unlink(missing_ok=True)

    def rollback(self, created: bool, held: set[str]) -> None:
        """Leave the staging directory as it was before this run: gone if this run created it."""
        if created:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for name in set(os.listdir(self.dir)) - held:
            (self.dir / name).unlink(missing_ok=True)

    def mark_promoting(self) -> None:
        write_json_atomic(self.state_path, dict(self._state(), promoting=True))

    def move_into_place(self, names: list[str]) -> None:
        """Replace the split's shards in OUT by the staged ones (idempotent, so a crash here can resume)."""
        keep = set(names)
        for old in self.out.glob(f"{self.split}-[0-9]*.tar"):
            if old.name not in keep:
                old.unlink()
        for name in names:
            if (self.dir / name).exists():
                os.replace(self.dir / name, self.out / name)

    def remove(self, with_others: bool = False) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        if with_others:
            for other in self._others():
                shutil.rmtree(other, ignore_errors=True)
