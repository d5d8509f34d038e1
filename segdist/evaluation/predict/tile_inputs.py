"""--tile's inputs, handed out by rows: a TIFF/BigTIFF (local) strip by strip or tile by tile, anything else whole.

A TIFF is read with tifffile, decoding only the segments under the rows asked for (uncompressed, deflate
or LZMA; LZW, JPEG and PackBits need the imagecodecs package, else such a TIFF is decoded whole as other
formats are); other formats are decoded whole by PIL/OpenCV (uint8, up to --max-pixels).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segdist import storage
from segdist.errors import DataError
from segdist.utils.images import decode_rgb

JPEG_COMPRESSIONS = (6, 7, 34892, 33007)  # tifffile passes these their JPEG tables
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # TIFF and BigTIFF, either byte order


class ArrayRows:
    """A decoded RGB image, handed out by rows."""

    def __init__(self, rgb: np.ndarray):
        self.rgb, (self.height, self.width) = rgb, rgb.shape[:2]

    def read(self, top: int, bottom: int) -> np.ndarray:
        return self.rgb[top:bottom]

    def close(self) -> None:
        self.rgb = None


class NoCodec(Exception):
    """tifffile cannot decode this TIFF's compression by itself (LZW, JPEG, PackBits... need imagecodecs)."""


class TiffRows:
    """A TIFF's first page by rows: only the strips or tiles under the rows asked for are read and decoded."""

    def __init__(self, path: str | Path):
        import tifffile  # only --tile with a TIFF input needs it

        self.file = tifffile.TiffFile(path)
        page = self.file.pages[0]
        samples, jpeg = page.samplesperpixel, page.compression in JPEG_COMPRESSIONS
        if page.dtype != np.uint8 or samples not in (1, 3, 4) or (samples > 1 and page.planarconfig != 1) \
                or page.imagedepth != 1 or not (page.photometric in (1, 2) or (jpeg and page.photometric == 6)):
            self.file.close()
            raise DataError(f"{path}: --tile reads 8-bit grey, RGB or RGBA TIFFs with interleaved samples; this one "
                            f"is {page.dtype}, {samples} sample(s), planar configuration {page.planarconfig}, "
                            f"photometric {page.photometric}")
        self.page, self.height, self.width = page, page.imagelength, page.imagewidth
        self.segment = (page.tilelength, page.tilewidth) if page.is_tiled else (page.rowsperstrip, self.width)
        self.decode = page.decode  # tifffile's decoder of this page's segments (compression, predictor)
        try:
            self.read(0, 1)
        except (ValueError, KeyError, ImportError, NotImplementedError) as exc:  # "... requires imagecodecs"
            self.file.close()
            raise NoCodec(str(exc)) from None

    def read(self, top: int, bottom: int) -> np.ndarray:
        """RGB uint8 rows [top, bottom)."""
        out = np.zeros((bottom - top, self.width, self.page.samplesperpixel), np.uint8)
        seg_h, seg_w = self.segment
        across = -(-self.width // seg_w)
        for row in range(top // seg_h, (bottom - 1) // seg_h + 1):
            for column in range(across):
                self.place(out, top, row * across + column)
        return np.repeat(out, 3, axis=2) if out.shape[2] == 1 else out[..., :3]

    def place(self, out: np.ndarray, top: int, index: int) -> None:
        """Decode segment `index` and copy its part within `out`'s rows (from image row `top`)."""
        handle, page = self.file.filehandle, self.page
        with handle.lock:
            handle.seek(page.dataoffsets[index])
            data = handle.read(page.databytecounts[index]) if page.databytecounts[index] else None
        jpeg = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader} \
            if page.compression in JPEG_COMPRESSIONS else {}
        segment, position, _ = self.decode(data, index, _fullsize=page.is_tiled, **jpeg)
        if segment is None:
            return
        y, x = position[2], position[3]
        segment = segment[0]
        first, last = max(top, y), min(top + len(out), y + segment.shape[0], self.height)
        width = min(segment.shape[1], self.width - x)
        out[first - top : last - top, x : x + width] = segment[first - y : last - y, :width]

    def close(self) -> None:
        self.file.close()


def open_rows(url: str, max_pixels: int) -> ArrayRows | TiffRows:
    """The image at local path `url`, by rows: a TIFF read by segments, anything else decoded whole (at most
    `max_pixels`), as is a TIFF whose compression tifffile cannot decode alone."""
    if not storage.is_local(url):
        raise DataError("--tile reads local files (copy a remote image first)")
    path = storage.urls.local_path(url)
    with open(path, "rb") as file:
        tiff = file.read(4) in TIFF_MAGIC
    if tiff:
        try:
            return TiffRows(path)
        except NoCodec:  # OpenCV decodes LZW, JPEG and PackBits TIFFs: whole, so up to max_pixels
            pass
    rgb = decode_rgb(np.fromfile(path, np.uint8), max_pixels=max_pixels)
    if rgb is None:
        raise DataError("not a decodable image")
    return ArrayRows(rgb)
