"""DVC stage preprocess: tables + shards -> data/dataset/, and metrics/preprocess.json.

The same entry as ``imgrate preprocess``: imgrate.entry with the stage's declaration, imgrate.preprocess.STAGE."""

from imgrate.entry import script
from imgrate.preprocess import STAGE

if __name__ == "__main__":
    script(STAGE)
