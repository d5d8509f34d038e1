"""What `segdist predict` reads: image files, URLs, or the samples of a prepared split, as one sorted list.

`--input` takes a file, a folder (its image files), a glob, `@LIST` (a text file, local or a URL:
one path or URL a line; blank lines and `#` comments skipped; relative paths from the current
directory), or an `http(s)://` / `s3://` URL: one image file, or (s3) a prefix whose image files
are listed. `--shards DIR_OR_URL --split S` takes every sample of a prepared split instead.
Files and URLs are sorted by location; a split's samples keep the manifest's order (shards in
order, samples in tar order).
"""

from __future__ import annotations

import glob
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from segdist import storage
from segdist.data.info import load_dataset_info
from segdist.errors import DataError
from segdist.evaluation.cityscapes_results import result_name
from segdist.storage.urls import basename
from segdist.utils.secrets import redact

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class FileInput:
    """An image file (a local path or an http(s)://, s3:// URL) read whole; its outputs are named by `name`."""

    url: str
    name: str

    @property
    def where(self) -> str:
        return redact(self.url)


@dataclass(frozen=True)
class SampleInput:
    """Sample `index` of a shard, in bytes [start, end) (end None: to the shard's end); named by its key once read."""

    shard: str
    index: int
    start: int = 0
    end: int | None = None
    exact: bool = True  # False: the manifest has no offsets; the shard is read from its start up to the sample

    @property
    def where(self) -> str:
        return f"{redact(self.shard)} sample {self.index}"


Input = FileInput | SampleInput


def resolve(spec: str | None, shards: str | None = None, split: str | None = None) -> list[Input]:
    """The inputs of `--input spec`, or of `--shards shards --split split`, in their fixed order."""
    if (spec is None) == (shards is None):
        raise DataError("give either --input or --shards (with --split)")
    if shards is not None:
        if not split:
            raise DataError("--shards needs --split: the split whose images to predict")
        return split_samples(shards, split)
    if spec.startswith("@"):
        files = listed_files(spec[1:])
    elif storage.kind(spec) in ("http", "s3"):
        files = remote_files(spec)
    elif storage.kind(spec) == "local":
        files = [FileInput(str(path), path.stem) for path in find_images(spec)]
    else:
        raise DataError(f"--input {redact(spec)}: a pipe: command is no input; give files, a folder, a glob, "
                        "@LIST or an http(s)://, s3:// URL")
    check_unique(files)
    return files


def find_images(spec: str) -> list[Path]:
    """A file, the image files of a folder, or the image files a glob matches; sorted."""
    path = Path(spec)
    if path.is_file():
        files = [path]
    else:
        candidates = path.iterdir() if path.is_dir() else map(Path, glob.glob(spec, recursive=True))
        files = sorted(p for p in candidates if p.is_file() and is_image_name(p.name))
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) at '{spec}'")
    return files


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def listed_files(list_file: str) -> list[FileInput]:
    """The paths and URLs a list file names (itself a path or a URL), sorted, each once."""
    try:
        text = (storage.read_bytes(list_file).decode() if storage.kind(list_file) in ("http", "s3")
                else Path(list_file).read_text())
    except (OSError, UnicodeDecodeError) as exc:  # ShardUnavailable is an OSError
        raise DataError(f"--input @{redact(list_file)}: cannot read the list ({redact(exc)})") from None
    entries = sorted({line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")})
    if not entries:
        raise DataError(f"--input @{redact(list_file)}: the list names no file")
    return [file_input(entry) for entry in entries]


def remote_files(url: str) -> list[FileInput]:
    """One image URL, or the image files directly under an s3:// prefix (sorted)."""
    if is_image_name(basename(url)):
        return [file_input(url)]
    if storage.kind(url) == "http":
        raise DataError(f"--input {redact(url)}: an http(s) prefix cannot be listed; name its files in a list "
                        "(--input @urls.txt, one URL a line)")
    try:
        names = [name for name in storage.list_names(url) if is_image_name(name)]
    except OSError as exc:
        raise DataError(f"--input {redact(url)}: cannot list it ({redact(exc)})") from None
    if not names:
        raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {redact(url)}")
    return [file_input(storage.join(url, name)) for name in names]


def file_input(location: str) -> FileInput:
    """A path or URL as an input named by its file name's stem."""
    name = basename(location) if storage.kind(location) != "local" else Path(location).name
    return FileInput(location, PurePosixPath(name).stem)


def check_unique(files: list[FileInput]) -> None:
    """Refuse inputs whose outputs would overwrite each other (the same stem)."""
    clashes = [stem for stem, n in Counter(f.name for f in files).items() if n > 1]
    if clashes:
        raise DataError(f"several inputs share the file stem(s) {clashes[:5]}; their outputs would overwrite each "
                        "other: predict them into separate --out folders")


def check_cityscapes_names(files: list[Input]) -> None:
    """Refuse two file inputs that name the same Cityscapes frame (the benchmark takes one prediction per frame)."""
    frames = [result_name(f.name) for f in files if isinstance(f, FileInput) and result_name(f.name)]
    clashes = [name for name, n in Counter(frames).items() if n > 1]
    if clashes:
        raise DataError(f"several inputs name the same Cityscapes frame(s) {clashes[:5]}; the benchmark takes one "
                        "prediction per frame")


def split_samples(shards: str, split: str) -> list[SampleInput]:
    """Every sample of `split`, with its byte range where dataset.json records the offsets."""
    info = load_dataset_info(shards)
    urls, records = info.shards(split)
    samples = []
    for url, record in zip(urls, records):
        offsets, count = record.get("offsets"), record["samples"]
        for i in range(count):
            if offsets:
                samples.append(SampleInput(url, i, offsets[i], offsets[i + 1] if i + 1 < count else None))
            else:
                samples.append(SampleInput(url, i, exact=False))
    return samples
