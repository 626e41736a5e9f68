"""Benchmark: how long `imgrate crawl` takes to say `unreachable` behind a silent proxy.

A real loopback socket server accepts every connection and never answers (a stuck proxy);
`imgrate crawl` runs against it (``crawl.source: instagram``, HTTPS_PROXY pointing at it,
the paper's 27 users) with the crawler's real timeouts. Reports the wall-clock seconds to the
end of the run, its status and stop reason, and the requests it made, as JSON. Before issue
20 the same run took ~5 minutes per user (each read timeout retried), 2 h 15 min in all, and
never said `unreachable`. Nothing leaves the machine.

    python bench/silent_proxy.py
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def silent_server() -> tuple[socket.socket, list[socket.socket]]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return sock, held


def main() -> None:
    sock, held = silent_server()
    proxy = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        shutil.copy(ROOT / "users.txt", project / "users.txt")
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["crawl"]["source"] = "instagram"
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy", "imgrate_root")
               and not k.startswith("IMGRATE_INSTAGRAM")}
        env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy, IMGRATE_QUIET="1")
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "imgrate.cli", "crawl"], cwd=project, env=env,
                              capture_output=True, text=True, timeout=3600)
        seconds = time.monotonic() - t0
        report = json.loads((project / "reports" / "crawl.json").read_text())
    for conn in held:
        conn.close()
    sock.close()
    print(json.dumps({
        "seconds_to_end": round(seconds, 1),
        "exit_code": proc.returncode,
        "status": report["status"],
        "stop_reason": report["stop_reason"],
        "requests": report["totals"]["requests"],
        "users": report["totals"]["users"],
        "users_failed": report["totals"]["failed"],
        "users_skipped": report["totals"]["skipped"],
        "connections_accepted": len(held),
    }, indent=2))


if __name__ == "__main__":
    main()
