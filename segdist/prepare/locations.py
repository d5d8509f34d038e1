"""Where a source's inputs are: local folders, or `s3://` and `http(s)://` prefixes that tasks read directly.

A source's job runs on the driver. For remote inputs it reads only what chooses the inputs (an
annotation file, fetched into a temporary file; a listing of a prefix) and names each input by
URL; the tasks read the inputs themselves (inputs.read_image, read_mask). What a listing showed
(each object's name, size and ETag) is hashed into the job's source record, so the resume
fingerprint changes when an object listed changes. Nothing here imports Ray or the driver.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, unquote

from segdist import storage
from segdist.errors import DataError
from segdist.prepare.inputs import InputPath
from segdist.storage.urls import basename
from segdist.utils.secrets import redact


def is_remote(path: InputPath) -> bool:
    return not storage.is_local(path)


def resolve(path: InputPath) -> InputPath:
    """A local folder made absolute (Ray workers may run elsewhere); a URL as given."""
    return str(path) if is_remote(path) else Path(path).resolve()


def input_url(root: InputPath, relative: str) -> str:
    """The input `relative` ('a/b.jpg', from an annotation file or a listing) under `root`: a path or a URL."""
    if not is_remote(root):
        return str(Path(root) / relative)
    prefix, query = str(root), ""
    if storage.kind(prefix) == "http":  # a query (`?token=...`) goes with every object, after the quoted path
        prefix, _, query = prefix.partition("?")
        relative = quote(relative, safe="/")
    return prefix.rstrip("/") + "/" + relative.lstrip("/") + (f"?{query}" if query else "")


def input_name(path: InputPath) -> str:
    """The file name of an input (its last path part; a URL's query left out, an HTTP URL's quoting undone)."""
    if not is_remote(path):
        return Path(path).name
    return unquote(basename(path)) if storage.kind(path) == "http" else basename(path)


class Listings:
    """Lists input folders (local, or object-store prefixes), keeping what each remote listing showed."""

    def __init__(self) -> None:
        self._seen = hashlib.sha256()
        self._remote = False

    def files(self, root: InputPath, recursive: bool = False) -> dict[str, str]:
        """The files under `root` by relative path ('city/frame.png'), in Path order; each a path or a URL."""
        if not is_remote(root):
            root = Path(root)
            if not root.is_dir():
                raise DataError(f"{root} is not a directory")
            found = sorted(root.rglob("*") if recursive else root.iterdir())
            return {p.relative_to(root).as_posix(): str(p) for p in found if p.is_file()}
        objects = self._list(str(root), recursive)
        self._remote = True
        for obj in objects:
            self._seen.update(f"{root}\0{obj.name}\0{obj.size}\0{obj.etag}\n".encode())
        # the order a local folder's sorted Paths have: by path part, so 'a/b' comes before 'a-x'
        return {obj.name: input_url(root, obj.name) for obj in sorted(objects, key=lambda o: o.name.split("/"))}

    @staticmethod
    def _list(root: str, recursive: bool) -> list[storage.ObjectInfo]:
        if storage.kind(root) != "s3":
            raise DataError(f"{redact(root)}: a {storage.kind(root)} prefix cannot be listed; use a local folder or "
                            "an s3:// prefix")
        try:
            objects = storage.list_objects(root, recursive=recursive)
        except storage.ShardUnavailable as exc:
            raise DataError(f"cannot list {exc}") from None
        if not objects:
            raise DataError(f"{redact(root)}: no object under this prefix")
        return objects

    def record(self) -> dict:
        """For the job's source record: the digest of every remote listing (nothing for local folders)."""
        return {"listing": "sha256:" + self._seen.hexdigest()[:32]} if self._remote else {}


@contextmanager
def local_copy(path: InputPath, what: str) -> Iterator[Path]:
    """`path` itself when local; else the object downloaded into a temporary file, removed after the block."""
    if not is_remote(path):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="segdist-input-") as tmp:
        target = Path(tmp) / "input"
        try:
            with storage.open_stream(str(path)) as source, open(target, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
        except storage.ObjectMissing:
            raise DataError(f"{redact(str(path))}: {what} does not exist") from None
        except storage.ShardUnavailable as exc:
            raise DataError(f"cannot read the {what} {exc}") from None
        yield target
