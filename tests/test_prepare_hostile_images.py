"""Huge, hostile or EXIF-turned images and masks: counted skips naming the file, never a crashed run."""

import io
import struct
import zlib

import numpy as np
from helpers import manifest, read_shards, square, write_coco
from PIL import Image


def _png(width: int, height: int, colour_type: int, idat: bytes) -> bytes:
    """A PNG whose header claims width x height, with whatever IDAT data (decoders see it only later)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _folder(root, n=4, size=(16, 8)):
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    for i in range(n):
        Image.new("RGB", size, (i, i, i)).save(root / "img" / f"f{i}.png")
        Image.fromarray(np.full(size[::-1], i % 2, np.uint8)).save(root / "mask" / f"f{i}.png")
    return ["folder", "--images", root / "img", "--masks", root / "mask", "--classes", "a,b"]


def test_images_and_masks_over_max_pixels_are_skipped_as_too_large(tmp_path, prepare):
    args = _folder(tmp_path)
    Image.new("RGB", (40, 30)).save(tmp_path / "img" / "f1.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "mask" / "f1.png")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(tmp_path / "mask" / "f2.png")  # its image is 16x8
    out = tmp_path / "out"
    prepare(*args, "--max-pixels", "1000", "--out", out)
    rec = manifest(out)["splits"]["train"]
    assert rec["samples"] == 2 and rec["skipped"] == {"too_large": 2}
    details = {key: detail for key, _, detail in rec["skipped_examples"]}
    assert details["f1"].endswith("img/f1.png is 40x30 = 1200 pixels, over --max-pixels 1000")
    assert details["f2"].endswith("mask/f2.png is 40x30 = 1200 pixels, over --max-pixels 1000")


def test_a_decompression_bomb_is_a_counted_skip_by_default(tmp_path, prepare):
    """20000 x 10000 = 200 megapixels: over PIL's DecompressionBombError limit, which is the default."""
    bomb = _png(20000, 10000, 2, zlib.compress(b"\0" * 64))
    anns = [{"image_id": i, "category_id": 1, "segmentation": square(1, 1, 8, 8)} for i in (1, 2)]
    images, ann_file = write_coco(tmp_path / "coco", [{"id": 1, "width": 16, "height": 16},
                                                      {"id": 2, "width": 20000, "height": 10000}], anns)
    (images / "000002.jpg").write_bytes(bomb)
    out = tmp_path / "coco_out"
    prepare("coco", "--images", images, "--annotations", ann_file, "--classes", "person", "--out", out)
    rec = manifest(out)["splits"]["train"]
    assert rec["samples"] == 1 and rec["skipped"] == {"too_large": 1}
    assert "000002.jpg is 20000x10000 = 200000000 pixels, over --max-pixels 178956970" in rec["skipped_examples"][0][2]

    args = _folder(tmp_path / "folder")
    (tmp_path / "folder/mask/f3.png").write_bytes(_png(20000, 10000, 0, zlib.compress(b"\0" * 64)))
    prepare(*args, "--out", tmp_path / "folder_out")
    assert manifest(tmp_path / "folder_out")["splits"]["train"]["skipped"] == {"too_large": 1}


def test_decoder_exceptions_on_images_and_masks_are_counted_skips(tmp_path, prepare):
    args = _folder(tmp_path, n=5)
    (tmp_path / "img/f0.png").write_bytes(_png(16, 8, 2, b"not zlib data at all"))  # header fine, data not
    (tmp_path / "mask/f1.png").write_bytes(_png(16, 8, 0, b"not zlib data at all"))
    (tmp_path / "mask/f2.png").write_bytes(_png(16, 8, 0, zlib.compress(b"\0" * 3)))  # too few rows
    Image.fromarray(np.zeros((8, 16), np.float32)).save(tmp_path / "mask/f3.tif")  # mode F: no ids
    (tmp_path / "mask/f3.png").unlink()
    out = tmp_path / "out"
    prepare(*args, "--out", out)
    rec = manifest(out)["splits"]["train"]
    assert rec["samples"] == 1
    assert rec["skipped"] == {"corrupt_image": 1, "corrupt_mask": 2, "unsupported_mask": 1}
    reasons = {key: (reason, detail) for key, reason, detail in rec["skipped_examples"]}
    assert reasons["f0"][0] == "corrupt_image" and "img/f0.png" in reasons["f0"][1]
    assert reasons["f1"][0] == "corrupt_mask" and "mask/f1.png" in reasons["f1"][1]
    assert reasons["f3"] == ("unsupported_mask", f"{tmp_path}/mask/f3.tif: PIL mode F is neither ids "
                                                 "(1, L, P, I;16, I, LA, PA) nor colours (RGB, RGBA)")


def _exif_jpeg(width: int, height: int, orientation: int) -> bytes:
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 4] = 255  # a bright left quarter: turned, it would be elsewhere
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    return buf.getvalue()


def test_jpegs_are_read_on_their_stored_grid_whatever_their_exif_orientation(tmp_path, prepare):
    (tmp_path / "img").mkdir()
    (tmp_path / "mask").mkdir()
    mask = np.zeros((20, 40), np.uint8)
    mask[:, :10] = 1  # the bright quarter, on the stored grid
    for orientation in range(1, 9):
        (tmp_path / "img" / f"o{orientation}.jpg").write_bytes(_exif_jpeg(40, 20, orientation))
        Image.fromarray(mask).save(tmp_path / "mask" / f"o{orientation}.png")
    out = tmp_path / "out"
    prepare("folder", "--images", tmp_path / "img", "--masks", tmp_path / "mask", "--classes", "dark,bright",
            "--out", out)
    rec = manifest(out)["splits"]["train"]
    assert rec["samples"] == 8 and rec["skipped"] == {}
    for sample in read_shards(out, "train"):
        assert sample["meta"]["width"] == 40 and sample["meta"]["height"] == 20
        assert np.array_equal(sample["label"], mask)
        assert sample["image_bytes"] == (tmp_path / "img" / f"{sample['key']}.jpg").read_bytes()
    # statistics from the stored grid: a quarter of the pixels bright
    assert abs(rec["mean"][0] - 0.25) < 0.02
