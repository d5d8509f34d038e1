"""`segdist predict` resumes: a crash leaves only whole files, a rerun finishes the job, done inputs are not redone."""

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, run_cli, shared_data
from PIL import Image

from segdist.evaluation.predict import predict

OUTPUTS = "index,overlay,probs"


@pytest.fixture
def frames(tmp_path):
    """A list file naming 10 real CamVid val frames (read in place)."""
    found = sorted((shared_data("camvid") / "val").glob("*.jpg"))[:10]
    listing = tmp_path / "frames.txt"
    listing.write_text("\n".join(str(f) for f in found) + "\n")
    return listing, found


def files_of(out) -> dict[str, int]:
    """Every file under `out` (temporary ones included) and its modification time."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def expected_files(stems) -> set[str]:
    return {f"{folder}/{stem}{suffix}" for stem in stems
            for folder, suffix in (("index", ".png"), ("overlay", ".jpg"), ("probs", ".npz"))}


def assert_whole(out, stems) -> None:
    """Every output of every stem is there and reads completely; nothing else is (no temporary files)."""
    assert set(files_of(out)) == expected_files(stems)
    for stem in stems:
        for image in (out / "index" / f"{stem}.png", out / "overlay" / f"{stem}.jpg"):
            with Image.open(image) as opened:
                opened.load()
        with np.load(out / "probs" / f"{stem}.npz") as f:
            assert f["probs"].shape[0] == 4 and f["probs"].dtype == np.uint8


def test_a_crash_then_a_rerun_completes_and_a_finished_job_is_left_alone(tiny_run, frames, tmp_path):
    listing, found = frames
    out, stems = tmp_path / "out", [f.stem for f in found]
    crashed = subprocess.run([sys.executable, "-m", "segdist", "predict", "--run", str(tiny_run), "--input",
                              f"@{listing}", "--out", str(out), "--outputs", OUTPUTS, "--workers", "0"],
                             capture_output=True, text=True, timeout=120, cwd=REPO,
                             env=dict(os.environ, SEGDIST_FAULT="kill_in_predict@5"))
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-3000:]
    left = files_of(out)
    # killed between writing the 6th input's first file and renaming it: five inputs whole, one temporary file
    assert [name for name in left if os.path.basename(name).startswith(".")] == \
        [name for name in left if name.startswith(f"index/.{stems[5]}.png.") and name.endswith(".tmp")]
    assert {name for name in left if not os.path.basename(name).startswith(".")} == expected_files(stems[:5])

    resumed = predict(tiny_run, f"@{listing}", out, outputs=OUTPUTS, workers=0)
    assert (resumed["totals"]["written"], resumed["totals"]["already_done"]) == (5, 5)
    assert [os.path.basename(w) for w in resumed["written"]] == [f.name for f in found[5:]]
    assert_whole(out, stems)

    finished = files_of(out)
    again = predict(tiny_run, f"@{listing}", out, outputs=OUTPUTS, workers=0)
    assert (again["totals"]["written"], again["totals"]["already_done"]) == (0, 10)
    assert files_of(out) == finished  # nothing written: the same files, the same times

    (out / "probs" / f"{stems[3]}.npz").unlink()  # an input is done only when every requested file is there
    partial = predict(tiny_run, f"@{listing}", out, outputs=OUTPUTS, workers=0)
    assert (partial["totals"]["written"], partial["totals"]["already_done"]) == (1, 9)
    now = files_of(out)
    assert {name for name in now if now[name] != finished.get(name)} == {f"probs/{stems[3]}.npz"}
    assert_whole(out, stems)


def test_overwrite_redoes_every_input(tiny_run, frames, tmp_path, capsys):
    listing, found = frames
    out = tmp_path / "out"
    argv = ["predict", "--run", tiny_run, "--input", f"@{listing}", "--out", out, "--outputs", "index",
            "--workers", "0"]
    run_cli(*argv)
    assert "wrote 10 prediction(s)" in capsys.readouterr().out
    run_cli(*argv)
    printed = capsys.readouterr().out
    assert "wrote 0 prediction(s)" in printed and "already done: 10" in printed
    run_cli(*argv, "--overwrite")
    printed = capsys.readouterr().out
    assert "wrote 10 prediction(s)" in printed and "already done" not in printed
    assert sorted(p.name for p in (out / "index").iterdir()) == sorted(f"{f.stem}.png" for f in found)
