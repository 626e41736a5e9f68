"""What every bench script shares (bench/README.md has the contract a bench follows).

- :func:`parser`: the flags every bench takes (``--smoke``, ``--out``);
- :func:`record`: the figures measured so far, printed as JSON and saved at the end, and
  saved at every :meth:`Record.save` and when the bench fails part-way (with the error);
- :func:`load`, :func:`with_params`, :func:`write_params`: params.yaml written through the
  typed params (imgrate.params), so a renamed key fails at the bench's start, naming it;
- :func:`imgrate`, :func:`dvc`, :func:`sh`: the pipeline driven as users drive it (the
  ``imgrate`` command, ``dvc repro``), in a subprocess, timed;
- :func:`build_world`: a small simulated world crawled, exported and preprocessed that way;
- :func:`count_servers`: the simulated Instagram's own request count (in-process crawls).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

import imgrate.demo.server as demo
from imgrate.errors import ParamsError
from imgrate.io import atomic_open
from imgrate.params import Params, as_mapping, load_params, parse_params
from imgrate.paths import Paths

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench" / "results"  # default --out folder (git-ignored)


# --- flags and results ----------------------------------------------------------------------


def parser(doc: str | None, name: str) -> argparse.ArgumentParser:
    """The bench's argument parser with the two flags every bench takes."""
    ap = argparse.ArgumentParser(prog=f"bench/{name}.py", description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true",
                    help="the smallest sizes: seconds, for `make test` (the figures mean nothing)")
    ap.add_argument("--out", type=Path,
                    help=f"save the JSON result here (default: bench/results/{name}.json, "
                         f"{name}.smoke.json with --smoke)")
    return ap


def out_path(args: argparse.Namespace, name: str) -> Path:
    if args.out is not None:
        return Path(args.out)
    return RESULTS / f"{name}{'.smoke' if args.smoke else ''}.json"


