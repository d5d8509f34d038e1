"""The official Cityscapes label table (cityscapesScripts' labels.py): labelIds, the 19 trainIds, colours.

prepare maps labelIds to trainIds with it; evaluation and predict map trainIds back to labelIds
for the benchmark's result files.
"""

from __future__ import annotations

import numpy as np

from segdist.format.manifest import IGNORE_INDEX, label_dtype

# (name, labelId, trainId, colour) from cityscapesScripts' labels.py; trainId 255 = ignored.
LABELS: tuple[tuple[str, int, int, tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
)
TRAIN_LABELS = sorted((t, name, colour) for name, _, t, colour in LABELS if t != 255)
CLASSES = [name for _, name, _ in TRAIN_LABELS]
PALETTE = [list(colour) for _, _, colour in TRAIN_LABELS]


def label_id_to_train_id(ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """256-entry lookup table: labelId -> trainId, everything else -> the ignore index."""
    lut = np.full(256, ignore_index, dtype=label_dtype(len(CLASSES), ignore_index))
    for _, label_id, train_id, _ in LABELS:
        if train_id != 255:
            lut[label_id] = train_id
    return lut
