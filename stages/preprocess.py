"""DVC stage preprocess: tables + shards -> data/dataset/, and metrics/preprocess.json.

The same function as ``imgrate preprocess``: imgrate.preprocess.main."""

from imgrate.errors import run_main
from imgrate.preprocess import main

if __name__ == "__main__":
    run_main(main)
