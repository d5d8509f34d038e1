"""`segdist predict --tile H W --overlap P`: slide windows band by band, bounded memory, rows written as they finish."""

import json
import tracemalloc

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from safetensors.torch import save_file

from segdist.config import Config
from segdist.config.loading import save_config
from segdist.errors import DataError
from segdist.evaluation.predict import predict
from segdist.evaluation.predict.tile_inputs import TiffRows
from segdist.evaluation.predict.tile_outputs import PngWriter
from segdist.models import build_from_config
from segdist.models.inference import TTA, infer, parse_tta, slide_logits
from segdist.models import tiled
from segdist.models.tiled import band_probabilities
from segdist.runs.run import load_run

CLASSES = ["background", "road", "roof", "tree"]


@pytest.fixture(scope="module")
def tiny_tile_run(tmp_path_factory):
    """A random-init U-Net (timm's test_resnet encoder) as a run directory: no training, no val_size."""
    root = tmp_path_factory.mktemp("tile_run")
    cfg = Config()
    cfg.model.arch, cfg.model.encoder = "unet", "test_resnet"
    cfg.model.arch_kwargs = {"decoder_channels": [16] * 5}
    save_config(cfg, root / "config.yaml")
    manifest = {"classes": CLASSES, "palette": [[0, 0, 0], [128, 64, 128], [200, 0, 0], [0, 160, 0]],
                "ignore_index": 255, "splits": {}, "mean": [0.4, 0.45, 0.5], "std": [0.25, 0.25, 0.25]}
    (root / "dataset.json").write_text(json.dumps(manifest))
    torch.manual_seed(0)
    model = build_from_config(cfg.model, len(CLASSES), pretrained=False)
    best = root / "checkpoints" / "best"
    best.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(best / "model.safetensors"))
    (best / "segdist_complete.json").write_text(json.dumps({"files": ["model.safetensors"]}))
    return root


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB image with structure at several scales (a random net then gives several classes)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    big = np.kron(small, np.ones((8, 8, 1), np.uint8))[:height, :width]
    return np.clip(big.astype(int) + rng.integers(-20, 20, big.shape), 0, 255).astype(np.uint8)


def test_band_logits_are_slide_logits_float_for_float_and_class_ids_agree():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.Upsample(scale_factor=2),
                              torch.nn.Conv2d(8, 5, 3, padding=1)).eval()
    # uneven grids, the last window aligned to the edge, an image smaller than the window, flip
    for (h, w), crop, stride, flip in [((97, 131), (40, 40), (17, 29), False), ((100, 150), (32, 48), (24, 40), True),
                                       ((20, 30), (32, 48), (24, 40), True)]:
        x = torch.randn(1, 3, h, w)
        finished, plain_shift = [], tiled.Band.shift

        def shift(band, rows):  # keeps the averaged logits of the rows done as the band moves on
            finished.append(band.average(0, rows).clone())
            plain_shift(band, rows)

        with torch.no_grad(), pytest.MonkeyPatch.context() as patch:
            patch.setattr(tiled.Band, "shift", shift)
            blocks = list(band_probabilities(net, lambda a, b: x[..., a:b, :], (h, w), crop, stride, flip))
            expected = infer(net, x, "slide", crop=crop, stride=stride, tta=TTA(flip=flip))[0]
            if not flip:
                assert torch.equal(torch.cat(finished, 2)[..., :h, :w], slide_logits(net, x, crop, stride))
        probs = torch.cat(blocks, 1)
        assert probs.shape == expected.shape
        # the softmax may differ in its last bit (the CPU kernel's vector/tail split: see models/tiled.py)
        torch.testing.assert_close(probs, expected, rtol=0, atol=1e-6)
        assert (probs.argmax(0) == expected.argmax(0)).float().mean() >= 0.9999


@pytest.mark.parametrize("tta", [None, "flip"])
def test_tiled_predict_writes_the_class_ids_of_slide_mode(tiny_tile_run, tmp_path, tta):
    rgb = smooth_image(150, 190)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    run = load_run(tiny_tile_run)
    expected = run.predict(rgb, mode="slide", crop=(64, 96), stride=(48, 80), tta=tta, device="cpu")
    done = predict(tiny_tile_run, tmp_path / "photo.png", tmp_path / "out", tile=(64, 96), overlap=16,
                   outputs="index,color", tta=parse_tta(tta), workers=0)
    assert done["written"] == [str(tmp_path / "photo.png")]
    index = np.asarray(Image.open(tmp_path / "out/index/photo.png"))
    assert index.shape == rgb.shape[:2] and len(np.unique(index)) > 1
    assert (index == expected).mean() >= 0.9999
    colour = np.asarray(Image.open(tmp_path / "out/color/photo.png"))
    assert np.array_equal(colour, np.asarray(run.palette, np.uint8)[index])


