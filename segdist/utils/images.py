"""One rule for image pixels everywhere: the stored pixel grid, EXIF orientation ignored.

COCO's `width`/`height` and polygons, Cityscapes' and every folder's mask PNGs describe the
pixels as stored in the file. A JPEG may also carry an EXIF orientation tag that viewers apply
when they display it; OpenCV's plain `IMREAD_COLOR` applies it too, PIL and pycocotools do not.
Applying it for the image but not for its label turns or transposes one against the other, so
segdist never applies it: prepare, the loaders, evaluate, predict, show and export all decode
through the functions here.
"""

from __future__ import annotations

import cv2
import numpy as np

_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def decode_rgb(data: bytes | np.ndarray, reduce: int = 1) -> np.ndarray | None:
    """RGB uint8 HxWx3 on the stored pixel grid (None when the bytes do not decode).

    `reduce` 2, 4 or 8 decodes a JPEG at that fraction of its size (libjpeg's DCT scaling),
    still reading every byte of the stream.
    """
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    bgr = cv2.imdecode(buffer, _REDUCED[reduce] | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_label(data: bytes | np.ndarray) -> np.ndarray | None:
    """A label map PNG as stored (uint8 or uint16 HxW); None when it does not decode."""
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
