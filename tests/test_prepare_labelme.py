"""`prepare labelme` on LabelMe trees over real CamVid frames; labels checked against labelme's drawing rule."""

import base64
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from helpers import manifest, read_shards, shared_data
from PIL import Image, ImageDraw

from segdist.errors import DataError
from segdist.prepare.inputs import SkipSample
from segdist.prepare.run import write
from segdist.prepare.sources import labelme
from segdist.utils.viz import default_palette

W, H = 480, 360  # CamVid frames
FRAMES = ["0001TP_006690", "0001TP_006720", "0001TP_006750"]
ROAD, CAR, TREE = 1, 2, 3  # --classes road,car,tree


def frame(index: int) -> Path:
    return shared_data("camvid") / "train" / f"{FRAMES[index]}.jpg"


def shape(label: str, kind: str | None, points: list, **extra) -> dict:
    return {"label": label, "points": points, "group_id": None, "description": "", "shape_type": kind,
            "flags": {}, **extra}


def write_json(path: Path, shapes: list[dict], image: Path | None = None, embed: Path | None = None,
               size: tuple[int, int] = (W, H)) -> None:
    """A LabelMe 5.x file: `image` referenced relative to the JSON (no copy), or `embed`'s bytes in imageData."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image_path = os.path.relpath(image, path.parent) if image else "gone/nowhere.jpg"
    data = base64.b64encode(embed.read_bytes()).decode() if embed else None
    path.write_text(json.dumps({"version": "5.4.1", "flags": {}, "shapes": shapes, "imagePath": image_path,
                                "imageData": data, "imageHeight": size[1], "imageWidth": size[0]}))


def labelme_mask(kind: str | None, points: list, line_width: int) -> np.ndarray:
    """labelme.utils.shape_to_mask, written out: one shape's pixels as PIL draws them with ink 1."""
    mask = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(mask)
    xy = [tuple(p) for p in points]
    if kind == "circle":
        (cx, cy), (px, py) = xy
        d = math.sqrt((cx - px) ** 2 + (cy - py) ** 2)
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], outline=1, fill=1)
    elif kind == "rectangle":  # Pillow >= 9.5 wants the top-left corner first; labelme passed them as clicked
        (x0, y0), (x1, y1) = xy
        draw.rectangle([(min(x0, x1), min(y0, y1)), (max(x0, x1), max(y0, y1))], outline=1, fill=1)
    elif kind in ("line", "linestrip"):
        draw.line(xy, fill=1, width=line_width)
    else:
        draw.polygon(xy, outline=1, fill=1)
    return np.asarray(mask) == 1


def expected_label(shapes: list[dict], values: dict[str, int], line_width: int, dtype: type = np.uint8) -> np.ndarray:
    """labelme.utils.shapes_to_label: each shape's mask painted in file order (points and masks not drawn)."""
    label = np.zeros((H, W), dtype)
    for s in shapes:
        if s["shape_type"] not in ("point", "mask") and s["label"] in values:
            label[labelme_mask(s["shape_type"], s["points"], line_width)] = values[s["label"]]
    return label


