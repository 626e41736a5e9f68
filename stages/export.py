"""DVC stage export: data/raw shards -> data/tables/{posts,users}.jsonl, and metrics/export.json."""

from imgrate.errors import run_main
from imgrate.export import run_stage
from imgrate.params import load_params
from imgrate.paths import project_paths
from imgrate.progress import console, setup_logging


def main() -> None:
    setup_logging()
    paths = project_paths()
    m = run_stage(load_params(paths.params).export, paths)
    console.print(f"export: {m['posts']} posts, {m['users']} users, {m['posts_skipped']} skipped")


if __name__ == "__main__":
    run_main(main)
