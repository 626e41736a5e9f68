"""DVC stage evaluate: models + baselines on the test split -> metrics/, plots/, reports/figures/evaluate/.

The same function as ``imgrate evaluate``: imgrate.evaluate.main."""

from imgrate.evaluate import main
from imgrate.progress import run_main

if __name__ == "__main__":
    run_main(main)
