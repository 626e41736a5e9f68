"""DVC stage evaluate: models + baselines on the test split -> metrics/, plots/, reports/figures/evaluate/."""

from imgrate.errors import run_main
from imgrate.evaluate import run_stage
from imgrate.params import load_params
from imgrate.paths import project_paths
from imgrate.progress import console, setup_logging


def main() -> None:
    setup_logging()
    paths = project_paths()
    params = load_params(paths.params, ["evaluate", "crawl"])  # crawl.demo: the oracle
    report = run_stage(params.evaluate, paths, params.crawl)
    for table in report.tables():
        console.print(table)


if __name__ == "__main__":
    run_main(main)
