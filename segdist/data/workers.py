"""DataLoader workers: one thread each, and stop signals that neither kill them nor strand them.

SLURM signals every process of a job step, loader workers included. A worker that dies on that
SIGTERM takes training down before it can checkpoint, so workers ignore SIGUSR1 and, for SIGTERM,
exit only once their own loader has been released by the training process. PyTorch's DataLoader
and multiprocessing's exit handler end leftover workers with SIGTERM and then join them; a worker
that ignored every SIGTERM would make that join wait forever (an error in a loader used to leave
`segdist train` hanging at exit). `Loader.close()` and an exit hook release the workers first.

A signal can also land between a worker's fork and its `init_worker`, where SIGTERM still kills:
the stop signals stay blocked while the workers start, and each worker unblocks them once its own
handlers are in place (a fork keeps the signal mask).
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import signal
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import cv2
import torch

_OPEN_LOADERS: weakref.WeakSet = weakref.WeakSet()
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGUSR1}


def _release_all() -> None:
    for loader in list(_OPEN_LOADERS):
        loader.release.set()


# Registered at import, after multiprocessing's own exit handler: atexit runs it first.
atexit.register(_release_all)


def _on_sigterm(release, signum: int, frame) -> None:  # noqa: ANN001
    if release.is_set():
        os._exit(0)


def init_worker(release, _worker_id: int) -> None:
    """Worker start-up: one compute thread, SIGUSR1 ignored, SIGTERM obeyed only once released."""
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, partial(_on_sigterm, release))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Hold SIGTERM/SIGUSR1 back while workers fork; they arrive (to the handlers set by then) after."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def single_threaded_opencv() -> None:
    """Before workers fork: OpenCV's thread pool is not fork-safe, and the workers are the parallelism."""
    cv2.setNumThreads(1)


class Loader:
    """A DataLoader whose workers are released and shut down on close(), on any exit path."""

    def __init__(self, dataset, **kwargs) -> None:  # noqa: ANN001
        single_threaded_opencv()
        self.release = multiprocessing.Event()
        self.loader = torch.utils.data.DataLoader(
            dataset, worker_init_fn=partial(init_worker, self.release), **kwargs)
        self._iterator = None
        _OPEN_LOADERS.add(self)

    def __iter__(self) -> Iterator:
        with stop_signals_held():  # the workers start here
            self._iterator = iter(self.loader)
        return self._iterator

    def close(self) -> None:
        """Let the workers obey SIGTERM, then stop them now (not when garbage collection gets to it)."""
        self.release.set()
        iterator, self._iterator = self._iterator, None
        shutdown = getattr(iterator, "_shutdown_workers", None)  # multi-process iterators only
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc) -> None:  # noqa: ANN002
        self.close()


def worker_slot() -> tuple[int, int]:
    """(this loader worker's id, the number of workers); (0, 1) in the main process."""
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)
