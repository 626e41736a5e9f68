"""DVC stage preprocess: tables + shards -> data/dataset/, and metrics/preprocess.json."""

from imgrate.errors import run_main
from imgrate.params import load_params
from imgrate.paths import project_paths
from imgrate.preprocess import run_stage
from imgrate.progress import console, setup_logging


def main() -> None:
    setup_logging()
    paths = project_paths()
    m = run_stage(load_params(paths.params, ["preprocess"]).preprocess, paths)
    console.print(f"preprocess: {m['kept']} images ({m['decoded']} decoded, {m['from_cache']} from cache, "
                  f"{m['skipped']} skipped), splits {m['splits']}")


if __name__ == "__main__":
    run_main(main)
