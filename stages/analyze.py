"""DVC stage analyze: tables + dataset + shards -> the data figures in reports/figures/data/ and reports/data.md.

The same function as ``imgrate analyze``: imgrate.analyze.main."""

from imgrate.errors import run_main
from imgrate.analyze import main

if __name__ == "__main__":
    run_main(main)
