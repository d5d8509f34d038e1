"""Where predictions go, each file complete under its final name or not there at all.

A local `--out`: every file is written under a temporary name beside its final one
(`.<name>.<random>.tmp`) and renamed over it (utils.files.atomic_path). An `s3://` `--out`:
every file is written to a local staging folder, then uploaded to its final key
(storage.publish_file: S3 makes an object visible complete or not at all, multipart uploads
included). So a file under its final name is always whole, and "done" can be read from names
alone. A crash can leave temporary files (local) or incomplete multipart uploads (S3, invisible;
a bucket lifecycle rule aborts them): the next run's main process removes the local ones before
any process writes. One `segdist predict` job at a time per `--out`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from segdist import storage
from segdist.errors import DataError
from segdist.utils import faults
from segdist.utils.files import atomic_path
from segdist.utils.secrets import redact


class Destination:
    """`--out`: a local folder or an s3:// prefix, holding `folders` ('' for itself)."""

    def __init__(self, out: str | os.PathLike, folders: tuple[str, ...]):
        self.out, self.folders = str(out), folders
        kind = storage.kind(self.out)
        if kind not in ("local", "s3"):
            raise DataError(f"--out {redact(self.out)}: write to a local folder or an s3:// prefix")
        self.remote = kind == "s3"
        self._staging: tempfile.TemporaryDirectory | None = None

    def url(self, relative: str) -> str:
        """The final location of `relative` ('index/x.png') under --out."""
        if self.remote:
            return self.out.rstrip("/") + "/" + relative
        return str(storage.urls.local_path(self.out) / relative)

    def prepare(self, main: bool) -> None:
        """Create the local folders; the main process also removes temporary files a crashed run left."""
        if self.remote:
            return
        for folder in self.folders:
            path = Path(self.url(folder))
            path.mkdir(parents=True, exist_ok=True)
            if main:
                for stale in path.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)

    def existing(self) -> set[str]:
        """The relative paths ('index/x.png') of the files already under their final names."""
        found = set()
        for folder in self.folders:
            try:
                names = storage.list_names(self.url(folder))
            except OSError as exc:
                raise DataError(f"cannot list {redact(self.url(folder))}: {redact(exc)}") from None
            found.update(f"{folder}/{name}" if folder else name for name in names if not name.startswith("."))
        return found

    def put(self, relative: str, data: bytes) -> None:
        """Write `data` as `relative`, complete or not at all."""
        with self.writing(relative) as path:
            path.write_bytes(data)

    @contextmanager
    def writing(self, relative: str) -> Iterator[Path]:
        """A local path to write `relative` to; when the block ends cleanly the file is published under its name."""
        faults.hit("predict")  # an error while writing (the tests')
        if not self.remote:
            with atomic_path(self.url(relative)) as temporary:
                yield temporary
                faults.hit("kill_in_predict")  # a crash between the write and the rename (the tests')
            return
        staged = Path(self.staging(), relative.replace("/", "__"))
        try:
            yield staged
            faults.hit("kill_in_predict")
            storage.publish_file(staged, self.url(relative))
        finally:
            staged.unlink(missing_ok=True)

    def staging(self) -> str:
        if self._staging is None:
            self._staging = tempfile.TemporaryDirectory(prefix="segdist-predict-")
        return self._staging.name

    def close(self) -> None:
        if self._staging is not None:
            self._staging.cleanup()
            self._staging = None
