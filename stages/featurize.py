"""DVC stage featurize: tables + shards -> frozen backbone features per shard in data/features/.

The same entry as ``imgrate featurize``: imgrate.entry with the stage's declaration, imgrate.featurize.STAGE."""

from imgrate.entry import script
from imgrate.featurize import STAGE

if __name__ == "__main__":
    script(STAGE)
