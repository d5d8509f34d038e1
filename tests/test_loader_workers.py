"""Loader workers and stop signals: a SIGTERM that lands while a worker starts must not kill it."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# Every fork signals its child at once, before the DataLoader worker's init can run: the window
# in which an unprotected worker dies of SLURM's SIGTERM (seen as a flaky stop-signal test).
SCRIPT = textwrap.dedent("""
    import os, signal, torch
    from segdist.data.workers import Loader
    os.register_at_fork(after_in_child=lambda: os.kill(os.getpid(), signal.SIGTERM))
    with Loader(list(range(8)), batch_size=2, num_workers=2) as loader:
        print(sum(int(batch.sum()) for batch in loader))
""")


def test_a_stop_signal_while_workers_start_does_not_kill_them():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "28"
