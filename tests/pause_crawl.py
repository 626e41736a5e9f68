"""Run the crawl stage and stop it dead at a chosen moment, for the kill -9 test.

    python tests/pause_crawl.py EVENT N      (in a project folder)

EVENT is ``request`` (the N-th request the simulated Instagram receives, before it answers),
``replace-before`` or ``replace-after`` (just before or just after the N-th ``os.replace``,
the rename that publishes every shard, stamps file and Instaloader file). At that moment the
crawler prints ``paused <EVENT> <N>`` on stdout and waits forever, so the test's SIGKILL lands
exactly there, however fast or slow the machine is. A crawl that ends before the moment exits
as usual (the test reads end-of-file instead of the line).
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
from pathlib import Path
from typing import Any

import imgrate.crawl.demo as demo

EVENTS = ("request", "replace-before", "replace-after")


def main() -> None:
    event, n = sys.argv[1], int(sys.argv[2])
    if event not in EVENTS or n < 1:
        raise SystemExit(f"usage: pause_crawl.py {{{','.join(EVENTS)}}} N>=1")
    seen = {"request": 0, "replace": 0}
    lock = threading.Lock()

    def reached(kind: str) -> bool:
        with lock:
            seen[kind] += 1
            return seen[kind] == n

    def pause() -> None:
        sys.stdout.write(f"paused {event} {n}\n")
        sys.stdout.flush()
        threading.Event().wait()  # forever: the test kills the process here

    record = demo.DemoServer._record

    def counting_record(self: demo.DemoServer, *args: Any, **kwargs: Any) -> None:
        if event == "request" and reached("request"):
            pause()
        record(self, *args, **kwargs)

    replace = os.replace

    def counting_replace(src: Any, dst: Any, **kwargs: Any) -> None:
        hit = event.startswith("replace") and reached("replace")
        if hit and event == "replace-before":
            pause()
        replace(src, dst, **kwargs)
        if hit:
            pause()

    demo.DemoServer._record = counting_record  # type: ignore[method-assign]
    os.replace = counting_replace  # type: ignore[assignment]
    script = Path(__file__).resolve().parents[1] / "stages" / "crawl.py"
    sys.argv = [str(script)]
    runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
