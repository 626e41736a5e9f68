"""DVC stage train@<model>: data/dataset (+ data/features) -> models/<model>.pt, curves in dvclive/<model>/.

The same function as ``imgrate train <model>``: imgrate.train.main (which relaunches itself
under torchrun when train.nproc asks for more than one process)."""

import sys

from imgrate.errors import run_main
from imgrate.train import main

if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1] if len(sys.argv) > 1 else "paper_cnn"))
