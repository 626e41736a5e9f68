"""Worker processes die with their parent, kill -9 included (issue 20: each kill -9 of featurize
left its 2 workers, 0.4-0.6 GB each, alive for 9+ minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

POOL = """
import multiprocessing, os, sys, time
from concurrent.futures import ProcessPoolExecutor
from imgrate.lifetime import die_with_parent

def pid():
    time.sleep(0.2)
    return os.getpid()

if __name__ == "__main__":
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                               initializer=die_with_parent if sys.argv[1] == "yes" else None)
    for f in [pool.submit(pid) for _ in range(4)]:
        f.result()
    print(" ".join(str(p) for p in pool._processes), flush=True)
    time.sleep(600)
"""


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def workers_after_kill(tmp_path: Path, die: bool, wait_s: float) -> list[int]:
    script = tmp_path / "pool.py"
    script.write_text(POOL)
    proc = subprocess.Popen([sys.executable, str(script), "yes" if die else "no"], stdout=subprocess.PIPE, text=True)
    workers = [int(p) for p in proc.stdout.readline().split()]
    assert len(workers) == 2 and all(alive(p) for p in workers)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(alive(p) for p in workers):
        time.sleep(0.1)
    left = [p for p in workers if alive(p)]
    for p in left:  # the workers this test started: never left behind
        os.kill(p, signal.SIGKILL)
    return left


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_pool_workers_die_with_their_parent_killed_with_sigkill(tmp_path: Path) -> None:
    assert workers_after_kill(tmp_path, die=False, wait_s=3) != []  # what happened before: orphans
    assert workers_after_kill(tmp_path, die=True, wait_s=10) == []
