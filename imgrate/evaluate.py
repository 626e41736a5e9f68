"""The evaluate stage: every trained model and every baseline on the same test split.

Reports the paper's ranking accuracy on mixed-user sets (for continuity) and judges models
within users (see imgrate.metrics for why). Baselines:

- ``random``: seeded noise; sits at chance everywhere.
- ``user_mean``: each user's mean training target. It never looks at pixels, so it must
  sit at chance within users; on mixed sets it shows how much the paper's metric rewards
  recognising the photographer.
- ``linear_regression``: the paper's scikit-learn LinearRegression on flattened pixels.
- ``ridge_pixels``: the same features with cross-validated ridge regularisation.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from imgrate import metrics
from imgrate.dataset import Dataset, load_dataset, to_tensor_batch
from imgrate.errors import DataError
from imgrate.io import atomic_open, write_json
from imgrate.models import load_checkpoint
from imgrate.params import EvaluateParams
from imgrate.paths import Paths

log = logging.getLogger(__name__)


def _pixels(data: Dataset, rows: np.ndarray) -> np.ndarray:
    return data.images[rows].reshape(len(rows), -1).astype(np.float32) / 255.0


def baseline_predictions(data: Dataset, seed: int) -> dict[str, np.ndarray]:
    """Test-split predictions of every baseline, fitted on the train split."""
    from sklearn.linear_model import LinearRegression, RidgeCV

    train, test = data.split("train"), data.split("test")
    y_train = data.targets(train)
    users_train, users_test = data.users(train), data.users(test)
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {"random": rng.normal(size=len(test))}

    means = {u: float(y_train[users_train == u].mean()) for u in np.unique(users_train)}
    fallback = float(y_train.mean())
    out["user_mean"] = np.array([means.get(u, fallback) for u in users_test])

    x_train, x_test = _pixels(data, train), _pixels(data, test)
    out["linear_regression"] = LinearRegression().fit(x_train, y_train).predict(x_test)
    ridge = RidgeCV(alphas=np.logspace(-1, 5, 13)).fit(x_train, y_train)
    log.info("ridge_pixels: alpha %.3g", ridge.alpha_)
    out["ridge_pixels"] = ridge.predict(x_test)
    return out


def model_predictions(data: Dataset, model_files: list[Path]) -> dict[str, np.ndarray]:
    """Test-split predictions of each saved model (on the CPU: evaluation is small)."""
    import torch

    from imgrate.train import predict_array

    test = data.split("test")
    x = torch.from_numpy(to_tensor_batch(data.images[test]))
    out: dict[str, np.ndarray] = {}
    for path in model_files:
        model, ckpt = load_checkpoint(path)
        size = ckpt.get("preprocess", {}).get("size")
        if size != data.meta["size"]:
            raise DataError(f"{path.name} was trained on {size}px images but the dataset has {data.meta['size']}px")
        out[path.stem] = predict_array(model, x, torch.device("cpu"))
    return out


def run_stage(params: EvaluateParams, paths: Paths) -> dict[str, Any]:
    """The DVC stage: metrics/evaluate.json plus the plot tables under plots/."""
    data = load_dataset(paths)
    test = data.split("test")
    if len(test) == 0:
        raise DataError("the test split is empty")
    y_test, users_test = data.targets(test), data.users(test)
    model_files = sorted(paths.models.glob("*.pt"))
    if not model_files:
        raise DataError(f"no trained models in {paths.models}: run the train stage first")
    predictions = {**model_predictions(data, model_files), **baseline_predictions(data, params.seed)}

    results: dict[str, Any] = {}
    for name, pred in predictions.items():
        m = metrics.evaluate_predictions(
            y_test, pred, users_test, set_sizes=params.set_sizes, n_sets=params.n_sets,
            seed=params.seed, n_boot=params.n_boot, min_items=params.min_items,
        )
        leak = metrics.leak_score(pred, users_test, seed=params.seed)
        m["leak_user_accuracy"] = round(float(leak["accuracy"]), 6)
        m["leak_majority_rate"] = round(float(leak["majority"]), 6)
        results[name] = m
        log.info("%s: spearman_within %s, ranking_accuracy_mixed %s", name,
                 m["spearman_within"], m["ranking_accuracy_mixed"])
    write_json(paths.stage_metrics("evaluate"), results)
    _write_plots(paths, data, test, y_test, users_test, predictions, params.min_items)
    return results


def _write_plots(paths: Paths, data: Dataset, test: np.ndarray, y_test: np.ndarray,
                 users_test: np.ndarray, predictions: dict[str, np.ndarray], min_items: int) -> None:
    """Tables that dvc.yaml declares as plots: predicted vs actual, within-user Spearman per user."""
    with atomic_open(paths.plots / "predictions.csv", "w") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "shortcode", "user", "actual", "predicted"])
        for name, pred in predictions.items():
            for row, t, p in zip(test, y_test, pred):
                w.writerow([name, data.index[row]["shortcode"], data.index[row]["user"], f"{t:.6f}", f"{p:.6f}"])
    with atomic_open(paths.plots / "spearman_per_user.csv", "w") as fh:
        w = csv.writer(fh)
        w.writerow(["model", "user", "spearman"])
        for name, pred in predictions.items():
            for user, rho in metrics.per_user(y_test, pred, users_test, "spearman", min_items).items():
                w.writerow([name, user, f"{rho:.6f}"])
