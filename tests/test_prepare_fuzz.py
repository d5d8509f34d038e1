"""Property tests: random COCO JSON and random mask files end in a clear error or in counted skips.

Never a traceback, never a half-written shard. Each example runs the real `segdist prepare`
(in-process, on the session's Ray cluster) into a fresh directory and checks the outcome:
either `segdist: error: ...` naming an input file, with nothing left behind, or a dataset
whose every listed shard is complete. Derandomized and bounded, so CI is reproducible and
stays well under 2 minutes.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from segdist.cli import main

FUZZ = settings(max_examples=60, deadline=None, derandomize=True, print_blob=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
W, H = 16, 12

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
coordinates = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**12), 10**12) | st.sampled_from(
    [0, 3.5, W, H, -1e9, 1e9])
polygons = st.lists(st.lists(coordinates, max_size=12), max_size=3)
counts_lists = st.lists(st.integers(-5, W * H + 5), max_size=8)
counts_strings = st.text(alphabet=st.characters(min_codepoint=40, max_codepoint=120), max_size=12)
rle = st.fixed_dictionaries({
    "counts": counts_lists | counts_strings | json_values,
    "size": st.sampled_from([[H, W], [W, H], [H], "x", [H, W + 1]]) | json_values,
})
segmentations = st.one_of(
    polygons,
    rle,
    json_values,
    st.just([[1, 1, 10, 1, 10, 10, 1, 10]]),  # fine: the run goes on to convert
    st.just({"counts": [30, 40, W * H - 70], "size": [H, W]}),
)


def _base() -> dict:
    return {
        "images": [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H} for i in (1, 2)],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "iscrowd": 0, "bbox": [1, 1, 9, 9],
                         "segmentation": [[1, 1, 10, 1, 10, 10, 1, 10]]} for i in (1, 2)],
        "categories": [{"id": 1, "name": "person"}, {"id": 2, "name": "car"}],
    }


@st.composite
def coco_documents(draw) -> object:
    """A valid COCO document plus annotations with random segmentations, then (less often) random damage
    to whole sections, entries, keys and values."""
    doc = _base()
    for _ in range(draw(st.integers(0, 4))):
        doc["annotations"].append({
            "id": 10 + len(doc["annotations"]), "image_id": draw(st.sampled_from([1, 2, 3])),
            "category_id": draw(st.sampled_from([1, 1, 2, 7])), "iscrowd": draw(st.sampled_from([0, 1, True])),
            "segmentation": draw(segmentations),
        })
    for _ in range(draw(st.integers(0, 2))):
        section = draw(st.sampled_from(["images", "annotations", "annotations", "categories"]))
        kind = draw(st.sampled_from(["value", "value", "drop", "entry", "duplicate", "section"]))
        entry = draw(st.sampled_from(doc[section])) if isinstance(doc[section], list) and doc[section] else None
        if kind == "section":
            doc[section] = draw(json_values)
        elif kind == "value" and isinstance(entry, dict) and entry:
            entry[draw(st.sampled_from(sorted(entry)))] = draw(json_values | st.integers(-3, 3))
        elif kind == "drop" and isinstance(entry, dict) and entry:
            del entry[draw(st.sampled_from(sorted(entry)))]
        elif kind == "entry" and entry is not None:
            doc[section][doc[section].index(entry)] = draw(json_values)
        elif kind == "duplicate" and entry is not None:
            doc[section].append(json.loads(json.dumps(entry)))
    return draw(st.sampled_from([doc] * 9 + [draw(json_values)]))


def _run(*argv) -> tuple[int, str]:
    """`segdist prepare ...`: (0, "") or (exit code, the error message)."""
    import contextlib

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["prepare", *map(str, argv)])
        except SystemExit as exc:
            errors = [line for line in err.getvalue().splitlines() if line.startswith("segdist: error: ")]
            return int(exc.code), errors[-1] if errors else err.getvalue()
    return 0, ""


def _check_outcome(code: int, message: str, out: Path, files: list[Path]) -> None:
    if code:
        assert code == 2 and message.startswith("segdist: error: "), message
        assert any(str(f) in message for f in files), f"the error names no input file: {message}"
        assert not out.exists(), sorted(p.name for p in out.iterdir())
        return
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith((".tmp", ".partial"))]
    assert not leftovers
    manifest = json.loads((out / "dataset.json").read_text())
    for split in manifest["splits"].values():
        assert split["samples"] > 0
        assert sum(split["skipped"].values()) == len(split["skipped_examples"]) or len(split["skipped_examples"]) == 50
        for shard in split["shards"]:
            with tarfile.open(out / shard["name"]) as tar:
                assert len(tar.getnames()) == 3 * shard["samples"]


@pytest.fixture(scope="module")
def coco_images(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_coco")
    for i in (1, 2):
        Image.new("RGB", (W, H), (40 * i, 0, 0)).save(root / f"{i}.jpg")
    return root


def _with_segmentation(segmentation: object, **image: object) -> dict:
    doc = _base()
    doc["annotations"][0]["segmentation"] = segmentation
    doc["images"][0].update(image)
    return doc


def _examples(docs: list[dict]):
    def decorate(test):
        for doc in docs:
            test = example(doc=doc)(test)
        return test
    return decorate


HOSTILE_COCO = [
    _with_segmentation([[-1e12, -1e12, 1e12, -1e12, 1e12, 1e12, -1e12, 1e12]]),  # far out: clipped, not a crash
    _with_segmentation([[1, 1, float("nan"), 1, 10, 10]]),
    _with_segmentation([[1, 1, float("inf"), 1, 10, 10]]),
    _with_segmentation({"counts": [-5, W * H + 5], "size": [H, W]}),  # pycocotools would write past its buffer
    _with_segmentation({"counts": [5, 5], "size": [H, W]}),  # too short: decode reads past the counts
    _with_segmentation({"counts": "~~~", "size": [H, W]}),
    _with_segmentation({"counts": "o", "size": [H, W]}),  # a number that never ends
    _with_segmentation({"counts": "0", "size": [W, H]}),
    _with_segmentation({"counts": [W * H], "size": [H, W]}, width=10**12, height=10**12, file_name="none.jpg"),
    _with_segmentation([[1, 1, 10, 1, 10, 10, 1, 10]], file_name="a\0b.jpg"),
]


@FUZZ
@given(doc=coco_documents())
@_examples(HOSTILE_COCO)
def test_random_coco_json_ends_in_a_named_error_or_counted_skips(coco_images, ray_cluster, doc):
    with tempfile.TemporaryDirectory() as tmp:
        ann, out = Path(tmp) / "instances.json", Path(tmp) / "out"
        ann.write_text(json.dumps(doc))
        code, message = _run("coco", "--images", coco_images, "--annotations", ann, "--classes", "person",
                             "--out", out)
        _check_outcome(code, message, out, [ann, coco_images])


MODES = ["1", "L", "P", "I;16", "I", "RGB", "RGBA", "LA"]


@st.composite
def mask_files(draw) -> tuple[str, bytes]:
    """(file suffix, bytes) of a mask: any mode, size and values; sometimes truncated or not an image."""
    mode = draw(st.sampled_from(MODES))
    height, width = draw(st.sampled_from([(H, W), (H, W), (W, H), (1, 1)]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    top = draw(st.sampled_from([2, 4, 256, 70000]))
    if mode in ("RGB", "RGBA", "LA"):
        channels = {"RGB": 3, "RGBA": 4, "LA": 2}[mode]
        palette = np.array([[0, 0, 0, 255], [255, 0, 0, 255], [0, 255, 0, 0], [1, 2, 3, 255]], np.uint8)
        pixels = palette[rng.integers(0, draw(st.integers(1, 4)), (height, width))][..., :channels]
        if mode == "LA":
            pixels = np.stack([rng.integers(0, min(top, 256), (height, width)), pixels[..., 1]], -1).astype(np.uint8)
        image = Image.fromarray(pixels, mode)
    elif mode == "1":
        image = Image.fromarray(rng.integers(0, 2, (height, width)).astype(bool))
    elif mode == "I":
        image = Image.fromarray(rng.integers(-3, top, (height, width)).astype(np.int32), "I")
    else:  # L, P (palette indices are the ids) and I;16
        dtype = np.uint16 if mode == "I;16" else np.uint8
        values = rng.integers(0, min(top, np.iinfo(dtype).max), (height, width)).astype(dtype)
        image = Image.fromarray(values, "P" if mode == "P" else None)
    suffix = ".tif" if mode == "I" else ".png"
    buf = io.BytesIO()
    image.save(buf, format="TIFF" if suffix == ".tif" else "PNG")
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "none", "none", "truncate", "garbage"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif damage == "garbage":
        data = draw(st.binary(max_size=64))
    return suffix, data


@FUZZ
@given(masks=st.lists(mask_files(), min_size=1, max_size=3), classes=st.integers(2, 5),
       palette=st.booleans(), unknown_to_ignore=st.booleans(), source_ignore=st.sampled_from([None, 1, 3, 255]),
       ignore_index=st.sampled_from([None, 5, 255, 300]))
def test_random_masks_end_in_a_named_error_or_counted_skips(ray_cluster, masks, classes, palette, unknown_to_ignore,
                                                            source_ignore, ignore_index):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "img").mkdir()
        (root / "mask").mkdir()
        for i, (suffix, data) in enumerate(masks):
            Image.new("RGB", (W, H), (i, 0, 0)).save(root / "img" / f"m{i}.jpg")
            (root / "mask" / f"m{i}{suffix}").write_bytes(data)
        argv = ["folder", "--images", root / "img", "--masks", root / "mask", "--out", root / "out",
                "--classes", ",".join(f"c{i}" for i in range(classes))]
        if palette:
            colours = [[0, 0, 0], [255, 0, 0], [0, 255, 0], [9, 9, 9], [8, 8, 8]][:classes]
            (root / "palette.json").write_text(json.dumps(colours))
            argv += ["--palette", root / "palette.json"]
        argv += ["--unknown-to-ignore"] if unknown_to_ignore else []
        argv += ["--source-ignore", source_ignore] if source_ignore is not None else []
        argv += ["--ignore-index", ignore_index] if ignore_index is not None else []
        code, message = _run(*argv)
        _check_outcome(code, message, root / "out", [root / "mask", root / "img", root / "palette.json"])
