"""`segdist predict --tile H W --overlap P`: an image of any size predicted band by band, its files written row by row.

The windows are `--mode slide --crop H W --stride H-P W-P`'s (models/tiled.py: the same logits, float for
float), at the image's stored resolution (the run's data.val_size is not applied). Memory held, whatever
the image's height: one window row of summed logits (H x W_image x classes float32; twice with TTA flip),
the image rows under it, and the finished rows on their way to the files. Inputs: a TIFF/BigTIFF (local)
is read strip by strip or tile by tile with tifffile, decoding only the segments under the band
(uncompressed, deflate or LZMA; LZW, JPEG and PackBits need the imagecodecs package, else such a TIFF
is decoded whole as other formats are); other formats are decoded whole by PIL/OpenCV (uint8, up to
--max-pixels). Outputs: index and color only, as a PNG streamed row by row while the image is within
PIL's limit (PIL.Image.MAX_IMAGE_PIXELS), above it as a tiled, zlib-compressed BigTIFF (.tif) streamed
tile row by tile row; overlay (JPEG, at most 65,535 pixels a side) and probs (C x H x W in one .npz)
cannot be bounded and are refused.
"""

from __future__ import annotations

import queue
import struct
import threading
import zlib
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from segdist import storage
from segdist.errors import DataError
from segdist.evaluation.predict.destination import Destination
from segdist.evaluation.predict.inputs import SampleInput
from segdist.evaluation.predict.outputs import OutputPlan
from segdist.evaluation.predict.reading import InputImages, Loaded
from segdist.models.inference import TTA, argmax, autocast
from segdist.models.tiled import band_probabilities
from segdist.runs.run import Run
from segdist.utils.images import decode_rgb
from segdist.utils.viz import colorize

TILE_OUTPUTS = ("index", "color")
TIFF_TILE = 256  # the BigTIFF outputs' tile side
JPEG_COMPRESSIONS = (6, 7, 34892, 33007)  # tifffile passes these their JPEG tables
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # TIFF and BigTIFF, either byte order


def check_tiles(tile: Sequence[int], overlap: int, mode: str, tta: TTA, plan: OutputPlan) -> None:
    """Refuse what --tile cannot do, with the reason."""
    if len(tile) != 2 or min(tile) < 1 or not 0 <= overlap < min(tile):
        raise DataError(f"--tile {' '.join(map(str, tile))} --overlap {overlap}: give H W >= 1 and 0 <= overlap < "
                        "min(H, W)")
    if mode != "whole":
        raise DataError("--tile H W --overlap P already is --mode slide --crop H W --stride H-P W-P: leave out "
                        "--mode, --crop and --stride")
    if tta.scales != (1.0,):
        raise DataError("--tile supports --tta flip only: other scales would resize the whole image")
    refused = [o for o in plan.outputs if o not in TILE_OUTPUTS] if plan.output_format == "segdist" else ["labelIds"]
    if refused:
        raise DataError(f"--tile writes index and color only ({', '.join(refused)} cannot be written with bounded "
                        "memory: overlay is one JPEG, probs one C x H x W array, cityscapes images are small)")


def grid(tile: Sequence[int], overlap: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """(crop, stride) of the slide mode --tile H W --overlap P equals."""
    return (tile[0], tile[1]), (tile[0] - overlap, tile[1] - overlap)


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


def tiled_files(files: dict[str, str], size: tuple[int, int]) -> dict[str, str]:
    """The files of an image of `size`: PNGs within PIL's pixel limit, BigTIFFs (.tif) above it."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is None or size[0] * size[1] <= limit:
        return files
    return {output: str(Path(path).with_suffix(".tif")) for output, path in files.items()}


def either_suffix(existing: set[str]) -> set[str]:
    """`existing` with each BigTIFF also counted under its PNG name (done is one or the other)."""
    return existing | {str(Path(p).with_suffix(".png")) for p in existing if p.endswith(".tif")}


@torch.no_grad()
def predict_tiled(run: Run, item: Loaded, destination: Destination, device: torch.device, tile: Sequence[int],
                  overlap: int, tta: TTA, max_pixels: int) -> str | None:
    """Predict the image `item.source` window row by window row and write its files as its rows are finished;
    None, or why the image could not be read (it is skipped, as unreadable inputs are)."""
    try:
        source = open_rows(item.source, max_pixels)
    except (OSError, ValueError) as exc:  # DataError, TooManyPixels and tifffile's TiffFileError are ValueErrors
        return f"cannot read it ({exc})"
    try:
        size = (source.height, source.width)
        model, normalize = run.model_on(device), run.normalizer().to(device)

        def rows(top: int, bottom: int) -> torch.Tensor:
            block = torch.from_numpy(np.ascontiguousarray(source.read(top, bottom).transpose(2, 0, 1)))
            return normalize(block[None].to(device))

        crop, stride = grid(tile, overlap)
        with ExitStack() as stack, autocast(device, run.config.train.mixed_precision):
            writers = open_writers(stack, destination, tiled_files(item.files, size), size, run)
            for probs in band_probabilities(model, rows, size, crop, stride, flip=tta.flip):
                write_rows(writers, argmax(probs).cpu().numpy(), run)
            for writer in writers.values():
                writer.close()
    finally:
        source.close()
    return None


def open_writers(stack: ExitStack, destination: Destination, files: dict[str, str], size: tuple[int, int],
                 run: Run) -> dict:
    """{output: writer} of each file, each written to a temporary path published when `stack` closes cleanly."""
    writers = {}
    for output, relative in files.items():
        path = stack.enter_context(destination.writing(relative))
        kind = TiffWriter if relative.endswith(".tif") else PngWriter
        channels, dtype = (3, np.uint8) if output == "color" else (1, label_dtype(run))
        writers[output] = kind(path, *size, channels, dtype)
        stack.callback(writers[output].abort)  # an error: the encoder stops before its file is removed
    return writers


def label_dtype(run: Run) -> type:
    return np.uint8 if run.num_classes <= 256 else np.uint16


def write_rows(writers: dict, labels: np.ndarray, run: Run) -> None:
    """Hand finished rows of class ids (and their colours) to the writers."""
    labels = labels.astype(label_dtype(run))
    for output, writer in writers.items():
        writer.write(colorize(labels, run.palette, run.ignore_index) if output == "color" else labels)


class TiledInputs(InputImages):
    """This process's inputs for --tile: done ones passed over, the others only named (predict_tiled reads them)."""

    def __getitem__(self, index: int) -> Loaded:
        item = self.items[index]
        if isinstance(item, SampleInput):
            return Loaded(item.where, error="--tile reads image files, not the samples of --shards")
        loaded = self.to_write(item.where, item.name)
        loaded.source = item.url if loaded.files else None
        return loaded
