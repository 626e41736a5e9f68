"""DVC stage featurize: tables + shards -> frozen backbone features per shard in data/features/.

The same function as ``imgrate featurize``: imgrate.featurize.main."""

from imgrate.featurize import main
from imgrate.progress import run_main

if __name__ == "__main__":
    run_main(main)
