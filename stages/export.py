"""DVC stage export: data/raw shards -> data/tables/{posts,users}.jsonl (+ MongoDB when configured),
and metrics/export.json."""

from imgrate.errors import run_main
from imgrate.export import run_stage
from imgrate.mongo import sink_from_params
from imgrate.params import load_params
from imgrate.paths import project_paths
from imgrate.progress import console, setup_logging


def main() -> None:
    setup_logging()
    paths = project_paths()
    params = load_params(paths.params, ["export"]).export
    sink = sink_from_params(params, paths)  # None unless $IMGRATE_MONGODB_URI or export.mongo_uri
    m = run_stage(params, paths, sinks=[sink] if sink else [])
    console.print(f"export: {m['posts']} posts, {m['users']} users, {m['posts_skipped']} skipped")
    if sink:
        console.print(f"MongoDB {sink.where}: {m['posts_written']} posts and {m['users_written']} users written",
                      highlight=False)


if __name__ == "__main__":
    run_main(main)
