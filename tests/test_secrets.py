"""Credentials in `data.shards` (issue 27): masked as *** wherever they leave the process, used only in memory.

`segdist.utils.secrets.redact` on each form; config.yaml (masked, 0600, still loading); the
trackers' parameters; `http(s)://user:password@host` read with HTTP Basic auth; error messages
and the storage counts; and one real training run over HTTP whose files and output hold no secret.
"""

from __future__ import annotations

import os
import stat

import pytest

from segdist import storage
from segdist.storage import RetryPolicy, ShardUnavailable, StorageStats
from segdist.utils.secrets import redact, split_userinfo

FAST = RetryPolicy(retries=2, backoff=0.01, max_backoff=0.02, max_wait=2.0, timeout=5.0)
SECRET = "SECRET123"


@pytest.mark.parametrize("text, expected", [
    ("https://me:SECRET123@host/data/train-000000.tar", "https://***@host/data/train-000000.tar"),
    ("http://SECRET123@host:8080/data", "http://***@host:8080/data"),
    ("https://b.s3.amazonaws.com/k.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2FSECRET123"
     "&X-Amz-Date=20240101T000000Z&X-Amz-Security-Token=SECRET123&X-Amz-Signature=SECRET123",
     "https://b.s3.amazonaws.com/k.tar?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***"
     "&X-Amz-Date=20240101T000000Z&X-Amz-Security-Token=***&X-Amz-Signature=***"),
    ("http://host/data?token=SECRET123", "http://host/data?token=***"),
    ("http://host/a.tar?page=2&SIG=SECRET123&Access_Token=SECRET123&key=SECRET123&password=SECRET123"
     "&secret=SECRET123&Signature=SECRET123",
     "http://host/a.tar?page=2&SIG=***&Access_Token=***&key=***&password=***&secret=***&Signature=***"),
    ("pipe:TOKEN=SECRET123 curl -fsS -H \"Authorization: Bearer $TOKEN\" http://host/{name}",
     "pipe:TOKEN=*** curl -fsS -H \"Authorization: ***\" http://host/{name}"),
    ("pipe:REGION=eu API_KEY='SECRET123 x' curl -u bob:SECRET123 http://host/{name}",
     "pipe:REGION=*** API_KEY=*** curl -u *** http://host/{name}"),
    ("skipped shard pipe:TOKEN=SECRET123 curl http://host/a.tar: `TOKEN=SECRET123 curl http://host/a.tar` exited",
     "skipped shard pipe:TOKEN=*** curl http://host/a.tar: `TOKEN=*** curl http://host/a.tar` exited"),
])
def test_redact_masks_every_form_of_credential(text, expected):
    assert redact(text) == expected
    assert redact(expected) == expected  # idempotent: masking twice changes nothing


@pytest.mark.parametrize("text", ["shards/demo", "/data/shards", "s3://bucket/prefix", "http://host:8080/data",
                                  "https://host/data/train-000000.tar?part=1", "pipe:curl -fsS http://host/{name}",
                                  "data.crop_size=[64,64]", "user@example.com wrote train-000000.tar"])
def test_redact_leaves_locations_without_a_credential_as_they_are(text):
    assert redact(text) == text


def test_split_userinfo_turns_user_and_password_into_a_basic_auth_header():
    assert split_userinfo("http://host/a") == ("http://host/a", None)
    url, header = split_userinfo("https://al%40ice:p%3Ass@host:8443/data/a.tar?x=1")
    assert url == "https://host:8443/data/a.tar?x=1"
    assert header == "Basic YWxAaWNlOnA6c3M="  # base64("al@ice:p:ss")


def test_a_config_holding_a_token_is_written_masked_readable_by_its_owner_only_and_still_loads(tmp_path):
    from segdist.config import Config, load_config, save_config

    cfg = Config()
    cfg.data.shards = f"https://user:{SECRET}@host/data?token={SECRET}"
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert SECRET not in text and "https://***@host/data?token=***" in text
    assert stat.S_IMODE(os.stat(tmp_path / "config.yaml").st_mode) == 0o600
    assert load_config(tmp_path / "config.yaml").data.shards == "https://***@host/data?token=***"
    assert cfg.data.shards.endswith(SECRET)  # the run keeps using the real value


def test_a_config_without_a_credential_is_written_as_the_umask_allows(tmp_path):
    from segdist.config import Config, load_config, save_config

    old = os.umask(0o027)
    try:
        save_config(Config(), tmp_path / "config.yaml")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "config.yaml").st_mode) == 0o640
    assert load_config(tmp_path / "config.yaml").data.shards == "shards/demo"


