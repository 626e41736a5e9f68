"""The evaluate stage: every trained model and every baseline on the same test split.

Reports the paper's ranking accuracy on mixed-user sets (for continuity) and judges models
within users (see imgrate.metrics for why). Every ``models/*.pt`` is scored, so a model
added to the train matrix later is covered without touching this module. Baselines:

- ``random``: seeded noise around the training mean; sits at chance everywhere.
- ``user_mean``: each user's mean training target. It never looks at pixels, so it must
  sit at chance within users (a leakage probe); on mixed sets it shows how much the
  paper's metric rewards recognising the photographer.
- ``linear_regression``: the paper's scikit-learn LinearRegression on flattened pixels,
  unregularised, as the paper ran it.
- ``ridge_pixels``: the same pixels with cross-validated ridge regularisation.
- ``ridge_features``: cross-validated ridge on the frozen backbone features of the featurize
  stage (``data/features``; see :func:`feature_baselines`).
- ``oracle`` (simulated world only): the true appeal of each photo, recomputed from the
  world's seed (never read from crawled data), mapped to the target scale by a linear fit
  on the training split: the upper bound of what an image model can reach.

Outputs: ``metrics/evaluate/<name>.json`` (the few numbers a comparison needs, one file
per model and baseline, so `dvc metrics show` prints a leaderboard), ``reports/evaluate.json``
(every metric of every model), ``reports/leak.json`` (how well the user can be told from
each model's outputs),
``plots/predictions/<name>.csv`` and ``plots/spearman_per_user/<name>.csv`` (DVC plots)
and PNG copies under ``reports/figures/evaluate/``.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgrate import metrics
from imgrate.dataset import Dataset, load_dataset
from imgrate.errors import DataError
from imgrate.io import atomic_open, remove_stale_tmp, write_json
from imgrate.params import CrawlParams, EvaluateParams
from imgrate.paths import Paths

if TYPE_CHECKING:
    from rich.table import Table

log = logging.getLogger(__name__)

# Report order: the bound, then baselines from strongest expected to chance.
BASELINES = ("oracle", "ridge_features", "ridge_pixels", "linear_regression", "user_mean", "random")


@dataclass
class Report:
    """What the stage wrote: metrics per model, the leak section, and skipped baselines."""

    metrics: dict[str, dict[str, Any]]
    leak: dict[str, dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)  # baseline -> why it did not run

    def tables(self) -> list[Table]:
        return summary_tables(self)


# ------------------------------------------------------------------------- predictions


def _pixels(data: Dataset, rows: np.ndarray) -> np.ndarray:
    return data.images[rows].reshape(len(rows), -1).astype(np.float32) / 255.0


def _reproducible_fit(estimator: Any, x_train: np.ndarray, y_train: np.ndarray,
                      x_test: np.ndarray) -> tuple[Any, np.ndarray]:
    """Fit and predict in float64 on one BLAS thread, so that the same inputs give the same
    predictions to the last written digit: a threaded float32 solve of the pixel baselines'
    underdetermined systems (7,500 columns, ~1,650 rows) changed in the 6th decimal between runs."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        estimator.fit(np.asarray(x_train, dtype=np.float64), np.asarray(y_train, dtype=np.float64))
        return estimator, estimator.predict(np.asarray(x_test, dtype=np.float64))


def _ridge(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, name: str) -> np.ndarray:
    from sklearn.linear_model import RidgeCV

    ridge, pred = _reproducible_fit(RidgeCV(alphas=np.logspace(-1, 5, 13)), x_train, y_train, x_test)
    log.info("%s: alpha %.3g", name, ridge.alpha_)
    return pred


def baseline_predictions(data: Dataset, seed: int) -> dict[str, np.ndarray]:
    """Test-split predictions of the pixel and user baselines, fitted on the train split."""
    from sklearn.linear_model import LinearRegression

    train, test = data.split("train"), data.split("test")
    if len(train) == 0:
        raise DataError("the train split is empty: the baselines have nothing to fit")
    y_train = data.targets(train)
    users_train, users_test = data.users(train), data.users(test)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {
        "random": float(y_train.mean()) + float(y_train.std()) * rng.normal(size=len(test)),
    }

    means = {u: float(y_train[users_train == u].mean()) for u in np.unique(users_train)}
    fallback = float(y_train.mean())  # a user with no training posts
    out["user_mean"] = np.array([means.get(u, fallback) for u in users_test])

    x_train, x_test = _pixels(data, train), _pixels(data, test)
    out["linear_regression"] = _reproducible_fit(LinearRegression(), x_train, y_train, x_test)[1]
    out["ridge_pixels"] = _ridge(x_train, y_train, x_test, "ridge_pixels")
    return out


