"""--tile's files, written as their rows are finished: a PNG row by row while the image is within PIL's limit
(PIL.Image.MAX_IMAGE_PIXELS), above it a tiled, zlib-compressed BigTIFF (.tif) tile row by tile row.
"""

from __future__ import annotations

import queue
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from segdist.errors import DataError

TIFF_TILE = 256  # the BigTIFF outputs' tile side


def tiled_files(files: dict[str, str], size: tuple[int, int]) -> dict[str, str]:
    """The files of an image of `size`: PNGs within PIL's pixel limit, BigTIFFs (.tif) above it."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or size[0] * size[1] <= limit:
        return files
    return {output: str(Path(path).with_suffix(".tif")) for output, path in files.items()}


def either_suffix(existing: set[str]) -> set[str]:
    """`existing` with each BigTIFF also counted under its PNG name (done is one or the other)."""
    return existing | {str(Path(p).with_suffix(".png")) for p in existing if p.endswith(".tif")}


class PngWriter:
    """A PNG written block of rows by block of rows (filter none, zlib): memory is one block."""

    def __init__(self, path: Path, height: int, width: int, channels: int, dtype: np.dtype):
        self.file, self.zlib = open(path, "wb"), zlib.compressobj(6)
        self.big_endian = np.dtype(">u2") if dtype == np.uint16 else None
        depth, colour_type = (16 if self.big_endian else 8), (2 if channels == 3 else 0)
        self.file.write(b"\x89PNG\r\n\x1a\n")
        self.chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0))

    def write(self, rows: np.ndarray) -> None:
        rows = rows.astype(self.big_endian) if self.big_endian else rows
        flat = np.ascontiguousarray(rows).reshape(len(rows), -1).view(np.uint8)
        lines = np.concatenate([np.zeros((len(rows), 1), np.uint8), flat], axis=1)  # filter type 0 per line
        self.chunk(b"IDAT", self.zlib.compress(lines.tobytes()))

    def close(self) -> None:
        self.chunk(b"IDAT", self.zlib.flush())
        self.chunk(b"IEND", b"")
        self.file.close()

    def abort(self) -> None:
        self.file.close()

    def chunk(self, kind: bytes, data: bytes) -> None:
        if data or kind != b"IDAT":
            self.file.write(struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data)))


class TiffWriter:
    """A tiled, zlib-compressed BigTIFF fed by blocks of rows: tifffile encodes it in a thread, pulling whole tile
    rows, so memory is a tile row plus two blocks."""

    def __init__(self, path: Path, height: int, width: int, channels: int, dtype: np.dtype):
        self.blocks: queue.Queue = queue.Queue(maxsize=2)
        self.error: BaseException | None = None
        shape = (height, width, 3) if channels == 3 else (height, width)
        self.thread = threading.Thread(target=self.encode, args=(path, shape, dtype), daemon=True)
        self.thread.start()

    def encode(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        import tifffile

        try:
            tifffile.imwrite(path, self.tiles(shape), shape=shape, dtype=dtype, tile=(TIFF_TILE, TIFF_TILE),
                             bigtiff=True, compression="zlib", photometric="rgb" if len(shape) == 3 else "minisblack")
        except BaseException as exc:  # noqa: BLE001 - handed to the predicting thread (write/close)
            self.error = exc

    def tiles(self, shape: tuple[int, ...]):  # noqa: ANN201 - an iterator of tiles, row-major
        pending = np.zeros((0, *shape[1:]), np.uint8)
        while True:
            block = self.blocks.get()
            if block is not None:
                pending = np.concatenate([pending, block])
            while len(pending) >= TIFF_TILE or (block is None and len(pending)):
                strip, pending = pending[:TIFF_TILE], pending[TIFF_TILE:]
                for left in range(0, shape[1], TIFF_TILE):
                    yield strip[:, left : left + TIFF_TILE]
            if block is None:
                return

    def write(self, rows: np.ndarray | None) -> None:
        while self.thread.is_alive():
            try:
                self.blocks.put(rows, timeout=1)
                return
            except queue.Full:
                continue
        raise DataError(f"writing the BigTIFF failed: {self.error}")

    def close(self) -> None:
        self.write(None)
        self.thread.join()
        if self.error is not None:
            raise DataError(f"writing the BigTIFF failed: {self.error}")

    def abort(self) -> None:
        if self.thread.is_alive():
            self.blocks.put(None)
            self.thread.join()
