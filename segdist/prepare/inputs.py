"""Reading a source's files: what every source hands to the shard task, and the checks all of them share.

An input is a local path or a URL (`s3://`, `http(s)://`): a remote one is read through
segdist.storage (with its retries) by the task that converts it; one missing or unreadable is
skipped and counted with its URL named, as a local file is.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from segdist import storage
from segdist.errors import DataError
from segdist.format.manifest import IGNORE_INDEX, MAX_LABEL_VALUE
from segdist.utils.images import DEFAULT_MAX_PIXELS, decode_rgb, pil_bomb_check_off
from segdist.utils.secrets import redact

InputPath = str | Path  # a local path, or an s3:// or http(s):// URL

_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE,
               cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
# Formats kept as their original bytes; anything else is transcoded to PNG once.
_KEEP_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png"}  # MPO: a camera JPEG with extra frames
_JPEG_FORMATS = {"JPEG", "MPO"}


class SkipSample(Exception):
    """Raised by a source for one bad input: the sample is skipped and counted by `reason`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class Sample:
    """One converted input: original image bytes, its channel statistics and its label map."""

    key: str
    image: bytes
    image_ext: str
    channel_mean: np.ndarray  # RGB, 0..255
    channel_std: np.ndarray
    label: np.ndarray
    meta: dict = field(default_factory=dict)


def safe_key(text: str) -> str:
    """A WebDataset key: no dots (they separate key from extension) and no path separators."""
    return re.sub(r"[^A-Za-z0-9_\-]", "_", text)


def default_ignore_index(num_classes: int) -> int:
    """255 while it is free (up to 255 classes), else 65535: the largest value of a uint16 label map."""
    return IGNORE_INDEX if num_classes <= IGNORE_INDEX else MAX_LABEL_VALUE


def check_ignore_index(ignore_index: int, num_classes: int) -> int:
    """The ignore index must be no class id and fit a uint16 label map."""
    if not num_classes <= ignore_index <= MAX_LABEL_VALUE:
        raise DataError(
            f"--ignore-index {ignore_index} must be between the number of classes ({num_classes}) and "
            f"{MAX_LABEL_VALUE}: ids 0..{num_classes - 1} are classes and label maps are at most uint16"
        )
    return ignore_index


@contextmanager
def decoder_errors(reason: str, path: str | Path) -> Iterator[None]:
    """Whatever a decoder (PIL, OpenCV, pycocotools) raises for one file becomes a skip naming the file."""
    try:
        yield
    except (DataError, SkipSample):
        raise
    except Exception as exc:  # noqa: BLE001 - decoders raise anything on hostile bytes
        raise SkipSample(reason, f"{path}: {type(exc).__name__}: {exc}") from None


def _read_bytes(path: InputPath, kind: str) -> bytes:
    if not storage.is_local(path):
        return _read_remote(str(path), kind)
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise SkipSample(f"missing_{kind}", f"{path} does not exist") from None
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        raise SkipSample(f"unreadable_{kind}", f"{path}: {exc}") from None


def _read_remote(url: str, kind: str) -> bytes:
    try:
        return storage.read_bytes(url)
    except storage.ObjectMissing:
        raise SkipSample(f"missing_{kind}", f"{redact(url)} does not exist") from None
    except storage.ShardUnavailable as exc:  # its message names the URL and the reason
        raise SkipSample(f"unreadable_{kind}", str(exc)) from None


