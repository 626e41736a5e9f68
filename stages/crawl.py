"""DVC stage crawl: users.txt -> new shards in data/raw, and metrics/crawl.json.

The same function as ``imgrate crawl``: imgrate.crawl.stage.main."""

from imgrate.errors import run_main
from imgrate.crawl.stage import main

if __name__ == "__main__":
    run_main(main)
