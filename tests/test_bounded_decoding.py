"""One pixel limit, read from the header before decoding, in train, evaluate, predict, show and the API.

A PNG announcing 30000x30000 pixels takes under 1 MB on disk and 2.7 GB once decoded to RGB
(predict then makes its full-size class scores too); every reader must refuse it from its header.
"""

import json
import shutil
import struct
import subprocess
import sys
import tarfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import run_cli, run_train, synthetic_shards

from segdist.data.augment import CorruptSample, decode
from segdist.errors import DataError
from segdist.runs.run import read_rgb
from segdist.utils.images import TooManyPixels, decode_label, decode_rgb, stored_size

SIDE = 30000


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int = SIDE, whole: bool = True) -> bytes:
    """A grayscale PNG of side x side zeros: the whole image (about 1 MB at 30000) or its header only."""
    compressor, rows = zlib.compressobj(9), []
    row = bytes(side + 1)  # filter byte + pixels
    for _ in range(side if whole else 1):
        rows.append(compressor.compress(row))
    data = b"".join(rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "huge.png"
    path.write_bytes(png_bomb())
    assert path.stat().st_size < 1.5e6
    return path


def test_the_header_is_read_without_decoding(bomb):
    data = bomb.read_bytes()
    assert stored_size(data) == (SIDE, SIDE)
    for decode_one in (decode_rgb, decode_label):
        with pytest.raises(TooManyPixels, match=f"{SIDE}x{SIDE}"):
            decode_one(data)
    small = png_bomb(64, whole=True)
    assert decode_rgb(small).shape == (64, 64, 3)
    with pytest.raises(TooManyPixels, match="over --max-pixels 4095"):
        decode_rgb(small, max_pixels=4095)


def test_a_format_whose_size_pil_cannot_read_is_not_decoded_unbounded():
    """OpenCV decodes Radiance HDR, whose header PIL does not read: it would be decoded with no limit."""
    import cv2

    ok, hdr = cv2.imencode(".hdr", np.ones((4, 5, 3), np.float32))
    assert ok and stored_size(hdr.tobytes()) is None
    assert decode_rgb(hdr.tobytes()) is None and decode_label(hdr.tobytes()) is None


def test_a_shard_sample_over_the_limit_is_skipped_by_reason(bomb):
    label = png_bomb(8)
    with pytest.raises(CorruptSample) as caught:
        decode({"__key__": "k", "__url__": "s.tar", "png": bomb.read_bytes(), "seg.png": label})
    assert caught.value.reason == "too_large" and "s.tar: sample k" in str(caught.value)
    with pytest.raises(CorruptSample) as caught:  # the label is bounded too
        decode({"__key__": "k", "png": png_bomb(8), "seg.png": bomb.read_bytes()})
    assert caught.value.reason == "too_large"


def test_the_python_api_refuses_it_naming_the_file(bomb):
    with pytest.raises(DataError, match=f"{bomb}.*{SIDE}x{SIDE}"):
        read_rgb(bomb)


_MEASURED = """
import re, sys
from segdist.cli import main
try:
    main(sys.argv[1:])
finally:
    # VmHWM: this process's peak since exec. getrusage's ru_maxrss would keep the peak of the forked
    # pytest process it was before exec (a few GiB after the model tests); --workers 0: no children
    hwm = re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)
    print(f"PEAK_RSS_KB {hwm}")
"""


def test_predict_skips_a_header_bomb_by_name_in_little_memory(bomb, tiny_run, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(bomb, inputs / "huge.png")
    (inputs / "fine.png").write_bytes(png_bomb(80))
    result = subprocess.run([sys.executable, "-c", _MEASURED, "predict", "--run", str(tiny_run), "--input",
                             str(inputs), "--out", str(tmp_path / "out"), "--workers", "0"],
                            capture_output=True, text=True, timeout=300)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "huge.png" in out and f"{SIDE}x{SIDE}" in out and "wrote 1 prediction(s)" in out, out[-3000:]
    peak_gib = int(out.split("PEAK_RSS_KB ")[1].split()[0]) / 2**20
    assert peak_gib < 1.5, f"peak RSS {peak_gib:.2f} GiB"
    assert sorted(p.name for p in (tmp_path / "out" / "index").iterdir()) == ["fine.png"]


def _member_offsets(tar_path: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, m.offset_data, m.size) for m in tar.getmembers()]


def _plant_header_bomb(shard: Path, index: int) -> str:
    """Overwrite the `index`th member (an image) with a 30000x30000 PNG header of the same length."""
    name, at, size = _member_offsets(shard)[index]
    assert name.endswith((".jpg", ".png")) and not name.endswith(".seg.png"), name
    header = png_bomb(whole=False)
    assert len(header) <= size, (len(header), size)
    with open(shard, "r+b") as f:  # same length: the manifest's byte offsets stay right
        f.seek(at)
        f.write(header + bytes(size - len(header)))
    return name.split(".")[0]


@pytest.fixture(scope="module")
def bombed(tmp_path_factory, ray_cluster) -> tuple[Path, str, str]:
    root = tmp_path_factory.mktemp("bombed")
    shards = synthetic_shards(root, images=12, val_images=6, seed=5, width=128, height=96, shard_size=6)
    manifest = json.loads((shards / "dataset.json").read_text())
    train = shards / manifest["splits"]["train"]["shards"][0]["name"]
    val = shards / manifest["splits"]["val"]["shards"][0]["name"]
    return shards, _plant_header_bomb(train, 0), _plant_header_bomb(val, 0)


def test_train_and_evaluate_skip_a_header_bomb_in_a_shard(bombed, tmp_path):
    shards, _, val_key = bombed
    # 3 steps of 3: the epoch, all 9 training samples, the bombed one among them (batches of 4 leave one out)
    out = run_train(shards, tmp_path, "train.max_steps=3", "data.batch_size=3", "data.workers=0",
                    "train.name=bombed")
    assert json.loads((shards / "dataset.json").read_text())["splits"]["train"]["samples"] == 9
    summary = json.loads((tmp_path / "bombed/summary.json").read_text())
    assert summary["data_skipped"].get("too_large", 0) >= 1, (summary["data_skipped"], out[-2000:])
    from segdist.evaluation.evaluate import evaluate

    report = evaluate(tmp_path / "bombed", checkpoint="last", workers=0)
    assert report["unreadable_samples"] == 1
    assert report["unreadable_examples"][0][0] == val_key and report["unreadable_examples"][0][1] == "too_large"


def test_show_names_and_skips_a_sample_over_the_limit(bombed, tmp_path, capsys):
    shards, train_key, _ = bombed
    run_cli("show", shards, "--split", "train", "--n", "3", "--out", tmp_path)
    printed = capsys.readouterr().out
    assert f"sample {train_key}" in printed and "too_large" in printed, printed
    assert len(list(tmp_path.glob("*.png"))) == 3 and not (tmp_path / f"{train_key}.png").exists()
    run_cli("show", shards, "--split", "train", "--n", "2", "--out", tmp_path / "small", "--max-pixels", "100")
    assert not list((tmp_path / "small").glob("*.png")) and "over --max-pixels 100" in capsys.readouterr().out


def test_max_pixels_is_checked_on_the_command_line(capsys):
    with pytest.raises(SystemExit):
        run_cli("show", "shards/x", "--out", "/tmp/x", "--max-pixels", str(2**31))
    assert "OpenCV's limit" in capsys.readouterr().err
