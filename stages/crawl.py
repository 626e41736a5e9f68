"""DVC stage crawl: users.txt -> new shards in data/raw, and metrics/crawl.json.

The same entry as ``imgrate crawl``: imgrate.entry with the stage's declaration, imgrate.crawl.stage.STAGE."""

from imgrate.crawl.stage import STAGE
from imgrate.entry import script

if __name__ == "__main__":
    script(STAGE)