def test_run_files_and_shards_are_written_as_the_umask_allows_not_forced_to_0644(tmp_path):
    from segdist.format.tar_writer import TarShard
    from segdist.utils.files import write_json_atomic

    old = os.umask(0o077)
    try:
        write_json_atomic(tmp_path / "summary.json", {"steps": 1})  # summary.json, metrics.json, state files
        shard = TarShard(tmp_path, "train-000000")
        shard.write("0000", {"json": b"{}"})
        shard.close()
    finally:
        os.umask(old)
    for name in ("summary.json", "train-000000.tar"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600, name


def test_a_masked_data_shards_asks_for_the_real_one_again():
    from segdist.data.info import load_dataset_info
    from segdist.errors import DataError

    with pytest.raises(DataError, match="give it again"):
        load_dataset_info("https://***@host/data")


def test_tracker_parameters_carry_no_token():
    from segdist.config import Config
    from segdist.training.trackers import flat_config

    cfg = Config()
    cfg.data.shards = f"pipe:TOKEN={SECRET} curl -fsS http://host/{{name}}?sig={SECRET}"
    params = flat_config(cfg)
    assert params["data.shards"] == "pipe:TOKEN=*** curl -fsS http://host/{name}?sig=***"
    assert not any(SECRET in str(value) for value in params.values())


def test_an_http_url_with_user_and_password_is_read_with_basic_auth(http_server):
    http_server.auth = ("alice", SECRET)
    (http_server.root / "a.tar").write_bytes(b"x" * 1000)
    host = http_server.url.removeprefix("http://")
    assert storage.read_bytes(f"http://alice:{SECRET}@{host}/a.tar", retry=FAST) == b"x" * 1000
    assert storage.exists(f"http://alice:{SECRET}@{host}/a.tar", retry=FAST)
    assert [r.status for r in http_server.requests("/a.tar")] == [200, 200]
    with pytest.raises(ShardUnavailable) as refused:  # no credential: the server answers 401
        storage.read_bytes(f"{http_server.url}/a.tar", retry=FAST)
    assert "HTTP 401" in str(refused.value)


def test_a_failing_read_names_the_url_with_its_password_masked(http_server):
    http_server.auth = ("alice", "right")
    host = http_server.url.removeprefix("http://")
    stats = StorageStats()
    for url in (f"http://alice:{SECRET}@{host}/a.tar", f"{http_server.url}/missing.tar?token={SECRET}"):
        with pytest.raises(ShardUnavailable) as failed:
            storage.read_bytes(url, retry=FAST, stats=stats)
        assert SECRET not in str(failed.value) and "***" in str(failed.value)
    assert stats.give_ups == 2 and SECRET not in repr(stats.as_dict())


def test_a_failing_pipe_command_names_its_environment_assignments_masked():
    stats = StorageStats()
    with pytest.raises(ShardUnavailable) as failed:
        storage.read_bytes(f"pipe:TOKEN={SECRET} sh -c 'echo $TOKEN >&2; exit 3'", retry=FAST, stats=stats)
    assert "TOKEN=***" in str(failed.value)
    assert SECRET not in str(failed.value) and SECRET not in repr(stats.as_dict())


def test_a_query_token_on_a_url_prefix_goes_with_every_object_under_it():
    joined = storage.join(f"http://host/data?token={SECRET}", "dataset.json")
    assert joined == f"http://host/data/dataset.json?token={SECRET}"


@pytest.mark.slow
def test_a_training_run_over_http_with_credentials_writes_and_prints_none_of_them(tmp_path_factory, ray_cluster,
                                                                                   http_server, tmp_path):
    import shutil

    from helpers import run_train, synthetic_shards

    local = synthetic_shards(tmp_path_factory.mktemp("secret_shards"), images=8, val_images=4, seed=5, width=96,
                             height=64)
    for path in local.iterdir():
        shutil.copy(path, http_server.root / path.name)
    http_server.auth = ("alice", SECRET)
    host = http_server.url.removeprefix("http://")
    out = run_train(f"http://alice:{SECRET}@{host}/?token={SECRET}", tmp_path / "runs", "train.max_steps=1",
                    "data.workers=0", "train.name=secret")
    assert SECRET not in out
    run = tmp_path / "runs" / "secret"
    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.name == "hparams.yml" for p in files) and (run / "config.yaml").is_file()
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []
    assert stat.S_IMODE(os.stat(run / "config.yaml").st_mode) == 0o600
    assert all(r.status in (200, 206) for r in http_server.log)  # every read went through Basic auth
