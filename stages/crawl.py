"""DVC stage crawl: users.txt -> new shards in data/raw, and metrics/crawl.json.

The same function as ``imgrate crawl``: imgrate.crawl.stage.main."""

from imgrate.crawl.stage import main
from imgrate.progress import run_main

if __name__ == "__main__":
    run_main(main)
