"""DVC stage train@<model>: data/dataset (+ what the model reads) -> models/<model>.pt, curves in dvclive/<model>/.

The same entry as ``imgrate train <model>``: imgrate.entry with imgrate.train.STAGE (which
relaunches itself under torchrun when train.nproc asks for more than one process)."""

import sys

from imgrate.entry import script
from imgrate.train import STAGE

if __name__ == "__main__":
    script(STAGE, sys.argv[1] if len(sys.argv) > 1 else "")  # no model: an error naming the known ones
