"""Names that come from data (a manifest's shards, a tar member's key, a staged record) are never code or paths."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import run_cli

from segdist import storage
from segdist.data.info import DatasetInfo, load_dataset_info
from segdist.data.show import show
from segdist.errors import DataError
from segdist.evaluation.cityscapes_results import ResultWriter
from segdist.format.manifest import read_manifest
from segdist.prepare.staging import Staging
from segdist.utils.files import is_plain_name, safe_file_name

HOSTILE_KEYS = ["../escape", "../../escape2", "/abs/x", "nul\0key", "..", ".", "", "a/b/../../../c"]


def manifest(shards: list[str], split: str = "val") -> dict:
    return {"classes": ["background", "thing"], "palette": [[0, 0, 0], [255, 0, 0]], "ignore_index": 255,
            "splits": {split: {"samples": len(shards), "shards": [{"name": n, "samples": 1} for n in shards]}}}


def dataset(root: Path, shards: list[str], split: str = "val") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(manifest(shards, split)))
    return root


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


# -- storage names: data, never code ----------------------------------------------------------------

def test_a_shard_named_like_a_shell_command_runs_nothing_and_is_refused_by_name(tmp_path):
    proof = tmp_path / "P"
    name = f"x.tar; touch {proof} #"
    shards = dataset(tmp_path / "d", [name])
    source = f"pipe:cat {shards}/{{name}}"
    with pytest.raises(DataError, match=r"dataset\.json.*x\.tar; touch"):
        load_dataset_info(source)
    with pytest.raises(DataError, match="x.tar; touch"):
        storage.join(source, name)
    with pytest.raises(DataError, match="x.tar; touch"):  # a manifest that got past the loader still runs nothing
        DatasetInfo(source, manifest([name])).shards("val")
    assert not proof.exists()


def test_a_pipe_source_still_reads_a_plainly_named_manifest_and_shard(tmp_path):
    shards = dataset(tmp_path / "d", ["val-000000.tar"])
    (shards / "val-000000.tar").write_bytes(b"tar bytes")
    info = load_dataset_info(f"pipe:cat {shards}/{{name}}")
    urls, _ = info.shards("val")
    assert urls == [f"pipe:cat {shards}/val-000000.tar"]
    assert storage.read_bytes(urls[0]) == b"tar bytes"


@pytest.mark.parametrize("root", ["/data/shards", "file:///data/shards", "http://h/data", "https://h/data/",
                                  "s3://bucket/prefix", "pipe:curl -fsS http://h/data/{name}"])
@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "..", ".", "x\0.tar", "", "-rf",
                                  "a b.tar", "$(id).tar", "`id`.tar", "x.tar\n", "http://evil/x.tar"])
def test_join_never_leaves_its_root(root, name):
    with pytest.raises(DataError, match="not a plain file name"):
        storage.join(root, name)


def test_join_keeps_what_prepare_writes():
    assert storage.join("http://h/data", "train-000000.tar") == "http://h/data/train-000000.tar"
    assert storage.join("/data/shards", "val-000003_1.tar") == "/data/shards/val-000003_1.tar"
    assert storage.join("pipe:cat /d/{name}", "dataset.json") == "pipe:cat /d/dataset.json"
    assert all(map(is_plain_name, ["train-000000.tar", "val_x-000001_12.tar", "dataset.json"]))


@pytest.mark.parametrize("name", ["../x.tar", "/etc/passwd", "sub/x.tar", "x\0.tar", "x.tar; rm -rf ~ #"])
def test_a_manifest_with_a_path_for_a_shard_name_is_refused_naming_dataset_json(tmp_path, name):
    shards = dataset(tmp_path / "d", ["val-000000.tar", name])
    with pytest.raises(DataError, match=r"d/dataset\.json \(split 'val'\)"):
        load_dataset_info(shards)
    with pytest.raises(DataError, match=r"dataset\.json"):
        read_manifest(shards)


def test_a_manifest_with_a_path_for_a_split_name_is_refused_naming_dataset_json(tmp_path):
    shards = dataset(tmp_path / "d", ["val-000000.tar"], split="../../outside")
    with pytest.raises(DataError, match=r"dataset\.json: a split name"):
        load_dataset_info(shards)


# -- a run directory's config.yaml is data too -----------------------------------------------------

def fake_run(root: Path, shards: str) -> Path:
    root.mkdir(parents=True)
    (root / "config.yaml").write_text(json.dumps({"data": {"shards": shards}}))  # JSON is YAML
    (root / "dataset.json").write_text(json.dumps(manifest(["val-000000.tar"])))
    return root


def test_evaluate_of_a_run_whose_config_holds_a_pipe_command_refuses_to_run_it_without_shards(tmp_path, capsys):
    proof = tmp_path / "P"
    run = fake_run(tmp_path / "run", f"pipe:touch {proof}; cat /nowhere/{{name}}")
    with pytest.raises(SystemExit):
        run_cli("evaluate", "--run", run)
    err = capsys.readouterr().err
    assert "pipe:" in err and "--shards" in err and "config.yaml" in err
    assert not proof.exists()


def test_evaluate_with_shards_restated_gets_past_the_pipe_check(tmp_path, capsys):
    run = fake_run(tmp_path / "run", "pipe:cat /nowhere/{name}")
    with pytest.raises(SystemExit):  # it goes on to the (missing) checkpoint
        run_cli("evaluate", "--run", run, "--shards", tmp_path / "elsewhere")
    err = capsys.readouterr().err
    assert "checkpoint" in err and "--shards" not in err


# -- nothing written outside the output directory --------------------------------------------------

def test_a_safe_file_name_never_holds_a_path_and_keeps_keys_apart():
    names = [safe_file_name(key, ".png") for key in HOSTILE_KEYS]
    for name in names:
        assert "/" not in name and "\0" not in name and not name.startswith(".")
        assert Path(name).name == name and name not in (".png", "..png")
    assert len(set(names)) == len(names)
    assert safe_file_name("train_000123", ".png") == "train_000123.png"  # a plain key is kept as it is
    assert safe_file_name("aachen_000000_000019 copy") == "aachen_000000_000019 copy"
    assert safe_file_name("../escape").startswith("_.._escape-")  # still readable
    assert len(safe_file_name("x" * 1000, ".png").encode()) <= 255


def png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def hostile_shard(path: Path, keys: list[str]) -> None:
    """A tar of samples `key.png` + `key.seg.png`; every name in a pax `path` record, so NUL and `/` survive."""
    image, label = png(np.full((4, 6, 3), 200, np.uint8)), png(np.ones((4, 6), np.uint8))
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for key in keys:
            for ext, data in (("png", image), ("seg.png", label)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.pax_headers = len(data), {"path": f"{key}.{ext}"}
                tar.addfile(info, io.BytesIO(data))


def test_show_of_members_named_like_paths_writes_only_under_out(tmp_path):
    keys = ["../escape", "../../escape2", "/abs/x", "nul\0key", "plain_key"]
    shards = dataset(tmp_path / "work" / "d", ["val-000000.tar"])
    data = json.loads((shards / "dataset.json").read_text())
    data["splits"]["val"]["samples"] = data["splits"]["val"]["shards"][0]["samples"] = len(keys)
    (shards / "dataset.json").write_text(json.dumps(data))
    hostile_shard(shards / "val-000000.tar", keys)
    before = files_under(tmp_path)
    out = tmp_path / "work" / "out"
    assert show(shards, "val", out, n=10) == len(keys)
    new = files_under(tmp_path) - before
    assert len(new) == len(keys) and all(p.parent == out for p in new)
    assert (out / "plain_key.png").is_file()
    assert not Path("/abs").exists()


class Prediction:
    def __init__(self, array: np.ndarray):
        self.array = array

    def cpu(self) -> Prediction:
        return self

    def numpy(self) -> np.ndarray:
        return self.array


def test_the_cityscapes_writer_keeps_a_hostile_key_inside_its_folder(tmp_path):
    writer = ResultWriter(tmp_path / "out")
    for key in ["..\0x_000000_000001", "a\\b_000000_000002", "aachen_000000_000019_leftImg8bit"]:
        writer(key, Prediction(np.zeros((4, 6), np.int64)))
    assert writer.written == 3
    assert {p.parent for p in files_under(tmp_path)} == {tmp_path / "out"}
    assert (tmp_path / "out" / "aachen_000000_000019_leftImg8bit.png").is_file()


def test_a_staged_record_naming_a_path_outside_the_staging_folder_is_not_taken_as_done(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    staging = Staging(out, "train", "fp")
    staging.open(tasks=1)
    (out / "victim.tar").write_bytes(b"12345")
    record = {"index": 0, "parts": [{"name": "../victim.tar", "bytes": 5}]}
    (staging.dir / "train-000000.json").write_text(json.dumps(record))
    assert staging.completed() == {}