def test_a_tiff_input_is_read_by_segments_and_matches_the_decoded_image(tmp_path):
    rgb = smooth_image(300, 500, seed=1)
    tifffile.imwrite(tmp_path / "tiled.tif", rgb, tile=(64, 128), compression="zlib")
    tifffile.imwrite(tmp_path / "strips.tif", rgb, rowsperstrip=16)
    tifffile.imwrite(tmp_path / "grey.tif", rgb[..., 0], tile=(32, 32))
    for name, expected in [("tiled.tif", rgb), ("strips.tif", rgb), ("grey.tif", np.repeat(rgb[..., :1], 3, 2))]:
        rows = TiffRows(tmp_path / name)
        try:
            assert (rows.height, rows.width) == (300, 500)
            for top, bottom in [(0, 300), (5, 70), (250, 300), (63, 64)]:
                assert np.array_equal(rows.read(top, bottom), expected[top:bottom]), (name, top, bottom)
        finally:
            rows.close()


def test_a_tiff_tifffile_cannot_decode_alone_is_decoded_whole(tiny_tile_run, tmp_path):
    """LZW needs imagecodecs in tifffile (not a dependency): OpenCV decodes the image whole instead."""
    import cv2

    rgb = smooth_image(120, 100, seed=6)
    cv2.imwrite(str(tmp_path / "lzw.tif"), rgb[..., ::-1])  # OpenCV writes LZW TIFFs
    assert tifffile.TiffFile(tmp_path / "lzw.tif").pages[0].compression == 5
    Image.fromarray(rgb).save(tmp_path / "same.png")
    for name in ("lzw.tif", "same.png"):
        predict(tiny_tile_run, tmp_path / name, tmp_path / "out", tile=(64, 64), overlap=16, workers=0)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out/index/lzw.png")),
                          np.asarray(Image.open(tmp_path / "out/index/same.png")))


def test_the_band_held_does_not_grow_with_the_image_height(tiny_tile_run, tmp_path):
    """tracemalloc sees every numpy buffer (on the CPU the band is one): its peak for an image 4x as tall is that of
    the short one (plus tifffile's offset of each input tile), while the image's logits grow by 1.5 MB."""
    peaks = {}
    for height in (64, 256, 1024):  # the first one warms up untraced: imports and caches are not the band
        tifffile.imwrite(tmp_path / f"h{height}.tif", smooth_image(height, 128, seed=2), tile=(32, 32))
        if height > 64:
            tracemalloc.start()
        predict(tiny_tile_run, tmp_path / f"h{height}.tif", tmp_path / "out", tile=(64, 64), overlap=16,
                outputs="index,color", workers=0)
        if height > 64:
            peaks[height] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    band = 64 * 128 * len(CLASSES) * 4  # summed logits of one window row (float32): 128 KiB
    logits = {h: h * 128 * len(CLASSES) * 4 for h in peaks}  # what --mode slide holds, and more
    print(f"tracemalloc peaks {peaks} B; band {band} B; the images' logits {logits} B")
    assert peaks[1024] - peaks[256] < band / 4
    assert peaks[1024] - peaks[256] < (logits[1024] - logits[256]) / 50
    assert np.asarray(Image.open(tmp_path / "out/index/h1024.png")).shape == (1024, 128)


def test_an_image_over_the_pil_limit_is_written_as_a_tiled_bigtiff(tiny_tile_run, tmp_path, monkeypatch):
    rgb = smooth_image(300, 280, seed=3)
    Image.fromarray(rgb).save(tmp_path / "ortho.png")
    small = predict(tiny_tile_run, tmp_path / "ortho.png", tmp_path / "png", tile=(64, 64), overlap=8,
                    outputs="index,color", workers=0)
    assert small["written"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300 * 280 - 1)
    predict(tiny_tile_run, tmp_path / "ortho.png", tmp_path / "tif", tile=(64, 64), overlap=8,
            outputs="index,color", workers=0)
    monkeypatch.undo()
    for output in ("index", "color"):
        assert not (tmp_path / f"tif/{output}/ortho.png").exists()
        with tifffile.TiffFile(tmp_path / f"tif/{output}/ortho.tif") as tif:
            assert tif.is_bigtiff and tif.pages[0].is_tiled
            written = tif.asarray()
        assert np.array_equal(written, np.asarray(Image.open(tmp_path / f"png/{output}/ortho.png")))
    assert len(np.unique(tifffile.imread(tmp_path / "tif/index/ortho.tif"))) > 1
    # done is either name: a second run writes nothing
    again = predict(tiny_tile_run, tmp_path / "ortho.png", tmp_path / "tif", tile=(64, 64), overlap=8,
                    outputs="index,color", workers=0)
    assert again["already_done"] and not again["written"]


