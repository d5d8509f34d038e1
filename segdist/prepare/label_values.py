"""Source mask values -> class ids: the rules the index-mask sources share (folder, VOC, SBD, ADE20K).

A value is a class id (0..K-1, or what `--map` / `--reduce-zero-label` make of it), the ignore
index, or unknown: an error naming the file and the values, or ignore with `unknown_to_ignore`.
The rules compile into one lookup table over the uint16 range, so a mask maps in one indexing pass.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segdist.errors import DataError
from segdist.format.manifest import IGNORE_INDEX
from segdist.prepare.jobs import read_json_option

_VALUES = 1 << 16  # label maps are at most uint16
_UNKNOWN = -1


@dataclass(frozen=True)
class ValueMap:
    """How a source's mask values become class ids (frozen and hashable: its table is built once per process)."""

    num_classes: int
    ignore_index: int = IGNORE_INDEX
    source_ignore: tuple[int, ...] = ()  # source values that mean ignore
    reduce_zero_label: bool = False  # 0 -> ignore, v -> v - 1 (ADE20K; MMSegmentation's reduce_zero_label)
    mapping: tuple[tuple[int, int], ...] | None = None  # source value -> class id or ignore index; others unknown
    unknown_to_ignore: bool = False

    def __post_init__(self) -> None:
        outside = [v for v in self.source_ignore if not 0 <= v < _VALUES]
        if outside:
            raise DataError(f"--source-ignore {outside[0]} is not a mask value (0..{_VALUES - 1})")

    def apply(self, values: np.ndarray, path: str) -> np.ndarray:
        """Class ids (int64) of a mask's values; unknown values raise a DataError naming `path`, or become ignore."""
        table = _table(self)
        inside = (values >= 0) & (values < _VALUES) if values.dtype.kind == "i" or values.dtype.itemsize > 2 else None
        label = table[np.where(inside, values, 0) if inside is not None else values].astype(np.int64)
        unknown = label == _UNKNOWN
        if inside is not None:
            unknown |= ~inside
        if unknown.any():
            if not self.unknown_to_ignore:
                raise DataError(f"{path}: mask values {self._examples(values[unknown])} {self._what_is_known()} "
                                f"(map them with --source-ignore K, --map FILE or --unknown-to-ignore)")
            label[unknown] = self.ignore_index
        return label

    def _examples(self, values: np.ndarray) -> list[int]:
        return sorted(int(v) for v in np.unique(values))[:10]

    def _what_is_known(self) -> str:
        if self.mapping is not None:
            return "are not in the --map file"
        low, high = (1, self.num_classes) if self.reduce_zero_label else (0, self.num_classes - 1)
        return (f"are outside the class range {low}..{high}"
                + (" (--reduce-zero-label)" if self.reduce_zero_label else "")
                + f" and are not the ignore index {self.ignore_index}")


@functools.lru_cache(maxsize=8)
def _table(rules: ValueMap) -> np.ndarray:
    """Every uint16 source value -> class id, the ignore index, or _UNKNOWN."""
    table = np.full(_VALUES, _UNKNOWN, np.int32)
    ignore = rules.ignore_index
    if rules.mapping is not None:
        for source, target in rules.mapping:
            table[source] = target
    elif rules.reduce_zero_label:
        table[1 : rules.num_classes + 1] = np.arange(rules.num_classes)
        table[0] = ignore
    else:
        table[: rules.num_classes] = np.arange(rules.num_classes)
    if ignore < _VALUES and table[ignore] == _UNKNOWN:
        table[ignore] = ignore  # the output's ignore value in a source mask means ignore, unless mapped
    table[list(rules.source_ignore)] = ignore
    return table


def load_value_map(path: str | Path, classes: list[str], ignore_index: int) -> tuple[tuple[int, int], ...]:
    """A `--map` file: JSON {source value: class name, class index or "ignore"}; returns sorted (value, id) pairs."""
    path = Path(path)
    raw = read_json_option(path, "map")
    if not isinstance(raw, dict) or not raw:
        raise DataError(f'{path}: needs a JSON object {{"source value": class name, index or "ignore", ...}}')
    pairs = {}
    for key, target in raw.items():
        try:
            value = int(key)
        except ValueError:
            raise DataError(f"{path}: key {key!r} is not an integer mask value") from None
        if not 0 <= value < _VALUES:
            raise DataError(f"{path}: mask value {value} is outside 0..{_VALUES - 1}")
        pairs[value] = _target(path, key, target, classes, ignore_index)
    return tuple(sorted(pairs.items()))


def _target(path: Path, key: str, target: object, classes: list[str], ignore_index: int) -> int:
    if target == "ignore":
        return ignore_index
    if isinstance(target, str) and target in classes:
        return classes.index(target)
    if isinstance(target, int) and not isinstance(target, bool) and 0 <= target < len(classes):
        return target
    raise DataError(f'{path}: value {key} maps to {target!r}: not "ignore", a class name of --classes '
                    f"or an index 0..{len(classes) - 1}")
