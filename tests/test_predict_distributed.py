"""`segdist predict` under `accelerate launch`: each rank its share, the files of one process, one error for all."""

import os
import re
import subprocess
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from helpers import REPO, launcher, shared_data
from PIL import Image

from segdist.evaluation.predict import predict


def camvid_list(tmp_path, count: int):
    """A list file naming the first `count` real CamVid val frames (read in place, never copied)."""
    frames = sorted((shared_data("camvid") / "val").glob("*.jpg"))[:count]
    listing = tmp_path / "frames.txt"
    listing.write_text("\n".join(str(f) for f in frames) + "\n")
    return listing, frames


@contextmanager
def threads_of_one_rank_of(processes: int):
    """This process computes as one of `processes` CPU ranks would: on CPU oneDNN's channels-last convolutions
    round differently with another thread count, so the reference must use a rank's share of the cores."""
    cpus, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, sorted(cpus)[:max(1, len(cpus) // processes)])
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)


def launched(*argv, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher(2), "-m", "segdist", "predict", *map(str, argv)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {})))


def rank_counts(output: str) -> dict[int, int]:
    return {int(r): int(n) for r, n in re.findall(r"\[rank (\d+)/2\] wrote (\d+),", output)}


@pytest.mark.slow
def test_two_processes_write_what_one_process_writes(tiny_run, tmp_path):
    listing, frames = camvid_list(tmp_path, 10)
    with threads_of_one_rank_of(2):
        one = predict(tiny_run, f"@{listing}", tmp_path / "one", outputs="index,probs", workers=0)
    assert one["totals"]["written"] == 10
    done = launched("--run", tiny_run, "--input", f"@{listing}", "--out", tmp_path / "two", "--outputs",
                    "index,probs", "--workers", "1", "--batch-size", "3")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-5000:]
    # rank r takes items r, r+2, ...: 5 each; 10 written in all into 10 distinct files, so none was written twice
    assert rank_counts(done.stdout) == {0: 5, 1: 5}
    assert done.stdout.count("wrote 10 prediction(s)") == 1 and done.stdout.count("predicting 10 image(s)") == 1
    assert "predict:" in done.stderr  # the bar: rank 0's only (the closing line above is printed once)
    names = {folder: sorted(p.name for p in (tmp_path / "two" / folder).iterdir()) for folder in ("index", "probs")}
    assert names == {"index": sorted(f"{f.stem}.png" for f in frames), "probs": sorted(f"{f.stem}.npz" for f in frames)}
    for frame in frames:
        ours, theirs = (np.asarray(Image.open(tmp_path / out / f"index/{frame.stem}.png")) for out in ("one", "two"))
        np.testing.assert_array_equal(ours, theirs)
        with np.load(tmp_path / "one/probs" / f"{frame.stem}.npz") as a, \
                np.load(tmp_path / "two/probs" / f"{frame.stem}.npz") as b:
            np.testing.assert_array_equal(a["probs"], b["probs"])
            assert a["probs"].shape[1:] == ours.shape


@pytest.mark.slow
def test_an_error_in_one_rank_ends_both_with_its_message(tiny_run, tmp_path):
    listing, _ = camvid_list(tmp_path, 6)
    done = launched("--run", tiny_run, "--input", f"@{listing}", "--out", tmp_path / "out", "--outputs", "index",
                    "--workers", "0", "--batch-size", "1", env={"SEGDIST_FAULT": "predict@1#1"}, timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "injected fault at predict" in done.stderr and done.stderr.count("segdist: error:") == 1, output[-3000:]
    assert "wrote" not in done.stdout  # no summary: every rank stopped
    assert not list((tmp_path / "out").rglob(".*.tmp"))
