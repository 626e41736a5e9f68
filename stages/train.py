"""DVC stage train@<model>: data/dataset -> models/<model>.pt, curves in dvclive/<model>/."""

import sys

from imgrate.errors import run_main
from imgrate.params import load_params
from imgrate.paths import project_paths
from imgrate.progress import console, setup_logging
from imgrate.train import run_stage


def main() -> None:
    setup_logging()
    model = sys.argv[1] if len(sys.argv) > 1 else "paper_cnn"
    paths = project_paths()
    s = run_stage(model, load_params(paths.params, ["train"]), paths)
    if s["rank"] == 0:  # under torchrun every rank returns; one line is enough
        console.print(f"train {model}: {s['epochs']} epochs on {s['device']} x{s['world_size']}, "
                      f"val_loss {s['val_loss']:.5f}, val_spearman_within {s['val_spearman_within']:.3f}")


if __name__ == "__main__":
    run_main(main)