def feature_baselines(data: Dataset, paths: Paths) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``ridge_features``: cross-validated ridge on the featurize stage's frozen backbone
    features of the dataset's images, standardised with the training split's mean and spread.
    Skipped (with the reason) when ``data/features`` has none.

    Returns (predictions, skipped): exactly one of the two holds ``ridge_features``.
    """
    from imgrate.models import dataset_inputs

    if not (paths.features / "meta.json").exists():
        return {}, {"ridge_features": f"no features in {paths.features} (the featurize stage)"}
    _, features = dataset_inputs("features", data, paths)
    train, test = data.split("train"), data.split("test")
    x_train, x_test = features[train].astype(np.float64), features[test].astype(np.float64)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-6
    pred = _ridge((x_train - mean) / std, data.targets(train), (x_test - mean) / std, "ridge_features")
    return {"ridge_features": pred}, {}


def oracle_predictions(data: Dataset, crawl: CrawlParams) -> np.ndarray:
    """The simulated world's true appeal of each test photo, on the target scale.

    Recomputed from ``crawl.demo`` (seed, start, ...) with :class:`DemoWorld`; appeal
    depends only on the seed and the username, never on the crawled data. A linear map
    fitted on the training split (positive slope) puts it on the target's scale so that
    MSE and MAE mean something; it changes no ranking.
    """
    from imgrate.crawl.demo import DemoWorld, WorldConfig

    d = crawl.demo
    users = sorted({str(r["user"]).lower() for r in data.index})
    world = DemoWorld(users, WorldConfig(seed=d.seed, start=d.start, until=d.until,
                                         image_size=d.image_size, mean_interval_days=d.mean_interval_days))
    train, test = data.split("train"), data.split("test")

    def appeal(rows: np.ndarray) -> np.ndarray:
        return np.array([world.appeal(data.index[i]["shortcode"]) for i in rows], dtype=np.float64)

    a_train, a_test = appeal(train), appeal(test)
    slope, intercept = (np.polyfit(a_train, data.targets(train), 1) if len(train) > 1 and np.ptp(a_train) > 0
                        else (1.0, 0.0))
    return intercept + max(float(slope), 1e-9) * a_test


def model_predictions(data: Dataset, model_files: list[Path], paths: Paths) -> dict[str, np.ndarray]:
    """Test-split predictions of each saved model (on the CPU: evaluation is small).

    :class:`imgrate.predict.Scorer` feeds each model what its model file says it reads: the
    dataset's pixels or the featurize stage's features of the same posts."""
    from imgrate.predict import Scorer

    test = data.split("test")
    return {path.stem: Scorer(path).score_rows(data, paths, test) for path in model_files}


def all_predictions(
    data: Dataset, paths: Paths, params: EvaluateParams, crawl: CrawlParams | None = None
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Predictions on the test split of every ``models/*.pt`` and every baseline that can run.

    Returns (predictions by name, skipped baselines with the reason). Trained models come
    first (sorted), then the baselines in :data:`BASELINES` order.
    """
    model_files = sorted(paths.models.glob("*.pt"))
    if not model_files:
        raise DataError(f"no trained models in {paths.models}: run the train stage first")
    clash = {p.stem for p in model_files} & set(BASELINES)
    if clash:
        raise DataError(f"model file names clash with baseline names: {sorted(clash)}")
    found = {**model_predictions(data, model_files, paths), **baseline_predictions(data, params.seed)}
    features, skipped = feature_baselines(data, paths)
    found.update(features)
    if crawl is not None and crawl.source == "demo":
        try:
            found["oracle"] = oracle_predictions(data, crawl)
        except DataError as err:  # e.g. crawl.demo changed since the posts were crawled
            skipped["oracle"] = str(err)
    else:
        skipped["oracle"] = "only on the simulated world (crawl.source: demo)"
    for name, reason in skipped.items():
        log.info("baseline %s skipped: %s", name, reason)
    order = [p.stem for p in model_files] + [b for b in BASELINES if b in found]
    return {name: np.asarray(found[name], dtype=np.float64) for name in order}, skipped


# ------------------------------------------------------------------------------ scores


def score(
    y_true: np.ndarray, users: np.ndarray, predictions: dict[str, np.ndarray], params: EvaluateParams
) -> dict[str, dict[str, Any]]:
    """:func:`imgrate.metrics.evaluate_predictions` for each model, on the same sets."""
    return {
        name: metrics.evaluate_predictions(
            y_true, pred, users, set_sizes=params.set_sizes, n_sets=params.n_sets,
            seed=params.seed, n_boot=params.n_boot, min_items=params.min_items,
        )
        for name, pred in predictions.items()
    }


