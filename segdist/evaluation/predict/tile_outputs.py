"""--tile's files, written as their rows are finished: a PNG row by row while the image is within PIL's limit
(PIL.Image.MAX_IMAGE_PIXELS), above it a tiled, zlib-compressed BigTIFF (.tif) tile row by tile row.

Both encoders (pypng, tifffile) pull their pixels from an iterator, while the band loop pushes blocks of
rows to two files at once (index and color): each encoder runs in a thread of its own, and `write` hands it
a block and returns once the encoder asks for the next one. One block is in flight, whatever the threads'
timing, plus what the encoder buffers (pypng a row, tifffile a tile row). With a queue of two blocks
instead, the band memory test's peak (tests/test_predict_tiles.py) moved by -34 to +28 KB between the two
heights in four runs and past the test's 32 KiB bound in a fifth, as the threads happened to run; handed
over one by one, by 7 to 10 KB in three.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import png
from PIL import Image

from segdist.errors import DataError

TIFF_TILE = 256  # the BigTIFF outputs' tile side
PNG_LEVEL = 6  # zlib's level for the PNGs (zlib's default)


def tiled_files(files: dict[str, str], size: tuple[int, int]) -> dict[str, str]:
    """The files of an image of `size`: PNGs within PIL's pixel limit, BigTIFFs (.tif) above it."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or size[0] * size[1] <= limit:
        return files
    return {output: str(Path(path).with_suffix(".tif")) for output, path in files.items()}


def either_suffix(existing: set[str]) -> set[str]:
    """`existing` with each BigTIFF also counted under its PNG name (done is one or the other)."""
    return existing | {str(Path(p).with_suffix(".png")) for p in existing if p.endswith(".tif")}


class StreamedFile:
    """A file encoded in a thread by a library that pulls its rows: `write` hands a block of rows over and returns
    once it is encoded, `close` waits for the file, `abort` stops the encoder (the caller removes its file)."""

    kind = "file"

    def __init__(self, path: Path, height: int, width: int, channels: int, dtype: np.dtype):
        self.blocks: queue.Queue = queue.Queue(maxsize=1)
        self.encoded = threading.Semaphore(0)  # released as the encoder asks for the block after one
        self.error: BaseException | None = None
        shape = (height, width, 3) if channels == 3 else (height, width)
        self.thread = threading.Thread(target=self.run, args=(path, shape, np.dtype(dtype)), daemon=True)
        self.thread.start()

    def run(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        try:
            self.encode(path, shape, dtype)
        except BaseException as exc:  # noqa: BLE001 - handed to the predicting thread (write/close)
            self.error = exc

    def encode(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Write the file at `path` from `self.received()`."""
        raise NotImplementedError

    def received(self) -> Iterator[np.ndarray]:
        """The blocks of rows handed over, until `close` (or `abort`)."""
        while (block := self.blocks.get()) is not None:
            yield block
            self.encoded.release()

    def write(self, rows: np.ndarray) -> None:
        """Hand `rows` to the encoder; return once it has encoded them (or raise why it stopped)."""
        self.hand_over(rows)
        while not self.encoded.acquire(timeout=1):
            if not self.thread.is_alive():
                raise DataError(f"writing the {self.kind} failed: {self.error}")

    def hand_over(self, rows: np.ndarray | None) -> None:
        while self.thread.is_alive():
            try:
                self.blocks.put(rows, timeout=1)
                return
            except queue.Full:
                continue
        raise DataError(f"writing the {self.kind} failed: {self.error}")

    def close(self) -> None:
        self.hand_over(None)
        self.thread.join()
        if self.error is not None:
            raise DataError(f"writing the {self.kind} failed: {self.error}")

    def abort(self) -> None:
        if self.thread.is_alive():
            self.blocks.put(None)
            self.thread.join()


class PngWriter(StreamedFile):
    """A PNG (8- or 16-bit grey, or 8-bit RGB) encoded by pypng as its rows arrive."""

    kind = "PNG"

    def encode(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        height, width = shape[:2]
        row_bytes = width * (shape[2] if len(shape) == 3 else 1) * dtype.itemsize
        # chunk_limit: pypng compresses each row as it comes (its default buffers 1 MiB of rows per file)
        writer = png.Writer(width, height, greyscale=len(shape) == 2, bitdepth=8 * dtype.itemsize,
                            compression=PNG_LEVEL, chunk_limit=row_bytes)
        with open(path, "wb") as file:
            written = writer.write_packed(file, packed_rows(self.received()))
        if written != height:  # write_packed takes the rows as given: an aborted file is short
            raise DataError(f"{written} rows of {height} were handed over")


def packed_rows(blocks: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Each row of `blocks` as its PNG bytes (16-bit samples big-endian), for pypng's write_packed: write would
    repack 16-bit rows value by value in Python (struct.pack), write_packed takes them as they are."""
    for block in blocks:
        block = np.ascontiguousarray(block, block.dtype.newbyteorder(">"))
        yield from block.reshape(len(block), -1).view(np.uint8)


class TiffWriter(StreamedFile):
    """A tiled, zlib-compressed BigTIFF encoded by tifffile, pulling whole tile rows: memory is a tile row and a
    block."""

    kind = "BigTIFF"

    def encode(self, path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
        import tifffile

        tifffile.imwrite(path, self.tiles(shape, dtype), shape=shape, dtype=dtype, tile=(TIFF_TILE, TIFF_TILE),
                         bigtiff=True, compression="zlib", photometric="rgb" if len(shape) == 3 else "minisblack")

    def tiles(self, shape: tuple[int, ...], dtype: np.dtype) -> Iterator[np.ndarray]:
        """The tiles of the rows received, row-major."""
        pending = np.zeros((0, *shape[1:]), dtype)
        for block in self.received():
            pending = np.concatenate([pending, block])
            while len(pending) >= TIFF_TILE:
                strip, pending = pending[:TIFF_TILE], pending[TIFF_TILE:]
                yield from (strip[:, left : left + TIFF_TILE] for left in range(0, shape[1], TIFF_TILE))
        yield from (pending[:, left : left + TIFF_TILE] for left in range(0, shape[1], TIFF_TILE) if len(pending))


WRITERS: dict[str, type[StreamedFile]] = {".png": PngWriter, ".tif": TiffWriter}  # by the file's suffix
