"""One rule for image pixels everywhere: the stored pixel grid, EXIF orientation ignored.

COCO's `width`/`height` and polygons, Cityscapes' and every folder's mask PNGs describe the
pixels as stored in the file. A JPEG may also carry an EXIF orientation tag that viewers apply
when they display it; OpenCV's plain `IMREAD_COLOR` applies it too, PIL and pycocotools do not.
Applying it for the image but not for its label turns or transposes one against the other, so
segdist never applies it: prepare, the loaders, evaluate, predict, show and export all decode
through the functions here.

Every decode is bounded: the pixel count is read from the header (PIL, which parses headers
without decoding) and an image over `max_pixels` raises TooManyPixels before any pixel is made,
so a 1 MB PNG announcing 30000x30000 pixels costs nothing.
"""

from __future__ import annotations

import io
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import cv2
import numpy as np
from PIL import Image

from segdist.errors import DataError

# PIL's DecompressionBombError threshold: the default of --max-pixels.
DEFAULT_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
# OpenCV refuses to decode images over 2**30 pixels (CV_IO_MAX_IMAGE_PIXELS): --max-pixels can't exceed it.
DECODER_MAX_PIXELS = 1 << 30
_PIL_LIMIT = threading.Lock()

_REDUCED = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
            8: cv2.IMREAD_REDUCED_COLOR_8}


def check_max_pixels(max_pixels: int) -> int:
    if not 1 <= max_pixels <= DECODER_MAX_PIXELS:
        raise DataError(f"--max-pixels {max_pixels} must be between 1 and {DECODER_MAX_PIXELS} (OpenCV's limit)")
    return max_pixels


class TooManyPixels(ValueError):
    """An image whose header announces more than `max_pixels` pixels; nothing of it was decoded."""

    def __init__(self, width: int, height: int, max_pixels: int):
        super().__init__(f"{width}x{height} = {width * height} pixels, over --max-pixels {max_pixels}")
        self.width, self.height = width, height


@contextmanager
def pil_bomb_check_off() -> Iterator[None]:
    """PIL's own bomb check off: segdist checks --max-pixels itself, from the header, before decoding."""
    with _PIL_LIMIT:  # PIL's limit is a module global: threads must not restore each other's value
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def stored_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from the image's header, nothing decoded; None when no header is recognised."""
    try:
        with pil_bomb_check_off(), Image.open(io.BytesIO(_buffer(data))) as img:
            return img.size
    except Exception:  # noqa: BLE001 - PIL raises anything on hostile bytes
        return None


def within_limit(data: bytes | np.ndarray, max_pixels: int) -> bool:
    """Whether the header is one PIL reads (False: not decoded at all, as OpenCV would decode some formats
    PIL cannot size, e.g. Radiance HDR, with no bound but its own 2**30 pixels); TooManyPixels over the limit."""
    size = stored_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise TooManyPixels(*size, max_pixels)
    return size is not None


def _buffer(data: bytes | np.ndarray) -> np.ndarray:
    return np.frombuffer(data, np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data


def decode_rgb(data: bytes | np.ndarray, reduce: int = 1, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """RGB uint8 HxWx3 on the stored pixel grid (None when the bytes do not decode).

    `reduce` 2, 4 or 8 decodes a JPEG at that fraction of its size (libjpeg's DCT scaling),
    still reading every byte of the stream. Raises TooManyPixels over `max_pixels`.
    """
    if not within_limit(data, max_pixels):
        return None
    buffer = _buffer(data)
    bgr = cv2.imdecode(buffer, _REDUCED[reduce] | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        return None
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_label(data: bytes | np.ndarray, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | None:
    """A label map PNG as stored (uint8 or uint16 HxW); None when it does not decode. Bounded as decode_rgb."""
    if not within_limit(data, max_pixels):
        return None
    buffer = _buffer(data)
    return cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
