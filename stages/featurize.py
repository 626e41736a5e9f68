"""DVC stage featurize: tables + shards -> frozen backbone features per shard in data/features/.

The same function as ``imgrate featurize``: imgrate.featurize.main."""

from imgrate.errors import run_main
from imgrate.featurize import main

if __name__ == "__main__":
    run_main(main)
