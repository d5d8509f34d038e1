"""A run-stopping error met by a Ray task leaves the output directory exactly as it was before the run."""

import json
from contextlib import closing

import numpy as np
import pytest
from helpers import manifest
from PIL import Image

N, SHARD = 12, 3  # four shards; the bad mask is the last input of the third


def _held_last_by_shard(k: int, split: str = "train") -> int:
    """The input index that shard k of `split` holds last (prepare shuffles a split's inputs into shards)."""
    from types import SimpleNamespace

    from segdist.prepare.fingerprint import shard_order

    return shard_order(SimpleNamespace(splits={split: list(range(N))}), split)[k * SHARD + SHARD - 1]


BAD = _held_last_by_shard(2)


def _folder(root, bad: str, bad_index: int = BAD):
    (root / "img").mkdir(parents=True)
    (root / "mask").mkdir()
    palette = [[0, 0, 0], [255, 0, 0], [0, 255, 0]]
    for i in range(N):
        Image.new("RGB", (12, 8), (i, i, i)).save(root / "img" / f"f{i:02d}.png")
        mask = np.zeros((8, 12), np.uint8)
        mask[:2, :4] = 1 + i % 2
        if bad == "values":
            if i == bad_index:
                mask[5, 5] = 9
            Image.fromarray(mask).save(root / "mask" / f"f{i:02d}.png")
        else:
            rgb = np.asarray(palette, np.uint8)[mask]
            if i == bad_index:
                rgb[5, 5] = (1, 2, 3)
            Image.fromarray(rgb).save(root / "mask" / f"f{i:02d}.png")
    (root / "palette.json").write_text(json.dumps(palette))
    args = ["folder", "--images", root / "img", "--masks", root / "mask", "--classes", "a,b,c",
            "--shard-size", SHARD, "--workers", 1]
    return args + (["--palette", root / "palette.json"] if bad == "colours" else [])


def _snapshot(path):
    """Every file under `path` (hidden ones too) with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def shard_records(monkeypatch):
    """The shard records the driver received, in order (proves shards were written before the failure)."""
    from segdist.prepare import driver

    real, seen = driver.run_tasks, []

    def spy(*args, **kwargs):
        with closing(real(*args, **kwargs)) as results:  # closed: its tasks are cancelled and waited for
            for task, record in results:
                seen.append(record)
                yield task, record

    monkeypatch.setattr(driver, "run_tasks", spy)
    return seen


MESSAGES = {
    "values": (f"f{BAD:02d}.png: mask values [9] are outside the class range 0..2",
               "(map them with --source-ignore K, --map FILE or --unknown-to-ignore)"),
    "colours": (f"f{BAD:02d}.png: colours ['#010203'] are not in the palette",
                "(add them to --palette or pass --unknown-to-ignore)"),
}


@pytest.mark.parametrize("bad", sorted(MESSAGES))
def test_an_error_in_the_third_shard_leaves_a_fresh_directory_absent(tmp_path, prepare, capsys, shard_records, bad):
    args = _folder(tmp_path, bad)
    out = tmp_path / "out"
    with pytest.raises(SystemExit):
        prepare(*args, "--out", out)
    err = capsys.readouterr().err
    assert all(part in err for part in MESSAGES[bad]), err
    assert any(r.get("parts") for r in shard_records), "a shard must have been written before the error"
    assert not out.exists()


@pytest.mark.parametrize("bad", sorted(MESSAGES))
def test_an_error_in_the_third_shard_leaves_another_split_and_the_manifest_untouched(
        tmp_path, prepare, capsys, shard_records, bad):
    args = _folder(tmp_path, bad)
    out = tmp_path / "out"
    prepare(*args, "--out", out, "--split", "val", "--unknown-to-ignore")
    before = _snapshot(out)
    assert "dataset.json" in before and "val-000000.tar" in before
    shard_records.clear()
    with pytest.raises(SystemExit):
        prepare(*args, "--out", out, "--split", "train")
    err = capsys.readouterr().err
    assert all(part in err for part in MESSAGES[bad]), err
    assert any(r.get("parts") for r in shard_records)
    assert _snapshot(out) == before
    # the fixing option then works, and the other split is still there
    prepare(*args, "--out", out, "--split", "train", "--unknown-to-ignore")
    assert set(manifest(out)["splits"]) == {"train", "val"}


def test_an_error_after_an_interrupted_run_keeps_what_that_run_finished(tmp_path, prepare, capsys, monkeypatch):
    from segdist.prepare import driver

    last = _held_last_by_shard(N // SHARD - 1)  # in the last shard: the rerun writes shards before it
    args = _folder(tmp_path, "values", bad_index=last)
    out = tmp_path / "out"
    real = driver.run_tasks

    def interrupted(*a, **kw):
        with closing(real(*a, **kw)) as results:
            for result in results:
                yield result
                raise KeyboardInterrupt

    monkeypatch.setattr(driver, "run_tasks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(*args, "--out", out)
    before = _snapshot(out)
    assert any(name.endswith(".tar") for name in before)  # the interrupted run finished one shard (any)
    monkeypatch.setattr(driver, "run_tasks", real)
    with pytest.raises(SystemExit):
        prepare(*args, "--out", out)
    assert f"f{last:02d}.png: mask values [9]" in capsys.readouterr().err
    assert _snapshot(out) == before
