"""DVC stage evaluate: models + baselines on the test split -> metrics/, plots/, reports/figures/evaluate/.

The same function as ``imgrate evaluate``: imgrate.evaluate.main."""

from imgrate.errors import run_main
from imgrate.evaluate import main

if __name__ == "__main__":
    run_main(main)