def _check_pixels(path: str | Path, width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise SkipSample("too_large", f"{path} is {width}x{height} = {width * height} pixels, "
                                      f"over --max-pixels {max_pixels}")


@dataclass
class ImageFile:
    """An image file read and checked: original bytes, shard extension, size, channel mean/std."""

    data: bytes
    ext: str
    width: int
    height: int
    mean: np.ndarray
    std: np.ndarray


def read_image(path: InputPath, expected_size: tuple[int, int] | None = None,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFile:
    """Read an image file and check it as `check_image` does (SkipSample also for a missing or unreadable file)."""
    return check_image(_read_bytes(path, "image"), path, expected_size, max_pixels)


def check_image(data: bytes, name: str | Path, expected_size: tuple[int, int] | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageFile:
    """Fully decode an image's bytes (`name`: its file, for messages), keeping them where the format allows.

    Pixels are taken on the stored grid (EXIF orientation ignored, see segdist.images). JPEGs are
    decoded at half scale (libjpeg's DCT scaling): every byte of the stream is still checked, at
    about 60% of the cost. Channel mean/std come from that decode; on real photos (COCO, CamVid)
    they match a full decode within 0.1% (mean) and 1.5% (std).
    Raises SkipSample for truncated or corrupt data, an image over `max_pixels` (read from the
    header, before decoding) or one whose (width, height) differs from `expected_size`.
    """
    with decoder_errors("corrupt_image", name), pil_bomb_check_off(), Image.open(io.BytesIO(data)) as img:
        fmt, (width, height) = img.format, img.size
    _check_pixels(name, width, height, max_pixels)
    if expected_size is not None and (width, height) != tuple(expected_size):
        raise SkipSample(
            "size_mismatch",
            f"{name} is {width}x{height} but the annotation says {expected_size[0]}x{expected_size[1]}",
        )
    reduce = 2 if fmt in _JPEG_FORMATS else 1
    with decoder_errors("corrupt_image", name):
        rgb = decode_rgb(data, reduce=reduce, max_pixels=max_pixels)
    if rgb is None or rgb.shape[:2] != (-(-height // reduce), -(-width // reduce)):
        raise SkipSample("corrupt_image", f"{name}: truncated or corrupt {fmt} data")
    mean, std = cv2.meanStdDev(rgb)
    ext = _KEEP_FORMATS.get(fmt or "")
    if ext is None:
        data, ext = encode_png(rgb), "png"
    return ImageFile(data, ext, width, height, mean.ravel(), std.ravel())


@dataclass
class MaskFile:
    """A mask as stored: `values` HxW (ids) or HxWx3 (RGB colours); `opaque` False where alpha is 0."""

    mode: str
    values: np.ndarray
    opaque: np.ndarray | None


_ID_MODES = {"L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N"}


def read_mask(path: InputPath, max_pixels: int = DEFAULT_MAX_PIXELS, kind: str = "mask") -> MaskFile:
    """Read a mask PNG (or any PIL format) without converting its values.

    Modes: 1 (ids 0/1), L, P (palette indices are the ids), I;16, I (ids), LA and PA (ids with
    alpha), RGB and RGBA (colours). Any other mode is skipped as `unsupported_<kind>`.
    """
    data = _read_bytes(path, kind)
    with decoder_errors(f"corrupt_{kind}", path), pil_bomb_check_off(), Image.open(io.BytesIO(data)) as img:
        _check_pixels(path, *img.size, max_pixels)
        img.load()
        mode = img.mode
        if mode == "1":
            return MaskFile(mode, np.asarray(img, dtype=np.uint8), None)
        if mode in _ID_MODES:
            return MaskFile(mode, np.asarray(img), None)
        if mode in ("LA", "PA", "RGBA"):
            array = np.asarray(img)
            values = array[..., 0] if mode != "RGBA" else array[..., :3]
            return MaskFile(mode, values, array[..., -1] != 0)
        if mode == "RGB":
            return MaskFile(mode, np.asarray(img), None)
    raise SkipSample(f"unsupported_{kind}", f"{path}: PIL mode {mode} is neither ids (1, L, P, I;16, I, LA, PA) "
                                            "nor colours (RGB, RGBA)")


def encode_png(array: np.ndarray) -> bytes:
    """Lossless, deterministic PNG bytes of an HxW (uint8/uint16) label map or an HxWx3 RGB image.

    Label maps use the "up" filter with zlib's run-length strategy: about 3x faster than
    PIL's default and smaller, since label maps are long runs of equal values.
    """
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", np.ascontiguousarray(array), _PNG_PARAMS)
    if not ok:
        raise ValueError(f"could not PNG-encode an array of shape {array.shape} and dtype {array.dtype}")
    return data.tobytes()
