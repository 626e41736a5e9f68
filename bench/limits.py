"""Benchmark: limits that protect the machine (issue 20), measured as a user meets them.

- ``silent_proxy``: `imgrate crawl` (``crawl.source: instagram``, the paper's 27 users) behind
  a real loopback socket server that accepts every connection and never answers (a stuck
  proxy): the wall-clock seconds until the run ends ``unreachable``, its stop reason and the
  requests it made. Before issue 20 each read timeout was retried: ~5 minutes per user,
  2 h 15 min in all, never ``unreachable``. Nothing leaves the machine.

- ``bounded``: each param that sizes work set far past its bound (``train.nproc: 1000``,
  ``evaluate.n_sets: 10^9``, ``evaluate.n_boot: 10^9``, a set size of 10^6,
  ``crawl.demo.until: 9999-12-31``), and a 65 KB model file whose config asks for
  ``hidden: 500000``: the command a user runs (`imgrate train`, `evaluate`, `crawl`,
  `predict`), its exit code, its one line, its wall time and its peak memory (the process
  and everything it waited for, from ``wait4``), against the same command refused for
  another reason at the same point (no dataset, no model file): the baseline. Before issue
  20: ~290 torchrun ranks, OOM kills, a traceback, 2.7 GB allocated.

``--smoke``: 3 users and a 0.5 s first-answer timeout for the proxy (set in the command's own
process), so it takes seconds; the figures then mean nothing. The bounded cases are the same.

    python bench/limits.py [--smoke] [--out PATH]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from imgrate.crawl.users import read_users
from imgrate.errors import ExitCode

from _common import BIN, ROOT, bench_env, load, parser, record, to_dict, with_params, write_params


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
            if proc.returncode not in (ExitCode.OK, ExitCode.INCOMPLETE):  # a stopped crawl is incomplete
                raise RuntimeError(f"imgrate crawl exited {proc.returncode}: {proc.stderr[-2000:]}")
            report = json.loads((project / "reports" / "crawl.json").read_text())
    finally:
        server.close()
    return {
        "seconds_to_end": round(seconds, 1),
        "exit_code": proc.returncode,
        "status": report["status"],
        "stop_reason": report["stop_reason"],
        "requests": report["totals"]["requests"],
        "users": report["totals"]["users"],
        "users_failed": report["totals"]["failed"],
        "users_skipped": report["totals"]["skipped"],
        "connections_accepted": len(server.held),
    }


def peak_run(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, object]:
    """Run ``cmd``; its exit code, last line of stderr, wall seconds and peak RSS (MB) of it and
    of every process it waited for (``wait4``)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in err.splitlines() if line.strip()]
    return {"exit_code": proc.returncode, "line": lines[-1][:300] if lines else "", "lines": len(lines),
            "seconds": round(time.perf_counter() - start, 2), "peak_mb": round(usage.ru_maxrss / 1024, 1)}


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        data = data[part]
    if last not in data:  # a renamed key fails the bench at its start, naming it
        raise KeyError(f"bench: params.yaml has no key {dotted}")
    data[last] = value


def bounded(work: Path) -> dict[str, object]:
    """Each bounded case and its baseline (see the module docstring)."""
    import torch

    from imgrate.models import build_model, save_model

    project = work / "project"
    project.mkdir()
    (project / "users.txt").write_text("\n".join(read_users(ROOT / "users.txt")[:3]) + "\n")
    env = bench_env(project)
    photo = work / "photo.png"
    from PIL import Image

    Image.new("RGB", (64, 48), (120, 90, 60)).save(photo)
    # a model file as train writes it, then its config edited: hidden 500000 (the weights stay)
    good = work / "good.pt"
    from imgrate.inputs import InputSpec
    from imgrate.models import ModelFile

    info = ModelFile(model="pretrained", config={"features": 1280, "hidden": 8, "dropout": 0.5},
                     inputs=(InputSpec("features", 128, "max_ratio", "efficientnet-lite0", 1280),),
                     fit={"method": "gradient"}, params={}, history=[], summary={})
    save_model(good, build_model("pretrained", {"hidden": 8}), info)
    raw = torch.load(good, weights_only=True)
    raw["config"]["hidden"] = 500_000
    forged = work / "forged.pt"
    torch.save(raw, forged)
    imgrate = str(BIN / "imgrate")
    cases: list[tuple[str, str | None, Any, list[str]]] = [
        ("train_nproc_1000", "train.nproc", 1000, [imgrate, "train", "paper_cnn"]),
        ("evaluate_n_sets_1e9", "evaluate.n_sets", 10**9, [imgrate, "evaluate"]),
        ("evaluate_n_boot_1e9", "evaluate.n_boot", 10**9, [imgrate, "evaluate"]),
        ("evaluate_set_size_1e6", "evaluate.set_sizes", [2, 10**6], [imgrate, "evaluate"]),
        ("crawl_demo_until_9999_12_31", "crawl.demo.until", "9999-12-31", [imgrate, "crawl"]),
        ("model_file_hidden_500000", None, None, [imgrate, "predict", str(photo), "--model", str(forged)]),
    ]
    baselines = {  # the same command refused at the same point for another reason
        "train": [imgrate, "train", "paper_cnn"],
        "evaluate": [imgrate, "evaluate"],
        "crawl": None,
        "predict": [imgrate, "predict", str(photo), "--model", str(work / "missing.pt")],
    }
    out: dict[str, object] = {}
    for name, key, value, cmd in cases:
        data = to_dict(load())
        data["crawl"]["users_file"] = "users.txt"
        data["export"]["mongo_uri"] = None
        if key is not None:
            _set(data, key, value)
        (project / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        got = peak_run(cmd, project, env)
        base_cmd = baselines[cmd[1]]
        if base_cmd is not None:
            write_params(project, with_params(load(), {"crawl.users_file": "users.txt", "export.mongo_uri": None}))
            base = peak_run(base_cmd, project, env)
            got["baseline"] = base
            got["peak_over_baseline"] = round(float(got["peak_mb"]) / float(base["peak_mb"]), 2)  # type: ignore[arg-type]
        out[name] = got
    return out


def main() -> None:
    args = parser(__doc__, "limits").parse_args()
    with record(args, "limits") as r:
        r["silent_proxy"] = silent_proxy(args.smoke)
        r.step("silent proxy")
        with tempfile.TemporaryDirectory(prefix="imgrate-limits-") as tmp:
            r["bounded"] = bounded(Path(tmp))
        r.step("bounded params")
        ok = r["silent_proxy"]["status"] == "unreachable" and all(
            c["exit_code"] != 0 and c["lines"] == 1 for c in r["bounded"].values())
        r["all_refused_in_one_line"] = ok
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
