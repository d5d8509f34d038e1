"""Shards anywhere: read and write objects at a local path, `http(s)://`, `s3://` or `pipe:`.

The one place that knows about URLs, retries and the node-local cache. Loaders call
`open_stream(url, start=, end=, retry=, stats=, cache_dir=, expected=)` and count `ShardUnavailable`
(`expected`: the shard's size and sha256 from dataset.json, checked where that is cheap);
prepare publishes finished files with `publish_file` (small records with `publish_bytes`, staged shards
moved with `copy_object`) and the manifest last; it lists remote inputs with `list_objects`.

    urls.py     URL kinds and join          retry.py   RetryPolicy, StorageStats, ShardUnavailable
    stream.py   resumable reader            cache.py   node-local shard cache (flock, LRU, verified)
    http.py     urllib3 pooled GET          s3.py      s3fs ranged GET, put, list (per process)
    pipe.py     `pipe:COMMAND` (restart and skip)      objects.py  the public operations
"""

from .cache import default_root as default_cache_root
from .objects import (ObjectInfo, copy_object, delete, discard, exists, list_names, list_objects, open_stream, prefetch,
                      publish_bytes, publish_file, read_bytes, read_json)
from .retry import ObjectMissing, RetryPolicy, ShardUnavailable, StorageStats, process_stats
from .urls import is_local, join, kind

__all__ = ["open_stream", "prefetch", "discard", "default_cache_root", "read_bytes", "read_json", "publish_file",
           "exists", "list_names", "delete", "list_objects", "ObjectInfo", "publish_bytes", "copy_object",
           "RetryPolicy", "StorageStats", "ShardUnavailable", "ObjectMissing", "process_stats",
           "join", "is_local", "kind"]
