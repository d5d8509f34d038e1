"""benchmarks/camvid_proxy.py's splits (issue 31): the proxy validates on a drive in no training frame."""

import sys
from pathlib import Path

from helpers import shared_data

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import camvid_proxy  # noqa: E402  (a script folder, not a package)


def sequences(pairs) -> set[str]:
    return {image.name.split("_")[0] for image, _ in pairs}


def test_the_proxy_holds_out_0006R0_whole_and_full_trains_on_every_frame():
    camvid = shared_data("camvid")
    every = len(list((camvid / "train").glob("*.jpg"))) + len(list((camvid / "val").glob("*.jpg")))
    proxy = camvid_proxy.split_frames("proxy")
    assert sequences(proxy["val"]) == {"0006R0"} and len(proxy["val"]) == 101
    assert "0006R0" not in sequences(proxy["train"]) and len(proxy["train"]) + 101 == every == 468
    full = camvid_proxy.split_frames("full")
    assert len(full["train"]) == 468 and set(full["val"]) <= set(full["train"])
    assert all(mask.is_file() and mask.stem == image.stem for image, mask in proxy["train"] + full["val"])
    old = camvid_proxy.split_frames("old")
    assert len(old["train"]) == 367 and sequences(old["val"]) == {"0016E5"}
