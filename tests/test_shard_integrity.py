"""Verified shards: sizes and sha256 in dataset.json, checked by the cache, the readers and `segdist verify`."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import pytest
from helpers import run_cli, synthetic_shards

from segdist import storage
from segdist.config import DataConfig
from segdist.data.eval_loader import eval_loader
from segdist.data.info import load_dataset_info
from segdist.data.tar_reader import Reader, ShardRange, Skips, range_samples
from segdist.errors import DataError
from segdist.format.tar_writer import TarShard
from segdist.storage import RetryPolicy, ShardUnavailable, StorageStats
from segdist.storage.cache import entry_name
from segdist.utils.checksums import Digest

FAST = RetryPolicy(retries=2, backoff=0.01, max_backoff=0.05, max_wait=5.0, timeout=5.0)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_cluster) -> Path:
    """Synthetic COCO prepared into train (8 images) and val (6) in shards of 3."""
    return synthetic_shards(tmp_path_factory.mktemp("integrity"), images=8, val_images=6, seed=5, width=64,
                            height=48, shard_size=3, keep_empty=True)


@pytest.fixture
def copy(shards, tmp_path) -> Path:
    """A copy of the dataset to damage."""
    return Path(shutil.copytree(shards, tmp_path / "copy"))


def _records(root: Path, split: str) -> list[dict]:
    return json.loads((root / "dataset.json").read_text())["splits"][split]["shards"]


def _keys(path: Path) -> set[str]:
    with tarfile.open(path) as tar:
        return {m.name.split(".")[0] for m in tar.getmembers()}


def _flip_a_byte_of_an_image(path: Path) -> None:
    """One bit flipped in the middle of the first image's bytes: the tar still parses, the JPEG still decodes."""
    with tarfile.open(path) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith(".jpg"))
    with open(path, "r+b") as f:
        f.seek(member.offset_data + member.size // 2)
        byte = f.read(1)[0]
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte ^ 0x01]))


def _eval_keys(info, split: str, **cfg) -> tuple[set[str], list]:
    """Keys evaluation reads from `split`, and what it could not read (what, reason)."""
    cfg = DataConfig(crop_size=[32, 32], val_batch_size=4, **cfg)
    keys, unreadable = set(), []
    for batch in eval_loader(cfg, info, split, rank=0, world_size=1, workers=0):
        keys.update(batch["keys"])
        unreadable += batch["unreadable"]
    return keys, unreadable


# -- prepare records what it wrote -----------------------------------------------------------------

def test_prepare_records_each_shards_size_and_sha256_as_written(shards):
    for split in ("train", "val"):
        records = _records(shards, split)
        assert len(records) == (3 if split == "train" else 2)
        for record in records:
            data = (shards / record["name"]).read_bytes()
            assert record["bytes"] == len(data)
            assert record["sha256"] == hashlib.sha256(data).hexdigest()


def test_every_part_of_a_split_shard_records_its_own_size_and_sha256(tmp_path):
    writer = TarShard(tmp_path, "train-000000", max_bytes=4000)
    for i in range(5):
        writer.write(f"{i:04d}", {"jpg": os.urandom(1500), "json": b"{}"})
    parts = writer.close()
    assert [p.name for p in parts][:2] == ["train-000000.tar", "train-000000_1.tar"]
    for part in parts:
        data = (tmp_path / part.name).read_bytes()
        assert part.to_json()["bytes"] == len(data) and part.to_json()["sha256"] == hashlib.sha256(data).hexdigest()


# -- the node cache --------------------------------------------------------------------------------

def test_a_download_that_is_not_the_recorded_shard_is_retried_then_given_up_and_never_cached(http_server, tmp_path):
    data = os.urandom(50_000)
    (http_server.root / "a.tar").write_bytes(data)
    url, cache = f"{http_server.url}/a.tar", tmp_path / "cache"
    stats = StorageStats()
    with pytest.raises(ShardUnavailable) as raised:
        storage.open_stream(url, retry=FAST, stats=stats, cache_dir=cache,
                            expected=Digest(len(data), hashlib.sha256(b"another shard").hexdigest()))
    assert "sha256" in raised.value.reason and raised.value.attempts == FAST.retries + 1
    assert len(http_server.requests("/a.tar", "GET")) == FAST.retries + 1
    assert stats.give_ups == 1 and url in stats.unavailable
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith((".lock", ".fetch"))) == []
    good = Digest(len(data), hashlib.sha256(data).hexdigest())
    assert storage.open_stream(url, retry=FAST, cache_dir=cache, expected=good).read() == data


