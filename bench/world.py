"""What several bench scripts share: a small simulated world, and the simulated Instagram's
own request count."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import imgrate.demo.server as demo
from imgrate.params import load_params
from imgrate.paths import Paths

ROOT = Path(__file__).resolve().parents[1]


def build_world(dest: Path, users: int, *, preprocess: bool = True) -> Paths:
    """Crawl and export (and, with ``preprocess``, preprocess) a small simulated world of the
    first ``users`` of users.txt under ``dest``."""
    from imgrate.crawl.stage import run_stage as crawl
    from imgrate.crawl.users import read_users
    from imgrate.export import run_stage as export
    from imgrate.preprocess import run_stage as run_preprocess

    names = read_users(ROOT / "users.txt")[:users]
    (dest / "users.txt").write_text("\n".join(names) + "\n")
    params = load_params(ROOT / "params.yaml")
    crawl_params = dataclasses.replace(params.crawl, demo=dataclasses.replace(params.crawl.demo, until="2025-09-30"))
    paths = Paths(dest)
    crawl(crawl_params, paths)
    export(dataclasses.replace(params.export, mongo_uri=None), paths)
    if preprocess:
        run_preprocess(params.preprocess, paths)
    return paths


def count_servers() -> list[demo.DemoServer]:
    """Record every simulated Instagram the crawler starts from now on (each counts the
    requests it served): the returned list grows by one per crawl."""
    servers: list[demo.DemoServer] = []
    serve = demo.serve

    def counting_serve(*a, **kw):  # type: ignore[no-untyped-def]
        servers.append(serve(*a, **kw))
        return servers[-1]

    demo.serve = counting_serve
    return servers
