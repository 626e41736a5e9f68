"""DVC stage analyze: tables + dataset + shards -> the data figures in reports/figures/data/ and reports/data.md.

The same function as ``imgrate analyze``: imgrate.analyze.main."""

from imgrate.analyze import main
from imgrate.progress import run_main

if __name__ == "__main__":
    run_main(main)
