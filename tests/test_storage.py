"""segdist.storage against real servers: a fault-injecting HTTP server and moto's S3 on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import pickle
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

from segdist import storage
from segdist.storage import RetryPolicy, ShardUnavailable, StorageStats

FAST = RetryPolicy(retries=3, backoff=0.01, max_backoff=0.05, max_wait=5.0, timeout=5.0)
SIZE = 700_000


def payload(size: int = SIZE, seed: int = 0) -> bytes:
    return hashlib.shake_256(f"shard-{seed}".encode()).digest(size)


@dataclass
class Remote:
    """An object store under test: where objects go, how to name them, and the server that sees requests."""

    kind: str
    put: Callable[[str, bytes], str]  # (name, data) -> URL
    server_path: Callable[[str], str]  # name -> the path the (proxy) server logs
    server: object  # servers.FaultyServer


@pytest.fixture(params=["http", "s3"])
def remote(request, tmp_path) -> Remote:
    if request.param == "http":
        server = request.getfixturevalue("http_server")

        def put(name: str, data: bytes) -> str:
            (server.root / name).write_bytes(data)
            return f"{server.url}/{name}"

        return Remote("http", put, lambda name: f"/{name}", server)
    bucket = request.getfixturevalue("s3_bucket")
    proxy = request.getfixturevalue("s3_proxy")

    def put_s3(name: str, data: bytes) -> str:
        local = tmp_path / f"upload-{name}"
        local.write_bytes(data)
        storage.publish_file(local, f"{bucket}/{name}")
        return f"{bucket}/{name}"

    return Remote("s3", put_s3, lambda name: f"/{bucket[len('s3://'):]}/{name}", proxy)


def gets(remote: Remote, name: str):
    return remote.server.requests(remote.server_path(name), "GET")


@pytest.fixture
def backoff_waits(monkeypatch) -> list[float]:
    """The retry waits segdist asks for, in order, recorded instead of slept."""
    from segdist.storage import retry

    waits: list[float] = []
    monkeypatch.setattr(retry, "time", SimpleNamespace(sleep=waits.append))  # retry.py uses time.sleep only
    return waits


def expected_backoff(policy: RetryPolicy, failure: int) -> tuple[float, float]:
    """The range of the wait after the `failure`-th failure: `backoff * 2**(n-1)`, capped, times a 0.5-1 jitter."""
    cap = min(policy.backoff * 2 ** (failure - 1), policy.max_backoff)
    return cap * 0.5, cap


# -- streams over HTTP and S3 ---------------------------------------------------------------------

def test_a_stream_returns_exactly_the_objects_bytes(remote):
    data = payload()
    url = remote.put("train-000000.tar", data)
    stats = StorageStats()
    with storage.open_stream(url, retry=FAST, stats=stats) as stream:
        assert stream.read() == data
    assert len(gets(remote, "train-000000.tar")) == 1
    assert stats.retries == 0 and stats.give_ups == 0


def test_a_connection_dropped_mid_body_resumes_at_the_drop_offset(remote):
    data = payload()
    url = remote.put("train-000001.tar", data)
    remote.server.drop_connection(remote.server_path("train-000001.tar"), times=1, after_bytes=300_000)
    stats = StorageStats()
    with storage.open_stream(url, retry=FAST, stats=stats) as stream:
        assert stream.read() == data
    first, second = gets(remote, "train-000001.tar")
    assert first.body_bytes == 300_000
    assert second.range_start == 300_000, "the retry must resume, not restart"
    assert remote.server.bytes_served(remote.server_path("train-000001.tar")) == len(data)
    assert stats.retries == 1 and stats.retried[url] == 1 and stats.give_ups == 0


def test_a_connection_dropped_several_times_still_delivers_every_byte_once(remote):
    data = payload()
    url = remote.put("train-000002.tar", data)
    remote.server.drop_connection(remote.server_path("train-000002.tar"), times=3, after_bytes=100_000)
    stats = StorageStats()
    assert storage.open_stream(url, retry=FAST, stats=stats).read() == data
    starts = [r.range_start or 0 for r in gets(remote, "train-000002.tar")]
    assert starts == [0, 100_000, 200_000, 300_000]
    assert stats.retries == 3


def test_503_answers_are_retried_and_counted(remote):
    data = payload(50_000)
    url = remote.put("val-000000.tar", data)
    remote.server.fail(remote.server_path("val-000000.tar"), times=2, status=503)
    stats = StorageStats()
    assert storage.read_bytes(url, retry=FAST, stats=stats) == data
    assert [r.status for r in gets(remote, "val-000000.tar")] == [503, 503, 200]
    assert stats.retries == 2 and stats.retried[url] == 2


def test_more_faults_than_retries_raise_shard_unavailable_after_bounded_backoff(remote, backoff_waits):
    url = remote.put("val-000001.tar", payload(50_000))
    remote.server.fail(remote.server_path("val-000001.tar"), times=100, status=503)
    stats = StorageStats()
    with pytest.raises(ShardUnavailable) as raised:
        storage.read_bytes(url, retry=FAST, stats=stats)
    # one wait per retry, growing exponentially within the policy's cap; none after the last failure
    assert len(backoff_waits) == FAST.retries
    for failure, wait in enumerate(backoff_waits, 1):
        low, high = expected_backoff(FAST, failure)
        assert low <= wait <= high, (failure, wait)
    assert sum(backoff_waits) <= FAST.max_wait
    assert raised.value.url == url and raised.value.attempts == FAST.retries + 1
    assert "503" in raised.value.reason or "ServiceUnavailable" in raised.value.reason
    assert len(gets(remote, "val-000001.tar")) == FAST.retries + 1
    assert stats.retries == FAST.retries and stats.give_ups == 1 and url in stats.unavailable


def test_a_missing_object_gives_up_at_once_without_retrying(remote):
    url = remote.put("present.tar", b"x")
    missing = url.replace("present.tar", "absent.tar")
    stats = StorageStats()
    with pytest.raises(ShardUnavailable) as raised:
        storage.read_bytes(missing, retry=FAST, stats=stats)
    assert raised.value.attempts == 1 and stats.retries == 0 and stats.give_ups == 1


def test_a_byte_range_reads_only_that_range(remote):
    data = payload()
    url = remote.put("val-000002.tar", data)
    with storage.open_stream(url, start=123_456, end=400_000, retry=FAST) as stream:
        assert stream.read() == data[123_456:400_000]
    (request,) = gets(remote, "val-000002.tar")
    assert request.range == "bytes=123456-399999" and request.body_bytes == 400_000 - 123_456
    assert storage.open_stream(url, start=SIZE, retry=FAST).read() == b""


def test_a_byte_range_resumes_inside_the_range_after_a_drop(remote):
    data = payload()
    url = remote.put("val-000003.tar", data)
    remote.server.drop_connection(remote.server_path("val-000003.tar"), times=1, after_bytes=1000)
    assert storage.open_stream(url, start=5000, end=9000, retry=FAST).read() == data[5000:9000]
    assert [r.range for r in gets(remote, "val-000003.tar")] == ["bytes=5000-8999", "bytes=6000-8999"]


def test_a_stalled_server_times_out_and_is_retried(http_server):
    data = payload(10_000)
    (http_server.root / "slow.tar").write_bytes(data)
    http_server.latency = 0.6  # each answer comes after twice the timeout: without one, the read would succeed
    stats = StorageStats()
    slow = RetryPolicy(retries=1, backoff=0.01, timeout=0.3)
    with pytest.raises(ShardUnavailable, match="timed out") as raised:
        storage.read_bytes(f"{http_server.url}/slow.tar", retry=slow, stats=stats)
    assert raised.value.attempts == 2 and stats.retries == 1 and stats.give_ups == 1
    assert len(http_server.requests("/slow.tar", "GET")) == 2  # the first try and one retry, then no more


# -- pipe: ----------------------------------------------------------------------------------------

def test_a_pipe_stream_returns_the_commands_output(tmp_path):
    data = payload()
    (tmp_path / "shard.tar").write_bytes(data)
    assert storage.read_bytes(f"pipe:cat {tmp_path / 'shard.tar'}", retry=FAST) == data
    with storage.open_stream(f"pipe:cat {tmp_path / 'shard.tar'}", start=10, end=70_000, retry=FAST) as stream:
        assert stream.read() == data[10:70_000]


def test_a_failing_pipe_is_restarted_and_skips_what_it_already_delivered(tmp_path):
    data = payload()
    (tmp_path / "shard.tar").write_bytes(data)
    # the first run writes 200 kB and fails; the second writes everything
    script = (f"if [ ! -e {tmp_path}/ran ]; then touch {tmp_path}/ran; head -c 200000 {tmp_path}/shard.tar; "
              f"exit 3; fi; cat {tmp_path}/shard.tar")
    stats = StorageStats()
    assert storage.read_bytes(f"pipe:{script}", retry=FAST, stats=stats) == data
    assert stats.retries == 1


def test_a_pipe_that_never_succeeds_or_stalls_gives_up(tmp_path, monkeypatch):
    from segdist.storage import pipe

    stats = StorageStats()
    with pytest.raises(ShardUnavailable, match="status 1"):
        storage.read_bytes("pipe:false", retry=FAST, stats=stats)
    assert stats.retries == FAST.retries
    # a command that stalls is killed after `timeout` (not waited for), and restarted once
    started = []
    monkeypatch.setattr(pipe.PipeBody, "__init__", _recording(pipe.PipeBody.__init__, started))
    with pytest.raises(ShardUnavailable, match="wrote nothing"):
        storage.read_bytes("pipe:sleep 30", retry=RetryPolicy(retries=1, backoff=0.01, timeout=0.3))
    assert len(started) == 2
    # ended by a signal, not waited for: `sleep 30` left to finish would exit with 0
    assert [body.process.returncode for body in started] == [-signal.SIGKILL] * 2


def _recording(init: Callable, bodies: list) -> Callable:
    def recording_init(self, *args, **kwargs) -> None:
        init(self, *args, **kwargs)
        bodies.append(self)

    return recording_init


# -- the node-local cache -------------------------------------------------------------------------

def test_a_cached_shard_is_downloaded_once_and_then_read_locally(http_server, tmp_path):
    data = payload()
    (http_server.root / "a.tar").write_bytes(data)
    url = f"{http_server.url}/a.tar"
    for _ in range(2):
        with storage.open_stream(url, retry=FAST, cache_dir=tmp_path / "cache") as stream:
            assert stream.read() == data
    assert storage.open_stream(url, start=7, end=99, cache_dir=tmp_path / "cache").read() == data[7:99]
    assert len(http_server.requests("/a.tar", "GET")) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tar")] == [
        storage.cache.entry_name(url)]


def _read_through_cache(url: str, cache_dir: str) -> str:
    with storage.open_stream(url, retry=FAST, cache_dir=cache_dir) as stream:
        return hashlib.sha256(stream.read()).hexdigest()


def test_two_processes_reading_one_shard_at_once_download_it_once(http_server, tmp_path):
    data = payload()
    (http_server.root / "b.tar").write_bytes(data)
    http_server.latency = 0.5  # both processes ask while the first download is still under way
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        digests = pool.starmap(_read_through_cache, [(f"{http_server.url}/b.tar", str(tmp_path / "cache"))] * 2)
    assert digests == [hashlib.sha256(data).hexdigest()] * 2
    assert len(http_server.requests("/b.tar", "GET")) == 1


def test_the_cache_evicts_least_recently_used_shards_but_never_one_in_use(http_server, tmp_path):
    cache = tmp_path / "cache"
    for i in range(4):
        (http_server.root / f"{i}.tar").write_bytes(payload(100_000, seed=i))
    url = [f"{http_server.url}/{i}.tar" for i in range(4)]
    bound = 250_000  # room for two shards
    last_used = time.time() - 1000  # every entry's time of use set apart, before the next download

    def used(i: int) -> None:
        os.utime(cache / storage.cache.entry_name(url[i]), (last_used + i, last_used + i))

    held = storage.open_stream(url[0], retry=FAST, cache_dir=cache, cache_max_bytes=bound)
    used(0)
    for i in (1, 2, 3):
        storage.open_stream(url[i], retry=FAST, cache_dir=cache, cache_max_bytes=bound).close()
        used(i)

    def cached() -> set[str]:
        return {p.name for p in cache.iterdir() if p.name.endswith(".tar")}

    # 1, then 2 went for room; 0, the least recently used, stayed: it is in use
    assert cached() == {storage.cache.entry_name(url[0]), storage.cache.entry_name(url[3])}
    assert held.read() == payload(100_000, seed=0)
    held.close()
    storage.open_stream(url[1], retry=FAST, cache_dir=cache, cache_max_bytes=bound).close()
    assert cached() == {storage.cache.entry_name(url[3]), storage.cache.entry_name(url[1])}  # 0 went, not 3
    sizes = sum(p.stat().st_size for p in cache.iterdir() if p.name.endswith(".tar"))
    assert sizes <= bound
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_a_failed_download_leaves_nothing_in_the_cache(http_server, tmp_path):
    (http_server.root / "c.tar").write_bytes(payload())
    http_server.fail("/c.tar", times=100)
    with pytest.raises(ShardUnavailable):
        storage.open_stream(f"{http_server.url}/c.tar", retry=FAST, cache_dir=tmp_path / "cache")
    assert not [p for p in (tmp_path / "cache").iterdir() if not p.name.endswith((".lock", ".fetch"))]


# -- writing --------------------------------------------------------------------------------------

def test_publish_exists_list_and_delete_on_s3(s3_bucket, tmp_path):
    local = tmp_path / "train-000000.tar"
    local.write_bytes(payload(1000))
    prefix = f"{s3_bucket}/shards/demo"
    assert storage.list_names(prefix) == [] and not storage.exists(f"{prefix}/train-000000.tar")
    storage.publish_file(local, storage.join(prefix, "train-000000.tar"))
    storage.publish_file(local, storage.join(prefix, "dataset.json"))
    assert storage.exists(f"{prefix}/train-000000.tar")
    assert storage.list_names(prefix) == ["dataset.json", "train-000000.tar"]
    assert storage.read_bytes(f"{prefix}/train-000000.tar") == payload(1000)
    storage.delete(f"{prefix}/train-000000.tar")
    assert storage.list_names(prefix) == ["dataset.json"] and not storage.exists(f"{prefix}/train-000000.tar")


def test_a_failed_upload_is_retried_and_leaves_the_object_complete(s3_bucket, s3_proxy, tmp_path):
    local = tmp_path / "shard.tar"
    local.write_bytes(payload(5000))
    url = f"{s3_bucket}/x/shard.tar"
    s3_proxy.fail(f"/{s3_bucket[5:]}/x/shard.tar", times=2)
    stats = StorageStats()
    storage.publish_file(local, url, retry=FAST, stats=stats)
    assert stats.retries == 2 and storage.read_bytes(url) == payload(5000)


def test_publishing_a_local_file_writes_it_whole_under_its_final_name(tmp_path):
    local = tmp_path / "finished.tar"
    local.write_bytes(payload(1000))
    storage.publish_file(local, tmp_path / "out" / "train-000000.tar")
    assert (tmp_path / "out" / "train-000000.tar").read_bytes() == payload(1000)
    assert storage.list_names(tmp_path / "out") == ["train-000000.tar"]
    with pytest.raises(ValueError, match="can only be read"):
        storage.publish_file(local, "http://127.0.0.1:1/x.tar")


def test_read_json_reads_the_manifest_beside_the_shards(remote):
    url = remote.put("dataset.json", b'{"classes": ["background", "person"]}')
    assert storage.read_json(url, retry=FAST) == {"classes": ["background", "person"]}


# -- processes ------------------------------------------------------------------------------------

def _child_reads(url: str, queue) -> None:
    try:
        queue.put(hashlib.sha256(storage.read_bytes(url, retry=FAST)).hexdigest())
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        queue.put(repr(error))


def test_a_forked_child_reads_s3_after_the_parent_did(s3_bucket):
    url = f"{s3_bucket}/fork/shard.tar"
    storage.publish_file(_write(payload(3000)), url)
    assert storage.read_bytes(url) == payload(3000)  # the parent's filesystem and event loop exist now
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_reads, args=(url, queue))
    child.start()
    result = queue.get(timeout=60)
    child.join(timeout=30)
    assert result == hashlib.sha256(payload(3000)).hexdigest()
    assert child.exitcode == 0


def _write(data: bytes) -> Path:
    import tempfile

    handle, name = tempfile.mkstemp()
    os.write(handle, data)
    os.close(handle)
    return Path(name)


def test_stats_and_the_give_up_error_cross_process_boundaries():
    stats = StorageStats()
    stats.record_retry("s3://b/a.tar")
    stats.record_give_up("s3://b/c.tar", "HTTP 503")
    total = StorageStats().merge(stats.as_dict()).merge(pickle.loads(pickle.dumps(stats)))
    assert total.retries == 2 and total.give_ups == 2 and total.retried["s3://b/a.tar"] == 2
    error = pickle.loads(pickle.dumps(ShardUnavailable("s3://b/c.tar", "HTTP 503", 4)))
    assert (error.url, error.reason, error.attempts) == ("s3://b/c.tar", "HTTP 503", 4)


# -- URLs -----------------------------------------------------------------------------------------

def test_join_places_a_name_inside_each_kind_of_url():
    assert storage.join("s3://bucket/prefix", "dataset.json") == "s3://bucket/prefix/dataset.json"
    assert storage.join("http://host/data/", "a.tar") == "http://host/data/a.tar"
    assert storage.join("/data/shards", "a.tar") == "/data/shards/a.tar"
    assert storage.join("pipe:curl -fsS http://h/{name}", "a.tar") == "pipe:curl -fsS http://h/a.tar"
    with pytest.raises(ValueError, match="placeholder"):
        storage.join("pipe:cat /data", "a.tar")
    assert storage.is_local(Path("/data")) and storage.is_local("file:///data")
    assert not storage.is_local("s3://b/p") and storage.kind("https://h/x") == "http"


def test_a_stream_that_gave_up_raises_again_without_new_requests_or_counts(http_server):
    (http_server.root / "d.tar").write_bytes(payload(10_000))
    http_server.fail("/d.tar", times=100)
    stats = StorageStats()
    stream = storage.open_stream(f"{http_server.url}/d.tar", retry=FAST, stats=stats)
    for _ in range(3):
        with pytest.raises(ShardUnavailable):
            stream.read(100)
    assert len(http_server.requests("/d.tar")) == FAST.retries + 1 and stats.give_ups == 1


def test_webdataset_reads_identical_samples_from_a_shard_whose_connection_drops(http_server, tmp_path):
    import tarfile

    import webdataset as wds

    with tarfile.open(http_server.root / "train-000000.tar", "w") as tar:
        for i in range(20):
            for ext, data in (("jpg", payload(20_000, seed=i)), ("json", b'{"i": %d}' % i)):
                member = tarfile.TarInfo(f"{i:06d}.{ext}")
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    http_server.drop_connection("/train-000000.tar", times=2, after_bytes=150_000)
    stats = StorageStats()
    url = f"{http_server.url}/train-000000.tar"
    opened = ({"url": u, "stream": storage.open_stream(u, retry=FAST, stats=stats)} for u in [url])
    samples = list(wds.tariterators.group_by_keys(wds.tariterators.tar_file_expander(opened)))
    assert [s["__key__"] for s in samples] == [f"{i:06d}" for i in range(20)]
    assert all(s["jpg"] == payload(20_000, seed=i) for i, s in enumerate(samples))
    assert stats.retries == 2
