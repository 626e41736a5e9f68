"""DVC stage evaluate: models + baselines on the test split -> metrics/evaluate.json, plots/."""

from imgrate.errors import run_main
from imgrate.evaluate import run_stage
from imgrate.params import load_params
from imgrate.paths import project_paths
from imgrate.progress import console, setup_logging


def main() -> None:
    setup_logging()
    paths = project_paths()
    results = run_stage(load_params(paths.params).evaluate, paths)
    for name, m in results.items():
        console.print(f"{name:>18}: spearman_within {m['spearman_within']}, "
                      f"ranking_accuracy_mixed {m['ranking_accuracy_mixed']}")


if __name__ == "__main__":
    run_main(main)