def test_what_tiles_cannot_bound_is_refused_before_anything_runs(tiny_tile_run, tmp_path):
    for options, words in [({"outputs": "index,overlay"}, "overlay"), ({"outputs": "probs"}, "probs"),
                           ({"tta": parse_tta("scales=0.5,1.0")}, "flip only"),
                           ({"mode": "slide", "crop": (64, 64), "stride": (48, 48)}, "leave out"),
                           ({"overlap": 64}, "overlap")]:
        with pytest.raises(DataError, match=words):
            predict(tiny_tile_run, tmp_path / "none.png", tmp_path / "out", tile=(64, 64), **options)
    with pytest.raises(DataError, match="--overlap belongs to --tile"):
        predict(tiny_tile_run, tmp_path / "none.png", tmp_path / "out", overlap=16)


def test_the_streamed_png_reads_back_as_written(tmp_path):
    rows = np.random.default_rng(0).integers(0, 300, (37, 23), dtype=np.uint16)
    for array in (rows.astype(np.uint8), rows, np.stack([rows.astype(np.uint8)] * 3, -1)):
        writer = PngWriter(tmp_path / "x.png", *array.shape[:2], 3 if array.ndim == 3 else 1, array.dtype)
        for top in range(0, 37, 10):
            writer.write(array[top : top + 10])
        writer.close()
        assert np.array_equal(np.asarray(Image.open(tmp_path / "x.png")), array)


def test_an_encoder_that_fails_in_its_thread_fails_the_write_and_a_short_png_fails_the_close(tmp_path, monkeypatch):
    import png

    rows = np.zeros((20, 30), np.uint8)
    short = PngWriter(tmp_path / "short.png", 40, 30, 1, np.uint8)
    short.write(rows)
    with pytest.raises(DataError, match="20 rows of 40"):
        short.close()

    def full_disk(self, file, rows):
        next(rows)
        raise OSError("disk full")

    monkeypatch.setattr(png.Writer, "write_packed", full_disk)
    failing = PngWriter(tmp_path / "full.png", 40, 30, 1, np.uint8)
    with pytest.raises(DataError, match="writing the PNG failed: disk full"):
        failing.write(rows)
        failing.write(rows)
    failing.abort()


def test_the_command_line_takes_tile_and_overlap_and_writes_index_and_color_by_default(tiny_tile_run, tmp_path):
    from helpers import run_cli

    tifffile.imwrite(tmp_path / "ortho.tif", smooth_image(90, 120, seed=4), tile=(32, 32))
    run_cli("predict", "--run", tiny_tile_run, "--input", tmp_path / "ortho.tif", "--out", tmp_path / "out",
            "--tile", 64, 64, "--overlap", 16, "--workers", 0)
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png")) == \
        ["color/ortho.png", "index/ortho.png"]
    assert not (tmp_path / "out/overlay").exists()


@pytest.mark.parametrize("pil_limit", [None, 1000])
def test_an_error_while_writing_leaves_no_file_and_no_temporary(tiny_tile_run, tmp_path, monkeypatch, pil_limit):
    from segdist.evaluation.predict import tiles

    Image.fromarray(smooth_image(200, 90, seed=5)).save(tmp_path / "photo.png")
    calls = []

    def failing(writers, labels, run):
        calls.append(len(labels))
        if len(calls) == 3:
            raise OSError("disk full")
        tiles_write_rows(writers, labels, run)

    tiles_write_rows = tiles.write_rows
    monkeypatch.setattr(tiles, "write_rows", failing)
    if pil_limit:  # the BigTIFF path: its encoder thread stops before its temporary file is removed
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", pil_limit)
    with pytest.raises(OSError, match="disk full"):
        predict(tiny_tile_run, tmp_path / "photo.png", tmp_path / "out", tile=(64, 64), overlap=16, workers=0)
    assert [p.name for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_tiles_to_an_s3_prefix_are_the_local_files(tiny_tile_run, s3_bucket, tmp_path, monkeypatch):
    import os

    import boto3

    Image.fromarray(smooth_image(100, 130, seed=7)).save(tmp_path / "a.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 130 - 1)  # a BigTIFF
    for out in (tmp_path / "out", f"{s3_bucket}/out"):
        predict(tiny_tile_run, tmp_path / "a.png", out, tile=(64, 64), overlap=16, workers=0)
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    bucket = s3_bucket.removeprefix("s3://")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"])
    assert keys == ["out/color/a.tif", "out/index/a.tif"]
    for key in keys:
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == (tmp_path / key).read_bytes()