def test_a_cached_file_of_another_size_is_downloaded_again(http_server, tmp_path):
    data = os.urandom(20_000)
    (http_server.root / "b.tar").write_bytes(data)
    url, cache = f"{http_server.url}/b.tar", tmp_path / "cache"
    cache.mkdir(mode=0o700)
    (cache / entry_name(url)).write_bytes(b"a stale or swapped file")
    expected = Digest(len(data), hashlib.sha256(data).hexdigest())
    assert storage.open_stream(url, retry=FAST, cache_dir=cache, expected=expected).read() == data
    assert (cache / entry_name(url)).read_bytes() == data


def test_a_symlink_at_the_old_predictable_temporary_name_is_not_followed(http_server, tmp_path):
    data = os.urandom(20_000)
    (http_server.root / "c.tar").write_bytes(data)
    url, cache, victim = f"{http_server.url}/c.tar", tmp_path / "cache", tmp_path / "victim"
    cache.mkdir(mode=0o700)
    victim.write_bytes(b"precious")
    (cache / f".{entry_name(url)}.{os.getpid()}.tmp").symlink_to(victim)
    assert storage.open_stream(url, retry=FAST, cache_dir=cache).read() == data
    assert victim.read_bytes() == b"precious"


def test_a_symlink_raced_in_at_the_random_temporary_name_fails_the_download(http_server, tmp_path, monkeypatch):
    import segdist.storage.cache as cache_module

    (http_server.root / "d.tar").write_bytes(os.urandom(20_000))
    url, cache, victim = f"{http_server.url}/d.tar", tmp_path / "cache", tmp_path / "victim"
    cache.mkdir(mode=0o700)
    victim.write_bytes(b"precious")

    def token_hex(n: int) -> str:  # another process plants a link at the name just drawn
        (cache / f".{entry_name(url)}.beef.tmp").symlink_to(victim)
        return "beef"

    monkeypatch.setattr(cache_module.secrets, "token_hex", token_hex)
    with pytest.raises(FileExistsError):
        storage.open_stream(url, retry=FAST, cache_dir=cache)
    assert victim.read_bytes() == b"precious" and not (cache / entry_name(url)).exists()


def test_a_symlink_at_a_lock_files_name_is_refused(http_server, tmp_path):
    (http_server.root / "e.tar").write_bytes(b"x" * 1000)
    url, cache, target = f"{http_server.url}/e.tar", tmp_path / "cache", tmp_path / "created-through-the-link"
    cache.mkdir(mode=0o700)
    (cache / f"{entry_name(url)}.lock").symlink_to(target)
    with pytest.raises(DataError, match="symbolic link"):
        storage.open_stream(url, retry=FAST, cache_dir=cache)
    assert not target.exists()


def test_the_cache_directory_is_created_private(http_server, tmp_path):
    (http_server.root / "f.tar").write_bytes(b"x" * 1000)
    storage.open_stream(f"{http_server.url}/f.tar", retry=FAST, cache_dir=tmp_path / "new" / "cache").close()
    assert (tmp_path / "new" / "cache").stat().st_mode & 0o777 == 0o700


def test_a_cache_directory_others_can_write_is_refused(http_server, tmp_path):
    (http_server.root / "g.tar").write_bytes(b"x" * 1000)
    cache = tmp_path / "cache"
    cache.mkdir()
    cache.chmod(0o777)
    with pytest.raises(DataError, match=f"mode 0777.*chmod 700 {re.escape(str(cache))}"):
        storage.open_stream(f"{http_server.url}/g.tar", retry=FAST, cache_dir=cache)


def test_a_cache_directory_of_another_user_is_refused(http_server, tmp_path, monkeypatch):
    (http_server.root / "h.tar").write_bytes(b"x" * 1000)
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    me = os.getuid()
    monkeypatch.setattr(os, "getuid", lambda: me + 1)
    with pytest.raises(DataError, match=f"{re.escape(str(cache))} is owned by uid {me}"):
        storage.open_stream(f"{http_server.url}/h.tar", retry=FAST, cache_dir=cache)


# -- the loaders -----------------------------------------------------------------------------------