def leak_report(users: np.ndarray, predictions: dict[str, np.ndarray], seed: int) -> dict[str, dict[str, Any]]:
    """For each model: how well a classifier tells the user from its outputs alone.

    ``user_accuracy`` (out-of-fold decision tree on the prediction), ``majority_rate``
    (always guessing the most frequent user) and ``lift`` = the difference. A lift near 0:
    the outputs carry no user information; near ``1 - majority_rate``: they identify the
    photographer, and the paper's mixed-user metric rewards that.
    """
    out: dict[str, dict[str, Any]] = {}
    for name, pred in predictions.items():
        leak = metrics.leak_score(pred, users, seed=seed)
        out[name] = {"user_accuracy": _round(leak["accuracy"]), "majority_rate": _round(leak["majority"]),
                     "lift": _round(leak["lift"])}
    return out


def _round(x: float) -> float | None:
    return round(float(x), 6) if np.isfinite(x) else None


def shuffle_within_users(y: np.ndarray, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``y`` with its values permuted within each user: the control that must score chance."""
    out = np.array(y, copy=True)
    for u in np.unique(users):
        idx = np.flatnonzero(users == u)
        out[idx] = y[rng.permutation(idx)]
    return out


# ------------------------------------------------------------------------------- stage


def run_stage(params: EvaluateParams, paths: Paths, crawl: CrawlParams | None = None) -> Report:
    """The DVC stage: metrics/evaluate/, reports/evaluate.json, reports/leak.json, plots/ and reports/figures/evaluate/.

    ``crawl`` (params.yaml's crawl section) enables the oracle on the simulated world.
    """
    for out in (paths.stage_report("evaluate"), paths.leak_metrics):  # left by a killed run
        remove_stale_tmp(out.parent, [out.name])
    for folder in (paths.evaluate_metrics, paths.plots / "predictions", paths.plots / "spearman_per_user",
                   paths.figures):
        remove_stale_tmp(folder)
    data = load_dataset(paths)
    test = data.split("test")
    if len(test) == 0:
        raise DataError("the test split is empty")
    y_test, users_test = data.targets(test).astype(np.float64), data.users(test)
    predictions, skipped = all_predictions(data, paths, params, crawl)

    results = score(y_test, users_test, predictions, params)
    leak = leak_report(users_test, predictions, params.seed)
    for name, m in results.items():
        log.info("%s: spearman_within %s, ranking_accuracy_within %s, ranking_accuracy_mixed %s", name,
                 m["spearman_within"], m["ranking_accuracy_within"], m["ranking_accuracy_mixed"])
    write_json(paths.stage_report("evaluate"), results)
    write_json(paths.leak_metrics, leak)
    _write_leaderboard(paths.evaluate_metrics, results, leak)
    per_user = {name: metrics.per_user(y_test, pred, users_test, "spearman", params.min_items)
                for name, pred in predictions.items()}
    _write_plots(paths, data, test, y_test, predictions, per_user)
    _write_figures(paths, y_test, users_test, predictions, results, per_user, params)
    return Report(results, leak, skipped)


# What metrics/evaluate/<name>.json keeps: the within-user numbers models are judged by, the
# paper's metric at k = 2, and the leak (few columns: every stage's metrics share one table
# in `dvc metrics show`, whose lines must fit a terminal). reports/evaluate.json has the rest.
LEADERBOARD = ("spearman_within", "pairwise_within")


def leaderboard_row(m: dict[str, Any], leak: dict[str, Any] | None) -> dict[str, Any]:
    """One model's row of `dvc metrics show`, from its full metrics and leak entries."""
    row = {k: m[k] for k in LEADERBOARD}
    mixed = m.get("ranking_accuracy_mixed") or {}
    if mixed:  # the paper's metric at its smallest set size (k = 2 by default)
        k = min(mixed, key=int)
        row[f"rank_acc_mixed_{k}"] = mixed[k]
    if leak is not None:
        row["leak_lift"] = leak["lift"]
    return row


def _write_leaderboard(folder: Path, results: dict[str, dict[str, Any]], leak: dict[str, dict[str, Any]]) -> None:
    for stale in folder.glob("*.json"):  # a model that is gone (outside DVC, which empties the folder)
        if stale.stem not in results:
            stale.unlink()
    for name, m in results.items():
        write_json(folder / f"{name}.json", leaderboard_row(m, leak.get(name)))


def _write_plots(paths: Paths, data: Dataset, test: np.ndarray, y_test: np.ndarray,
                 predictions: dict[str, np.ndarray], per_user: dict[str, dict[Any, float]]) -> None:
    """Tables that dvc.yaml declares as plots: one file per model in each folder."""
    for name, pred in predictions.items():
        with atomic_open(paths.plots / "predictions" / f"{name}.csv", "w") as fh:
            w = csv.writer(fh)
            w.writerow(["shortcode", "user", "actual", "predicted"])
            for row, t, p in zip(test, y_test, pred):
                w.writerow([data.index[row]["shortcode"], data.index[row]["user"], f"{t:.6f}", f"{p:.6f}"])
        with atomic_open(paths.plots / "spearman_per_user" / f"{name}.csv", "w") as fh:
            w = csv.writer(fh)
            w.writerow(["user", "spearman"])
            for user, rho in per_user[name].items():
                w.writerow([user, f"{rho:.6f}"])


def _write_figures(paths: Paths, y_test: np.ndarray, users_test: np.ndarray,
                   predictions: dict[str, np.ndarray], results: dict[str, dict[str, Any]],
                   per_user: dict[str, dict[Any, float]], params: EvaluateParams) -> None:
    """PNG copies under reports/figures/evaluate/ (the learning curves come from the checkpoints)."""
    from imgrate import figures
    from imgrate.models import read_model_file

    histories: dict[str, list[dict[str, float]]] = {}
    losses: dict[str, str] = {}
    kept: dict[str, int] = {}
    for path in sorted(paths.models.glob("*.pt")):
        info, _ = read_model_file(path)
        if info.history:
            histories[path.stem] = info.history
            losses[path.stem] = info.fit.loss
            best = info.summary.get("best_epoch")
            if best is not None:
                kept[path.stem] = int(best)
    out = paths.figures
    counts = {str(u): int(n) for u, n in zip(*np.unique(users_test, return_counts=True))}
    figures.predicted_vs_actual(out / "predicted_vs_actual.png", y_test, predictions, users_test, results)
    figures.spearman_per_user(out / "spearman_per_user.png", per_user, counts)
    figures.learning_curves(out / "learning_curves.png", histories, losses, kept)
    figures.ranking_accuracy(out / "ranking_accuracy.png", results, params.set_sizes)


# ----------------------------------------------------------------------------- printing


def summary_tables(report: Report) -> list[Table]:
    """Rich tables: within-user metrics, the paper's mixed-user metric, the leak report."""
    from rich import box
    from rich.table import Table

    def f(x: Any, digits: int = 3) -> str:
        return "-" if x is None else f"{x:.{digits}f}"

    def ks(d: dict[str, Any]) -> str:  # set sizes in numeric order (JSON sorts "10" before "2")
        return "/".join(f(d[k]) for k in sorted(d, key=int))

    def table(title: str, *cols: str) -> Table:
        t = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  padding=(0, 1), collapse_padding=True)
        for col in cols:
            t.add_column(col, justify="left" if col in ("model", "why") else "right", no_wrap=True)
        return t

    first = next(iter(report.metrics.values()), {})
    sizes = "/".join(sorted(first.get("ranking_accuracy_mixed", {}), key=int))
    within = table("within users (reports/evaluate.json)", "model", "spearman", "95% CI", "pairwise",
                   "ndcg10", f"rank acc {sizes}")
    mixed = table("the paper's mixed-user sets, and over all posts", "model", f"rank acc {sizes}",
                  "spearman", "mse", "mae")
    for name, m in report.metrics.items():
        lo, hi = m["spearman_within_ci"]
        within.add_row(name, f(m["spearman_within"]), f"[{f(lo, 2)}, {f(hi, 2)}]", f(m["pairwise_within"]),
                       f(m["ndcg10_within"]), ks(m["ranking_accuracy_within"]))
        mixed.add_row(name, ks(m["ranking_accuracy_mixed"]), f(m["spearman_global"]), f(m["mse"], 4),
                      f(m["mae"], 4))
    leak = table("leak: the user told from each model's outputs (reports/leak.json)", "model",
                 "user accuracy", "majority rate", "lift")
    for name, v in report.leak.items():
        leak.add_row(name, f(v["user_accuracy"]), f(v["majority_rate"]), f(v["lift"]))
    tables = [within, mixed, leak]
    if report.skipped:
        skipped = table("skipped baselines", "model", "why")
        for name, why in report.skipped.items():
            skipped.add_row(name, why)
        tables.append(skipped)
    return tables


def main() -> None:
    """``python stages/evaluate.py`` and ``imgrate evaluate``: evaluate, then the summary tables."""
    from imgrate.params import load_params
    from imgrate.paths import project_paths
    from imgrate.progress import console, setup_logging

    setup_logging()
    paths = project_paths()
    params = load_params(paths.params, ["evaluate", "crawl"])  # crawl.demo: the oracle
    report = run_stage(params.evaluate, paths, params.crawl)
    for table in report.tables():
        console.print(table)
