"""DVC stage export: data/raw shards -> data/tables/{posts,users}.jsonl (+ MongoDB when configured),
and metrics/export.json.

The same function as ``imgrate export``: imgrate.export.main."""

from imgrate.errors import run_main
from imgrate.export import main

if __name__ == "__main__":
    run_main(main)
