"""DVC stage preprocess: tables + shards -> data/dataset/, and metrics/preprocess.json.

The same function as ``imgrate preprocess``: imgrate.preprocess.main."""

from imgrate.preprocess import main
from imgrate.progress import run_main

if __name__ == "__main__":
    run_main(main)