ROAD_POLYGON = shape("road", "polygon", [[0, 200.5], [479, 180], [479, 359], [0, 359]])
FRAME_A = [  # every shape type; the rectangle and the linestrip lie over the road polygon
    ROAD_POLYGON,
    shape("car", "rectangle", [[300.4, 250.6], [120.2, 150.5]]),  # bottom-right corner first
    shape("tree", "circle", [[400, 80], [430.5, 101]]),
    shape("car", "line", [[10, 10], [200, 60]]),
    shape("tree", "linestrip", [[20, 300], [100, 250], [160, 330], [250, 260]]),
    shape("car", "point", [[50, 50]]),
    shape("sky", "polygon", [[0, 0], [479, 0], [479, 40]]),  # not in --classes
    shape("car", "mask", [[0, 0], [9, 9]], mask="iVBORw0KGgo="),
    shape("tree", None, [[200, 20], [260, 20], [230, 70]]),  # labelme 3.x: no shape_type = polygon
]
FRAME_B = [shape("road", "rectangle", [[10, 20], [30, 25]]), shape("car", "circle", [[240, 180], [240, 150]])]


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Two good files (image by path; image embedded) and one of each kind of bad file."""
    root = tmp_path / "labelme"
    write_json(root / "a.json", FRAME_A, image=frame(0))
    write_json(root / "b.json", FRAME_B, embed=frame(1))
    (root / "c.json").write_text(json.dumps({"images": [], "annotations": []}))  # COCO, not LabelMe
    write_json(root / "d.json", [ROAD_POLYGON, shape("car", "polygon", [[1, 2], [3, "x"], [5, 6]])], image=frame(0))
    write_json(root / "e.json", [ROAD_POLYGON], image=frame(2), size=(640, 480))
    (root / "f.json").write_text('{"shapes": [')
    write_json(root / "sub" / "g.json", FRAME_B, image=frame(2))  # not taken without --recursive
    return root


def test_shapes_drawn_as_labelme_draws_them(tmp_path, tree, ray_cluster):
    classes = tmp_path / "classes.txt"
    classes.write_text("road\ncar\ntree\n")
    outs = []
    for workers in (1, 2):
        job = labelme.job(tree, f"@{classes}", split="val", line_width=3, shard_size=1)
        outs.append(tmp_path / f"out{workers}")
        write(job, outs[-1], workers=workers)

    samples = {s["key"]: s for s in read_shards(outs[0], "val")}
    assert sorted(samples) == ["a", "b"]
    values = {"road": ROAD, "car": CAR, "tree": TREE}
    a, b = samples["a"], samples["b"]
    assert np.array_equal(a["label"], expected_label(FRAME_A, values, 3))
    assert np.array_equal(b["label"], expected_label(FRAME_B, values, 3))
    overlap = labelme_mask("polygon", ROAD_POLYGON["points"], 3) & labelme_mask("rectangle", FRAME_A[1]["points"], 3)
    assert overlap.sum() > 1000 and (a["label"][overlap] == CAR).all()  # the later shape wins
    assert {ROAD, CAR, TREE} <= set(np.unique(a["label"]))
    # By hand: a rectangle holds both corners, rows 20..25 and columns 10..30.
    road = np.argwhere(b["label"] == ROAD)
    assert road.min(0).tolist() == [20, 10] and road.max(0).tolist() == [25, 30] and len(road) == 6 * 21
    assert a["image_bytes"] == frame(0).read_bytes() and b["image_bytes"] == frame(1).read_bytes()

    m = manifest(outs[0])
    assert m["classes"] == ["background", "road", "car", "tree"] and m["palette"] == default_palette(4)
    split = m["splits"]["val"]
    assert split["dropped_annotations"] == {"mask": 1, "point": 1, "unknown_label": 1}
    assert split["skipped"] == {"bad_shape": 1, "corrupt_json": 1, "not_labelme": 1, "size_mismatch": 1}
    for key, reason, detail in split["skipped_examples"]:
        assert f"{key}.json" in detail, (reason, detail)
    assert split["source"] == {"type": "labelme", "root": str(tree), "split": "val", "list": None, "recursive": False,
                               "line_width": 3, "unknown_to_ignore": False, "max_pixels": split["source"]["max_pixels"]}
    tars = [sorted(out.glob("*.tar")) for out in outs]
    assert [p.name for p in tars[0]] == [p.name for p in tars[1]] and len(tars[0]) == 2
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(*tars))


def test_recursive_list_and_unknown_to_ignore(tmp_path, prepare):
    root = tmp_path / "labelme"
    sky = shape("sky", "polygon", [[0, 0], [479, 0], [240, 90]])
    x_shapes = [shape("road", "rectangle", [[0, 200], [479, 359]]), sky]
    y_shapes = [sky, shape("car", "linestrip", [[0, 50], [240, 60], [479, 20]])]  # over the sky: default width 10
    write_json(root / "x.json", x_shapes, image=frame(0))
    write_json(root / "sub" / "y.json", y_shapes, image=frame(1))
    write_json(root / "sub" / "z.json", y_shapes, image=frame(2))  # not listed
    listed = tmp_path / "list.txt"
    listed.write_text("sub/y\nx\n")
    out = tmp_path / "out"
    prepare("labelme", "--root", root, "--classes", "road,car", "--recursive", "--list", listed,
            "--unknown-to-ignore", "--out", out)
    samples = {s["key"]: s for s in read_shards(out, "train")}
    assert sorted(samples) == ["sub__y", "x"]
    values = {"road": 1, "car": 2, "sky": 255}
    assert np.array_equal(samples["x"]["label"], expected_label(x_shapes, values, 10))
    assert np.array_equal(samples["sub__y"]["label"], expected_label(y_shapes, values, 10))
    assert (samples["x"]["label"] == 255).sum() > 1000
    split = manifest(out)["splits"]["train"]
    assert split["dropped_annotations"] == {} and split["samples"] == 2 and split["source"]["recursive"]

    missing = tmp_path / "missing.txt"
    missing.write_text("x\nsub/nope\n")
    with pytest.raises(DataError, match="sub/nope"):
        labelme.job(root, "road", list_file=missing, recursive=True)
    with pytest.raises(DataError, match="--recursive"):
        labelme.job(root, "road", list_file=listed)


def test_wide_labels_and_labelme_reserved_names(tmp_path):
    """uint16 label maps (ignore index 1000) and labels.txt's __ignore__/_background_, converted without Ray."""
    shapes = [shape("road", "polygon", [[0, 100], [479, 120], [479, 359], [0, 359]]),
              shape("_background_", "circle", [[200, 250], [240, 250]]),
              shape("__ignore__", "rectangle", [[50, 50], [150, 90]]),
              shape("sky", "line", [[0, 0], [479, 359]])]
    write_json(tmp_path / "one.json", shapes, image=frame(0))
    job = labelme.job(tmp_path, "__ignore__,_background_,road", ignore_index=1000, unknown_to_ignore=True)
    assert job.classes == ["background", "road"]
    sample = job.convert(job.splits["train"][0])
    values = {"road": 1, "_background_": 0, "__ignore__": 1000, "sky": 1000}
    assert sample.label.dtype == np.uint16
    assert np.array_equal(sample.label, expected_label(shapes, values, 10, np.uint16))


def test_worker_skips_name_the_file(tmp_path):
    write_json(tmp_path / "far.json", [shape("road", "circle", [[10, 10], [10, 5000]])], image=frame(0))
    write_json(tmp_path / "bad64.json", [], embed=frame(0))
    data = json.loads((tmp_path / "bad64.json").read_text())
    data["imageData"] = data["imageData"][:4000]  # a truncated JPEG
    (tmp_path / "bad64.json").write_text(json.dumps(data))
    job = labelme.job(tmp_path, "road")
    reasons = {}
    for spec in job.splits["train"]:
        with pytest.raises(SkipSample) as caught:
            job.convert(spec)
        assert spec.path in caught.value.detail
        reasons[spec.key] = caught.value.reason
    assert reasons == {"bad64": "corrupt_image", "far": "bad_shape"}
    with pytest.raises(DataError, match="twice"):
        labelme.job(tmp_path, "road,car,road")
