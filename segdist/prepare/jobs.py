"""A prepare job: everything that decides a run's output bytes, and the helpers every source's job builder shares."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from segdist.errors import DataError
from segdist.prepare.inputs import check_ignore_index, default_ignore_index
from segdist.utils.images import check_max_pixels


@dataclass
class PrepareJob:
    """Everything that decides a prepare run's output bytes (the resume fingerprint hashes all of it)."""

    splits: dict[str, list]  # split -> input specs, in the source's stable order
    convert: Callable  # spec -> Sample; a functools.partial over the source's convert and its options
    classes: list[str]
    palette: list[list[int]]
    ignore_index: int
    source: dict  # the source's options as recorded in dataset.json
    shard_size: int = 256
    shard_bytes: int | None = None
    unpaired: Counter = field(default_factory=Counter)  # inputs skipped before conversion, by reason


def parse_classes(classes: str | Sequence[str]) -> list[str]:
    """A class list, a comma-separated string of names, or "@FILE" (one name a line); blanks dropped."""
    if isinstance(classes, str) and classes.startswith("@"):
        path = Path(classes[1:])
        try:
            names = [line.strip() for line in path.read_text().splitlines()]
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"--classes {classes}: cannot read {path} ({exc})") from None
    else:
        names = classes.split(",") if isinstance(classes, str) else [str(c) for c in classes]
    names = [name.strip() for name in names if name.strip()]
    if not names:
        where = f" ({classes[1:]} holds no name)" if isinstance(classes, str) and classes.startswith("@") else ""
        raise DataError(f"--classes is empty{where}")
    return names


def read_json_option(path: str | Path, what: str) -> object:
    """The JSON content of an option's file (a palette, a value map); a clear error naming it otherwise."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: {what} file does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a readable JSON {what} ({exc})") from None


def read_stem_list(path: str | Path) -> list[str]:
    """A split list: one stem (or relative path without suffix) a line; blanks and # comments dropped."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the split list ({exc})") from None
    stems = [line.split("#", 1)[0].strip() for line in lines]
    stems = [stem for stem in stems if stem]
    if not stems:
        raise DataError(f"{path}: the split list names no stem")
    twice = sorted(stem for stem, n in Counter(stems).items() if n > 1)
    if twice:
        raise DataError(f"{path}: stems listed twice: {twice[:10]}")
    return stems


def label_options(num_classes: int, ignore_index: int | None, max_pixels: int) -> dict:
    """The options every source's converter takes: ignore index and pixel limit, checked."""
    ignore = ignore_index if ignore_index is not None else default_ignore_index(num_classes)
    return {"ignore_index": check_ignore_index(ignore, num_classes), "max_pixels": check_max_pixels(max_pixels)}
