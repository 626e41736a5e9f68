"""Benchmark: limits that protect the machine (issue 20), measured as a user meets them.

- ``silent_proxy``: `imgrate crawl` (``crawl.source: instagram``, the paper's 27 users) behind
  a real loopback socket server that accepts every connection and never answers (a stuck
  proxy): the wall-clock seconds until the run ends ``unreachable``, its stop reason and the
  requests it made. Before issue 20 each read timeout was retried: ~5 minutes per user,
  2 h 15 min in all, never ``unreachable``. Nothing leaves the machine.

``--smoke``: 3 users and a 0.5 s first-answer timeout (set in the command's own process), so
it takes seconds; the figures then mean nothing.

    python bench/limits.py [--smoke] [--out PATH]
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from imgrate.crawl.users import read_users

from _common import BIN, ROOT, bench_env, load, parser, record, with_params, write_params


class SilentServer:
    """A loopback server that accepts every connection and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        for conn in self.held:
            conn.close()
        self.sock.close()


def silent_proxy(smoke: bool) -> dict[str, object]:
    server = SilentServer()
    try:
        with tempfile.TemporaryDirectory(prefix="imgrate-limits-") as tmp:
            project = Path(tmp)
            users = read_users(ROOT / "users.txt")
            (project / "users.txt").write_text("\n".join(users[:3] if smoke else users) + "\n")
            write_params(project, with_params(load(), {"crawl.source": "instagram", "export.mongo_uri": None}))
            proxy = f"http://127.0.0.1:{server.port}"
            env = {k: v for k, v in bench_env(project).items()
                   if k.lower() not in ("no_proxy", "all_proxy") and not k.startswith("IMGRATE_INSTAGRAM")}
            env.update(HTTPS_PROXY=proxy, HTTP_PROXY=proxy)
            if smoke:  # the same command, with a short first-answer timeout
                cmd = [sys.executable, "-c", "import imgrate.crawl.instagram as i; i.FIRST_ANSWER_TIMEOUT_S = 0.5; "
                       "from imgrate.cli import app; app(['crawl'])"]
            else:
                cmd = [str(BIN / "imgrate"), "crawl"]
            start = time.perf_counter()
            proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=3600)
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                raise RuntimeError(f"imgrate crawl exited {proc.returncode}: {proc.stderr[-2000:]}")
            report = json.loads((project / "reports" / "crawl.json").read_text())
    finally:
        server.close()
    return {
        "seconds_to_end": round(seconds, 1),
        "status": report["status"],
        "stop_reason": report["stop_reason"],
        "requests": report["totals"]["requests"],
        "users": report["totals"]["users"],
        "users_failed": report["totals"]["failed"],
        "users_skipped": report["totals"]["skipped"],
        "connections_accepted": len(server.held),
    }


def main() -> None:
    args = parser(__doc__, "limits").parse_args()
    with record(args, "limits") as r:
        r["silent_proxy"] = silent_proxy(args.smoke)
        r.step("silent proxy")
        ok = r["silent_proxy"]["status"] == "unreachable"
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
