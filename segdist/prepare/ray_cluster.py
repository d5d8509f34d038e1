"""The Ray cluster a prepare run uses: a minimal local one (or the cluster at --address), started early.

A cold run pays Ray's start-up (about 5 s here) and the reading of its inputs (a COCO file of
450 MB: seconds). `ray_started_early` starts Ray in a background thread while the driver reads, so
the run pays the longer of the two, not their sum; `ray_session` then takes that cluster. The
thread lives until the cluster is shut down: Ray's node processes are tied to the thread that
started them (PR_SET_PDEATHSIG) and die with it. An error while reading is raised at once, not
after the start-up: the cluster is shut down when it is up, by the thread itself.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def init_ray(workers: int | None, address: str | None) -> None:
    """Join the cluster at `address`, or start a private local one: loopback only, no dashboard or usage reports."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats reporting thread
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # safe only because nothing listens beyond 127.0.0.1
    with _loopback_only():
        ray.init(num_cpus=workers or os.cpu_count(), include_dashboard=False, log_to_driver=False)


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Every port of the local cluster on 127.0.0.1 (Ray's default is the host's address and `::`).

    Ray binds to the loopback interface where it treats clusters as unsupported (macOS, Windows);
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes Linux do the same. Its constant is read when ray is
    imported, so it is set on the imported module too; the node processes inherit the variable.
    """
    from ray._private import ray_constants

    name, saved_env, saved = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, os.environ.get(
        ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[name], ray_constants.ENABLE_RAY_CLUSTER = "0", False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = saved_env


class _NoSigtermWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


_NO_SIGTERM_WARNING = _NoSigtermWarning()


class EarlyRay:
    """`init_ray` in a background thread that stays alive until `release()`."""

    def __init__(self, workers: int | None, address: str | None):
        self.error: BaseException | None = None
        self._ready, self._done, self._abandoned = threading.Event(), threading.Event(), False
        self._thread = threading.Thread(target=self._run, args=(workers, address), daemon=True,
                                        name="segdist-ray-start")
        self._thread.start()

    def _run(self, workers: int | None, address: str | None) -> None:
        # ray.init off the main thread warns that it cannot set its SIGTERM handler; the node processes
        # die with this thread anyway (see above), so the warning would only alarm
        logging.getLogger("ray._private.worker").addFilter(_NO_SIGTERM_WARNING)  # once: the same filter object
        try:
            init_ray(workers, address)
        except BaseException as exc:  # noqa: BLE001 - raised in the driver's thread by wait()
            self.error = exc
        self._ready.set()
        self._done.wait()
        if self._abandoned and self.error is None:
            import ray

            ray.shutdown()

    def wait(self) -> None:
        """Until the cluster is up; raises what starting it raised."""
        self._ready.wait()
        if self.error is not None:
            raise self.error

    def release(self, shut_down: bool) -> None:
        """Let the thread end: after `ray.shutdown()` here (`shut_down`), or by itself once the start is over."""
        if shut_down and self._ready.is_set():
            import ray

            ray.shutdown()
        else:
            self._abandoned = shut_down
        self._done.set()


_early: EarlyRay | None = None  # the cluster started early for this process's next ray_session


@contextmanager
def ray_started_early(workers: int | None, address: str | None, wanted: bool = True) -> Iterator[None]:
    """Start Ray in the background for the block; the block's ray_session uses it, or it is shut down."""
    global _early
    import ray

    if not wanted or ray.is_initialized():
        yield
        return
    _early = EarlyRay(workers, address)
    try:
        yield
    finally:
        unused, _early = _early, None
        if unused is not None:  # no ray_session took it (nothing to convert, or an error)
            unused.release(shut_down=True)


@contextmanager
def ray_session(workers: int | None, address: str | None) -> Iterator[int]:
    """A Ray cluster for the run's tasks: the one started early, the caller's, or a new one; yields how
    many tasks to run at once."""
    global _early
    import ray

    early, _early = _early, None
    if early is not None:
        try:
            early.wait()
        except BaseException:
            early.release(shut_down=False)
            raise
    elif ray.is_initialized():  # a caller (a test session, a notebook) already holds a Ray cluster
        yield workers or int(ray.cluster_resources().get("CPU", 1))
        return
    else:
        init_ray(workers, address)
    try:
        yield workers or int(ray.cluster_resources().get("CPU", 1))
    finally:
        if early is not None:
            early.release(shut_down=True)
        else:
            ray.shutdown()
