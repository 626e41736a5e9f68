"""The evaluate stage: every trained model and every baseline on the same test split.

Reports the paper's ranking accuracy on mixed-user sets (for continuity) and judges models
within users (see imgrate.metrics for why). Every ``models/*.pt`` is scored through the model
registry (:mod:`imgrate.models`), so a model added to the registry is covered without
touching this module; the baselines and bounds come from their own registry
(:data:`imgrate.baselines.BASELINES`: oracle, image_ceiling, ridge_features, ridge_pixels,
linear_regression, user_mean, random).

Outputs: ``metrics/evaluate/<name>.json`` (the few numbers a comparison needs, one file
per model and baseline, so `dvc metrics show` prints a leaderboard), ``reports/evaluate.json``
(every metric of every model, and under ``paired`` the differences between the pairs of
:data:`PAIRS` with paired bootstrap intervals), ``reports/leak.json`` (how well the user can be told from
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
from imgrate.baselines import BASELINES, WORLD_PARAMS, reads_any
from imgrate.dataset import Dataset, load_dataset
from imgrate.entry import Dep, Output, Stage, Summary, clean_outputs
from imgrate.errors import DataError
from imgrate.io import atomic_open, write_json
from imgrate.models import all_models, model_names
from imgrate.params import CrawlParams, EvaluateParams
from imgrate.paths import Paths

if TYPE_CHECKING:
    from rich.table import Table

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What the stage wrote: metrics per model, the leak section, and skipped baselines."""

    metrics: dict[str, dict[str, Any]]
    leak: dict[str, dict[str, Any]]
    skipped: dict[str, str] = field(default_factory=dict)  # baseline -> why it did not run
    paired: dict[str, dict[str, Any]] = field(default_factory=dict)  # "a-b" -> differences (paired_report)

    def tables(self) -> list[Table]:
        return summary_tables(self)


