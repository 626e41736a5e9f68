"""DVC stage export: data/raw shards -> data/tables/{posts,users}.jsonl (+ MongoDB when configured),
and metrics/export.json.

The same function as ``imgrate export``: imgrate.export.main."""

from imgrate.export import main
from imgrate.progress import run_main

if __name__ == "__main__":
    run_main(main)
