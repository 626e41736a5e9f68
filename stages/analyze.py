"""DVC stage analyze: tables + dataset + shards -> the data figures in reports/figures/data/ and reports/data.md.

The same entry as ``imgrate analyze``: imgrate.entry with the stage's declaration, imgrate.analyze.STAGE."""

from imgrate.analyze import STAGE
from imgrate.entry import script

if __name__ == "__main__":
    script(STAGE)