# ------------------------------------------------------------------------- predictions


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
    first (sorted), then the baselines in registry order. ``crawl`` (params.yaml's crawl
    section) lets the baselines that read the simulated world (the oracle) run.
    """
    from imgrate.baselines import Context, baseline_predictions

    model_files = sorted(paths.models.glob("*.pt"))
    if not model_files:
        raise DataError(f"no trained models in {paths.models}: run the train stage first")
    clash = {p.stem for p in model_files} & {*BASELINES, PAIRED}
    if clash:
        raise DataError(f"model file names clash with baseline names: {sorted(clash)}")
    found = model_predictions(data, model_files, paths)
    baselines, skipped = baseline_predictions(Context(data, paths, params.seed, crawl))
    found.update(baselines)
    return {name: np.asarray(pred, dtype=np.float64) for name, pred in found.items()}, skipped


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


# The differences that matter, as (a, b): a model against the next simpler one, the
# features head against the ridge on the same features, and the best model against the
# image-only bound. A pair runs when both sides have predictions.
PAIRS: tuple[tuple[str, str], ...] = (
    ("pretrained", "paper_cnn"),
    ("pretrained", "ridge_features"),
    ("paper_cnn", "linear_regression"),
    ("pretrained", "image_ceiling"),
)
PAIRED = "paired"  # reports/evaluate.json's key for them (no model may take the name)


def paired_report(
    y_true: np.ndarray, users: np.ndarray, predictions: dict[str, np.ndarray], params: EvaluateParams,
    pairs: tuple[tuple[str, str], ...] = PAIRS,
) -> dict[str, dict[str, Any]]:
    """For each pair (a, b) of :data:`PAIRS` present: a's ``spearman_within`` and
    ``pairwise_within`` minus b's, with the 95% interval of a paired bootstrap over users then
    posts (:func:`imgrate.metrics.paired_bootstrap`: both models on the same resamples,
    ``params.n_boot`` of them, seeded with ``params.seed``) and a verdict: which is better
    when the interval excludes 0, else no clear difference."""
    out: dict[str, dict[str, Any]] = {}
    for a, b in pairs:
        if a not in predictions or b not in predictions:
            continue
        diffs = metrics.paired_bootstrap(y_true, predictions[a], predictions[b], users, n_boot=params.n_boot,
                                         seed=params.seed, min_items=params.min_items)
        entry: dict[str, Any] = {"a": a, "b": b, "n_users": diffs["spearman"]["n_users"]}
        for metric, d in diffs.items():
            lo, hi = d["ci"]
            verdict = (f"{a} better" if lo > 0 else f"{b} better" if hi < 0 else "no clear difference")
            entry[f"{metric}_within"] = {"difference": d["difference"], "ci": [lo, hi],
                                         "excludes_0": d["excludes_0"], "verdict": verdict}
        out[f"{a}-{b}"] = metrics.json_safe(entry)
    return out


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


def run_stage(params: EvaluateParams, paths: Paths, crawl: CrawlParams | None = None) -> Summary[Report]:
    """The DVC stage: metrics/evaluate/, reports/evaluate.json, reports/leak.json, plots/ and reports/figures/evaluate/.

    ``crawl`` (params.yaml's crawl section) enables the baselines that read the simulated world.
    """
    clean_outputs(STAGE.outputs(paths, ""))  # left by a killed run
    data = load_dataset(paths)
    test = data.split("test")
    if len(test) == 0:
        raise DataError("the test split is empty")
    y_test, users_test = data.targets(test).astype(np.float64), data.users(test)
    predictions, skipped = all_predictions(data, paths, params, crawl)

    results = score(y_test, users_test, predictions, params)
    paired = paired_report(y_test, users_test, predictions, params)
    leak = leak_report(users_test, predictions, params.seed)
    for name, m in results.items():
        log.info("%s: spearman_within %s, ranking_accuracy_within %s, ranking_accuracy_mixed %s", name,
                 m["spearman_within"], m["ranking_accuracy_within"], m["ranking_accuracy_mixed"])
    write_json(paths.stage_report("evaluate"), {**results, PAIRED: paired})
    write_json(paths.leak_metrics, leak)
    _write_leaderboard(paths.evaluate_metrics, results, leak)
    per_user = {name: metrics.per_user(y_test, pred, users_test, "spearman", params.min_items)
                for name, pred in predictions.items()}
    _write_plots(paths, data, test, y_test, predictions, per_user)
    _write_figures(paths, y_test, users_test, predictions, results, per_user, params)
    report = Report(results, leak, skipped, paired)
    values = {"models": len(predictions) - len(set(predictions) & set(BASELINES)), "baselines":
              len(set(predictions) & set(BASELINES)), "skipped": len(skipped), "n_test": len(test)}
    return Summary("evaluate", values, None, detail=report, printables=list(report.tables()))


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
            losses[path.stem] = str(info.fit.get("loss", "mse"))
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
    if report.paired:
        paired = table("paired differences a - b: 95% paired bootstrap, users then posts (reports/evaluate.json: "
                       "paired)", "a - b", "spearman", "95% CI", "pairwise", "95% CI", "verdict (spearman)")
        for key, p in report.paired.items():
            sp, pw = p["spearman_within"], p["pairwise_within"]
            paired.add_row(key, f(sp["difference"]), f"[{f(sp['ci'][0], 2)}, {f(sp['ci'][1], 2)}]",
                           f(pw["difference"]), f"[{f(pw['ci'][0], 2)}, {f(pw['ci'][1], 2)}]", sp["verdict"])
        tables.append(paired)
    if report.skipped:
        skipped = table("skipped baselines", "model", "why")
        for name, why in report.skipped.items():
            skipped.add_row(name, why)
        tables.append(skipped)
    return tables


def _reads(paths: Paths, item: str) -> list[Dep]:
    """data/dataset, data/features when a model or a baseline reads them, and every model file."""
    from imgrate.features import FEATURES

    models = all_models()
    features = reads_any("features") or any(FEATURES in spec.reads for spec in models)
    return [Dep(paths.rel(paths.dataset)),
            *([Dep(paths.rel(paths.features), "what the models and baselines of kind features read")] if features else []),
            *(Dep(paths.rel(paths.model(spec.name))) for spec in models)]


def _outputs(paths: Paths, item: str) -> list[Output]:
    return [
        Output(paths.stage_report("evaluate"), cache=False, persist=True, note="every metric of every model and baseline"),
        Output(paths.leak_metrics, cache=False, persist=True),
        Output(paths.evaluate_metrics, "metrics", folder=True, cache=False, persist=True,
               note="one small file per model and baseline: `dvc metrics show` prints a leaderboard; written "
                    "atomically at the end: a failing run leaves the last ones"),
        Output(paths.figures, "plots", folder=True,
               note="the PNG figures (matplotlib, DVC-cached): every model in one picture, the kept epoch marked, "
                    "the ranking accuracy; `dvc plots show` puts them on its page as images"),
        Output(paths.plots / "predictions", "plots", folder=True, cache=False,
               note="one file per model and baseline in each folder, so a new model gets its own plots",
               plot={"template": "scatter", "x": "actual", "y": "predicted"}),
        Output(paths.plots / "spearman_per_user", "plots", folder=True, cache=False,
               plot={"template": "bar_horizontal", "x": "spearman", "y": "user"}),
    ]


STAGE = Stage(
    name="evaluate",
    about="every model and baseline on the same test split -> metrics/, plots/, reports/figures/evaluate/",
    sections=("evaluate", "crawl"),  # crawl.demo: the baselines that read the simulated world (the oracle)
    reads=_reads,
    outputs=_outputs,
    run=lambda params, paths: run_stage(params.evaluate, paths, params.crawl),
    params=lambda: ["evaluate", *(WORLD_PARAMS if reads_any("world") else ())],
    imports=lambda item: [f"imgrate.models.{name}" for name in model_names()],  # every model file is rebuilt
)
