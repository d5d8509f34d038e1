"""segdist's hand-written HTTP reader and shard cache against fsspec's (issue 20, item 6).

`segdist.storage` reads http(s):// shards with urllib (ranged GETs, resumed after a dropped
connection, every retry counted) and keeps a node-local cache (one download per node under a
file lock, a byte bound with least-recently-used eviction). fsspec offers the same building
blocks: `HTTPFileSystem` (aiohttp) and `filecache::`. This script measures both on the same
files, over the fault-injecting HTTP server the tests use (tests/servers.py), each figure a
ratio or an outcome from this one run:

  1. a whole 4 MiB shard, sequentially (5 ms per request)     segdist open_stream vs fsspec open/read
  2. 32 random byte ranges of it (per-sample random access)    open_stream(start, end) vs cat_file(start, end)
  3. the connection dropped after 1 MiB of the body            is the read complete and exact? retries seen?
  4. the filesystem made in the parent, read in a forked child (a DataLoader worker)
  5. two processes reading one uncached shard at once          GETs the server saw (segdist: flock)

    python benchmarks/fsspec_storage.py [--repeat 5] [--latency 0.005]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the HTTP server the tests use

from servers import FaultyServer  # noqa: E402

from segdist import storage  # noqa: E402

SIZE = 4 << 20
NAME = "shard.tar"


def segdist_read(url: str, start: int = 0, end: int | None = None, cache_dir: str | None = None) -> bytes:
    stats = storage.StorageStats()
    with storage.open_stream(url, start=start, end=end, stats=stats, cache_dir=cache_dir) as stream:
        data = stream.read()
    segdist_read.retries = stats.retries
    return data


def fsspec_fs():  # noqa: ANN201
    import fsspec

    return fsspec.filesystem("http", skip_instance_cache=True)


def fsspec_read(url: str, start: int = 0, end: int | None = None) -> bytes:
    return fsspec_fs().cat_file(url, start=start, end=end)


def timed(function, repeat: int) -> float:  # noqa: ANN001
    """Median seconds of `function()` over `repeat` calls."""
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def throughput(server: FaultyServer, data: bytes, repeat: int) -> None:
    url = f"{server.url}/{NAME}"
    assert segdist_read(url) == data and fsspec_fs().open(url, block_size=1 << 20).read() == data
    ours = timed(lambda: segdist_read(url), repeat)
    theirs = timed(lambda: fsspec_fs().open(url, block_size=1 << 20).read(), repeat)
    print(f"1. whole shard: segdist {ours * 1000:.1f} ms, fsspec {theirs * 1000:.1f} ms "
          f"(segdist {theirs / ours:.2f}x fsspec's speed)")
    ranges = [(i * 131_071 % (SIZE - 70_000), i * 131_071 % (SIZE - 70_000) + 60_000) for i in range(32)]
    ours = timed(lambda: [segdist_read(url, a, b) for a, b in ranges], repeat)
    theirs = timed(lambda: [fsspec_read(url, a, b) for a, b in ranges], repeat)
    assert all(segdist_read(url, a, b) == fsspec_read(url, a, b) == data[a:b] for a, b in ranges[:4])
    print(f"2. 32 byte ranges: segdist {ours * 1000:.1f} ms, fsspec {theirs * 1000:.1f} ms "
          f"(segdist {theirs / ours:.2f}x fsspec's speed)")


def dropped_connection(server: FaultyServer, data: bytes) -> None:
    url = f"{server.url}/{NAME}"
    for name, read in (("segdist", lambda: segdist_read(url)),
                       ("fsspec cat_file", lambda: fsspec_read(url)),
                       ("fsspec open/read", lambda: fsspec_fs().open(url, block_size=1 << 20).read())):
        server.reset()
        server.drop_connection(f"/{NAME}", times=1, after_bytes=1 << 20)
        try:
            got = read()
            outcome = "exact" if got == data else f"WRONG ({len(got)} of {len(data)} bytes)"
        except Exception as exc:  # noqa: BLE001 - the outcome is what is measured
            outcome = f"raised {type(exc).__name__}: {str(exc)[:80]}"
        gets = len(server.requests(f"/{NAME}", "GET"))
        extra = f", {segdist_read.retries} retry counted" if name == "segdist" else ""
        print(f"3. dropped after 1 MiB, {name}: {outcome} ({gets} GETs{extra})")


def _child_read(read, url: str, queue) -> None:  # noqa: ANN001
    try:
        queue.put(("ok", len(read(url))))
    except Exception as exc:  # noqa: BLE001
        queue.put(("raised", f"{type(exc).__name__}: {str(exc)[:80]}"))


def forked(server: FaultyServer) -> None:
    url = f"{server.url}/{NAME}"
    fs = fsspec_fs()
    fs.cat_file(url, start=0, end=10)  # the parent has used it: its event loop and session exist
    context = multiprocessing.get_context("fork")
    for name, read in (("segdist", lambda u: segdist_read(u)), ("fsspec (the parent's instance)", fs.cat_file)):
        queue = context.Queue()
        child = context.Process(target=_child_read, args=(read, url, queue))
        child.start()
        child.join(60)
        print(f"4. forked child, {name}: {queue.get(timeout=5) if not child.exitcode else f'exit {child.exitcode}'}")


def _cache_read(kind: str, url: str, cache: str, start) -> None:  # noqa: ANN001
    start.wait()
    if kind == "segdist":
        segdist_read(url, cache_dir=cache)
    else:
        import fsspec

        with fsspec.open(f"filecache::{url}", filecache={"cache_storage": cache}) as f:
            f.read()


def shared_cache(server: FaultyServer) -> None:
    url = f"{server.url}/{NAME}"
    context = multiprocessing.get_context("spawn")
    for kind in ("segdist", "fsspec filecache"):
        server.reset()
        with tempfile.TemporaryDirectory() as cache:
            start = context.Event()
            readers = [context.Process(target=_cache_read, args=(kind.split()[0], url, cache, start))
                       for _ in range(2)]
            for reader in readers:
                reader.start()
            time.sleep(3)  # both imported and waiting
            start.set()
            for reader in readers:
                reader.join(60)
            print(f"5. two processes, one uncached shard, {kind}: {len(server.requests(f'/{NAME}', 'GET'))} "
                  f"GET(s) of the whole shard")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency", type=float, default=0.005)
    args = parser.parse_args()
    data = os.urandom(SIZE)
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / NAME).write_bytes(data)
        with FaultyServer(Path(root), latency=args.latency) as server:
            throughput(server, data, args.repeat)
            dropped_connection(server, data)
            forked(server)
            shared_cache(server)


if __name__ == "__main__":
    main()
