"""DVC stage evaluate: models + baselines on the test split -> metrics/, plots/, reports/figures/evaluate/.

The same entry as ``imgrate evaluate``: imgrate.entry with the stage's declaration, imgrate.evaluate.STAGE."""

from imgrate.entry import script
from imgrate.evaluate import STAGE

if __name__ == "__main__":
    script(STAGE)
