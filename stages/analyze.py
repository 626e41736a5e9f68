"""DVC stage analyze: tables + dataset + shards -> the data figures in reports/figures/data/ and reports/data.md."""

from imgrate.analyze import run_stage
from imgrate.errors import run_main
from imgrate.params import load_params
from imgrate.paths import project_paths
from imgrate.progress import console, setup_logging


def main() -> None:
    setup_logging()
    paths = project_paths()
    c = run_stage(load_params(paths.params, ["analyze"]).analyze, paths)
    console.print(f"analyze: {c['users']} users, {c['posts']} posts, {c['dataset']} dataset images; "
                  f"figures in {paths.data_figures}, counts in {paths.data_report}")


if __name__ == "__main__":
    run_main(main)
