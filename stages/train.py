"""DVC stage train@<model>: data/dataset (+ what the model reads) -> models/<model>.pt, curves in dvclive/<model>/.

The same function as ``imgrate train <model>``: imgrate.train.main (which relaunches itself
under torchrun when train.nproc asks for more than one process)."""

import sys

from imgrate.progress import run_main
from imgrate.train import main

if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1] if len(sys.argv) > 1 else ""))  # no model: an error naming the known ones