def test_a_served_shard_with_one_flipped_byte_is_named_counted_and_never_read(copy, http_server, tmp_path):
    for path in copy.iterdir():
        shutil.copy(path, http_server.root / path.name)
    bad = _records(copy, "val")[0]["name"]
    _flip_a_byte_of_an_image(http_server.root / bad)
    url = http_server.url
    keys, unreadable = _eval_keys(load_dataset_info(url), "val", cache_dir=str(tmp_path / "cache"), retries=1)
    assert keys == _keys(copy / _records(copy, "val")[1]["name"]), "only the intact shard's samples"
    assert keys.isdisjoint(_keys(copy / bad))
    assert len(unreadable) == 3 and {reason for _, reason in unreadable} == {"unavailable_shard"}
    assert all(what.startswith(f"{url}/{bad}") for what, _ in unreadable)
    assert len(http_server.requests(f"/{bad}", "GET")) == 2, "downloaded again once (data.retries=1), then given up"


def test_training_never_reads_a_cached_shard_that_fails_its_checksum(copy, http_server, tmp_path):
    from helpers import train_plan

    from segdist.data.train_loader import train_loader

    for path in copy.iterdir():
        shutil.copy(path, http_server.root / path.name)
    bad = _records(copy, "train")[1]["name"]
    _flip_a_byte_of_an_image(http_server.root / bad)
    info = load_dataset_info(http_server.url)
    cfg = DataConfig(crop_size=[32, 32], batch_size=2, shuffle_window=4, workers=0, retries=0,
                     cache_dir=str(tmp_path / "cache"))
    keys, unavailable = set(), {}
    with train_loader(cfg, info, train_plan(cfg, info), rank=0) as loader:
        for _, _, read in loader:
            keys.update(read["keys"])
            unavailable.update(read["unavailable"])
    assert keys and keys.isdisjoint(_keys(copy / bad))
    assert list(unavailable) == [f"{http_server.url}/{bad}"] and "sha256" in unavailable[f"{http_server.url}/{bad}"]


def test_a_local_shard_truncated_after_prepare_is_caught_on_open_and_named(copy):
    bad = copy / _records(copy, "val")[0]["name"]
    with tarfile.open(bad) as tar:
        last = tar.getmembers()[-1]
    os.truncate(bad, last.offset_data + -(-last.size // 512) * 512)  # the end-of-archive blocks: reads as whole
    info = load_dataset_info(copy)
    skips = Skips()
    read = list(range_samples([ShardRange(str(bad), 0, 3)], skips, Reader(expected=info.digests())))
    assert read == [3], "no sample read, all three counted lost"
    taken = skips.take()
    assert taken["skipped"] == {"unavailable_shard": 1}
    assert "dataset.json records" in taken["unavailable"][str(bad)] and "size" in taken["unavailable"][str(bad)]
    keys, unreadable = _eval_keys(info, "val")
    assert keys.isdisjoint(_keys(bad)) and all(what.startswith(str(bad)) for what, _ in unreadable)


# -- segdist verify --------------------------------------------------------------------------------

def test_verify_passes_a_clean_dataset(shards, capsys):
    run_cli("verify", shards)
    out = capsys.readouterr().out
    assert "train   3 ok" in out and "val     2 ok" in out


def test_verify_names_a_flipped_byte_and_a_missing_shard_and_fails(copy, capsys):
    flipped, missing = _records(copy, "train")[0]["name"], _records(copy, "val")[1]["name"]
    _flip_a_byte_of_an_image(copy / flipped)
    (copy / missing).unlink()
    with pytest.raises(SystemExit) as raised:
        run_cli("verify", copy)
    assert raised.value.code != 0
    captured = capsys.readouterr()
    assert f"{flipped}: hash mismatch" in captured.out and f"{missing}: missing" in captured.out
    assert flipped in captured.err and missing in captured.err


def test_verify_reads_a_remote_dataset(copy, http_server, capsys):
    import segdist

    for path in copy.iterdir():
        shutil.copy(path, http_server.root / path.name)
    assert segdist.verify(http_server.url)["ok"]
    bad = _records(copy, "val")[0]["name"]
    _flip_a_byte_of_an_image(http_server.root / bad)
    result = segdist.verify(http_server.url, split="val")
    assert not result["ok"] and result["splits"] == {"val": {"hash mismatch": 1, "ok": 1}}
    assert list(result["problems"]) == [bad]


def test_verify_of_a_manifest_without_checksums_says_so_and_passes(copy, capsys):
    manifest = json.loads((copy / "dataset.json").read_text())
    for record in manifest["splits"].values():
        for shard in record["shards"]:
            del shard["sha256"]  # as segdist-shards/3 wrote them: the size (`bytes`) without a hash
    (copy / "dataset.json").write_text(json.dumps(manifest))
    run_cli("verify", copy)
    assert "5 shard(s) have no sha256 in dataset.json" in capsys.readouterr().out
    result = __import__("segdist").verify(copy)
    assert result["ok"] and result["splits"]["train"] == {"no checksum recorded": 3}