class Record(dict[str, Any]):
    """The figures a bench has measured so far (a JSON-able dict), and where they are saved."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    def save(self) -> None:
        """Save what is measured so far (a bench that dies later leaves it behind)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(self.out) as fh:
            json.dump(self, fh, indent=2)
            fh.write("\n")

    def step(self, what: str) -> None:
        """Save, and say on stderr which step is done (stdout gets the JSON only)."""
        self.save()
        print(f"[{dt.datetime.now():%H:%M:%S}] {what}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def record(args: argparse.Namespace, name: str, **head: Any) -> Iterator[Record]:
    """The result of one bench run: ``head`` first, then what the body sets.

    On leaving, the result gets ``complete`` (and ``error`` when the body raised, even on
    Ctrl-C), is printed as JSON on stdout and saved at ``--out``; an exception is then raised
    on, so a failed bench exits non-zero with everything it measured before the failure.
    """
    r = Record(out_path(args, name))
    r.update(bench=name, smoke=bool(args.smoke), started=dt.datetime.now().isoformat(timespec="seconds"),
             machine={"cores": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
             **head)
    start = time.perf_counter()
    try:
        yield r
    except BaseException as err:
        r["complete"] = False
        r["error"] = f"{type(err).__name__}: {err}"[-4000:]
        raise
    else:
        r["complete"] = True
    finally:
        r["wall_s"] = round(time.perf_counter() - start, 2)
        r["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
        print(json.dumps(r, indent=2), flush=True)
        r.save()
        print(f"saved {r.out}", file=sys.stderr)


# --- params, written through the typed params -----------------------------------------------


def load(path: Path = ROOT / "params.yaml") -> Params:
    """The project's params.yaml, every section validated."""
    return load_params(path)


def with_params(params: Params, changes: Mapping[str, Any]) -> Params:
    """``params`` with dotted keys replaced (``{"train.paper_cnn.epochs": 1}``), checked as
    params.yaml is: a key that does not exist raises :class:`ParamsError` naming it, a bad
    value one naming its key."""
    from imgrate.models import check_train

    data = to_dict(params)
    for key, value in changes.items():
        data = _replace(data, key.split("."), value, key)
    changed = parse_params(data)  # types and ranges, as load_params checks them
    check_train(changed.train)  # and each model's section, as its train@<model> does
    return changed


def _replace(node: Any, parts: list[str], value: Any, key: str) -> Any:
    head, rest = parts[0], parts[1:]
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        names = [f.name for f in dataclasses.fields(node)]
        if head not in names:
            raise ParamsError(f"bench: unknown params key {key} ({head} is not one of {', '.join(names)})")
        new = _replace(getattr(node, head), rest, value, key) if rest else value
        return dataclasses.replace(node, **{head: new})
    if isinstance(node, Mapping):
        if head not in node:
            raise ParamsError(f"bench: unknown params key {key} ({head} is not one of {', '.join(map(str, node))})")
        return {**node, head: _replace(node[head], rest, value, key) if rest else value}
    raise ParamsError(f"bench: unknown params key {key} (not a section)")


def to_dict(params: Params) -> dict[str, Any]:
    """The params.yaml mapping of typed params."""
    return as_mapping(params)  # type: ignore[no-any-return]


def write_params(project: Path, params: Params) -> None:
    """Write ``params`` as ``project``/params.yaml (after checking it as load_params would)."""
    data = to_dict(params)
    parse_params(data)
    with atomic_open(project / "params.yaml") as fh:
        fh.write(yaml.safe_dump(data, sort_keys=False))


# --- the pipeline, as users run it ----------------------------------------------------------


class Failed(Exception):
    """A command of the pipeline failed; the message holds the end of its output."""


def bench_env(project: Path) -> dict[str, str]:
    """The environment of a pipeline command in ``project``: the bench's venv first on PATH,
    quiet output, no analytics, a git identity; never a developer's MongoDB."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "IMGRATE_QUIET": "1",
           "DVC_NO_ANALYTICS": "1", "IMGRATE_ROOT": str(project), "GIT_AUTHOR_NAME": "bench",
           "GIT_AUTHOR_EMAIL": "bench@example.invalid", "GIT_COMMITTER_NAME": "bench",
           "GIT_COMMITTER_EMAIL": "bench@example.invalid"}
    env.pop("IMGRATE_MONGODB_URI", None)
    return env


def sh(cmd: list[str], cwd: Path, env: Mapping[str, str] | None = None) -> float:
    """Run a command; return its wall time in seconds (:class:`Failed`, with its output, if it fails)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=dict(env) if env is not None else bench_env(cwd), text=True,
                          capture_output=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise Failed(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds


def imgrate(project: Path, *args: str, env: Mapping[str, str] | None = None) -> float:
    """``imgrate <args>`` in ``project``; its wall time."""
    return sh([str(BIN / "imgrate"), *args], project, env)


def dvc(project: Path, *args: str, env: Mapping[str, str] | None = None) -> float:
    """``dvc <args>`` in ``project``; its wall time."""
    return sh([str(BIN / "dvc"), *args], project, env)


def build_world(dest: Path, users: int, *, image_size: int = 320, until: str = "2025-09-30",
                preprocess: bool = True, changes: Mapping[str, Any] | None = None) -> Paths:
    """The first ``users`` of users.txt, crawled up to ``until``, exported (and, with
    ``preprocess``, preprocessed) under ``dest`` by ``imgrate crawl``, ``imgrate export`` and
    ``imgrate preprocess``, with the project's params.yaml otherwise (and ``changes``, e.g.
    ``{"crawl.demo.seed": 7}`` for another world)."""
    from imgrate.crawl.users import read_users

    names = read_users(ROOT / "users.txt")[:users]
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "users.txt").write_text("\n".join(names) + "\n")
    write_params(dest, with_params(load(), {"crawl.demo.until": until, "crawl.demo.image_size": image_size,
                                            "crawl.users_file": "users.txt", "export.mongo_uri": None,
                                            **(changes or {})}))
    for stage in ("crawl", "export", *(("preprocess",) if preprocess else ())):
        imgrate(dest, stage)
    return Paths(dest)


def count_servers() -> list[demo.DemoServer]:
    """Record every simulated Instagram the crawler starts in this process from now on (each
    counts the requests it served): the returned list grows by one per crawl."""
    servers: list[demo.DemoServer] = []
    serve = demo.serve

    def counting_serve(*a, **kw):  # type: ignore[no-untyped-def]
        servers.append(serve(*a, **kw))
        return servers[-1]

    demo.serve = counting_serve
    return servers
