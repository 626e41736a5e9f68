"""Evaluate's baselines and bounds, declared once: the registry :data:`BASELINES`.

A :class:`Baseline` is added like a model: one entry here, what it reads, a function that
predicts the test split, a docs row. The evaluate stage runs every entry on the same test
split as the trained models, in registry order (bounds first, then the baselines from the
strongest expected to chance), and reports one that cannot run (no features, not the
simulated world) with the reason instead. What the entries read decides evaluate's
dependencies in dvc.yaml (:mod:`imgrate.lineage`): ``features`` the featurize stage's
output, ``world`` the params of the simulated world (:data:`imgrate.demo.world.PARAMS_READ`).

- ``oracle`` (bound, simulated world only): the true appeal of each photo, recomputed from
  the world's seed (never read from crawled data), mapped to the target scale by a linear fit
  on the training split: what no model can beat. It includes a part no photo shows (the
  simulator adds noise of sd 0.45 to the visible appeal), so an image model cannot reach it.
- ``image_ceiling`` (bound, simulated world only): the visible appeal, the part of the true
  appeal that the photo shows (before that noise), recomputed and mapped the same way: what
  an image-only model could at best learn (up to the likes' own noise, which both bounds share).
- ``ridge_features``: cross-validated ridge on the frozen backbone features of the featurize
  stage (standardised robustly with the training split's statistics: imgrate.features.robust_spread,
  z-scores clipped).
- ``ridge_pixels``: cross-validated ridge on the flattened pixels.
- ``linear_regression``: the paper's scikit-learn LinearRegression on flattened pixels,
  unregularised, as the paper ran it.
- ``user_mean``: each user's mean training target. It never looks at pixels, so it must sit
  at chance within users (a leakage probe); on mixed sets it shows how much the paper's
  metric rewards recognising the photographer.
- ``random``: seeded noise around the training mean; chance everywhere.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from imgrate.dataset import Dataset
from imgrate.demo.world import PARAMS_READ, DemoWorld
from imgrate.errors import DataError
from imgrate.paths import Paths

if TYPE_CHECKING:
    from imgrate.params import CrawlParams

log = logging.getLogger(__name__)

Reads = Literal["targets", "users", "pixels", "features", "world"]


class Skip(Exception):
    """A baseline that cannot run on this data (the reason is reported, not an error)."""


@dataclass
class Context:
    """What a baseline may read: the dataset, its train and test rows, the evaluate seed, and
    (lazily, each once) the pixels, the features and the simulated world."""

    data: Dataset
    paths: Paths
    seed: int
    crawl: CrawlParams | None = None
    train: np.ndarray = field(init=False)
    test: np.ndarray = field(init=False)
    y_train: np.ndarray = field(init=False)
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.train, self.test = self.data.split("train"), self.data.split("test")
        if len(self.train) == 0:
            raise DataError("the train split is empty: the baselines have nothing to fit")
        self.y_train = self.data.targets(self.train)

    def pixels(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) flattened pixels in [0, 1], float32."""
        if "pixels" not in self._cache:
            flat = lambda rows: np.asarray(self.data.images[rows].reshape(len(rows), -1), np.float32) / 255.0  # noqa: E731
            self._cache["pixels"] = (flat(self.train), flat(self.test))
        return self._cache["pixels"]  # type: ignore[no-any-return]

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, test) features of the featurize stage, float64; :class:`Skip` without any."""
        if "features" not in self._cache:
            from imgrate.features import FEATURES, META

            if not (self.paths.features / META).exists():
                raise Skip(f"no features in {self.paths.features} (the featurize stage)")
            _, x = FEATURES.load(self.data, self.paths)
            self._cache["features"] = (x[self.train].astype(np.float64), x[self.test].astype(np.float64))
        return self._cache["features"]  # type: ignore[no-any-return]

    def world(self) -> DemoWorld:
        """The simulated world the posts were crawled from; :class:`Skip` for another source."""
        if "world" not in self._cache:
            if self.crawl is None or self.crawl.source != "demo":
                raise Skip("only on the simulated world (crawl.source: demo)")
            users = sorted({str(r["user"]).lower() for r in self.data.index})
            self._cache["world"] = DemoWorld(users, self.crawl.demo)
        return self._cache["world"]  # type: ignore[no-any-return]

    def on_target_scale(self, a_train: np.ndarray, a_test: np.ndarray) -> np.ndarray:
        """``a_test`` mapped to the target's scale by a positive-slope line fitted on the train
        split (no ranking changes; MSE and MAE then mean something)."""
        y = self.y_train.astype(np.float64)
        ok = len(a_train) > 1 and np.ptp(a_train) > 0
        slope, intercept = np.polyfit(a_train, y, 1) if ok else (1.0, 0.0)
        return np.asarray(intercept + max(float(slope), 1e-9) * a_test, dtype=np.float64)


@dataclass(frozen=True)
class Baseline:
    """One entry of the registry: ``predict(context)`` gives the test split's predictions
    (or raises :class:`Skip`); ``reads`` names what it reads; a ``bound`` is an upper limit
    to read the models against, not a competitor."""

    name: str
    reads: tuple[Reads, ...]
    predict: Callable[[Context], np.ndarray]
    about: str
    bound: bool = False


def reproducible_fit(estimator: Any, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    """Fit and predict in float64 on one BLAS thread, so that the same inputs give the same
    predictions to the last written digit: a threaded float32 solve of the pixel baselines'
    underdetermined systems (7,500 columns, ~1,650 rows) changed in the 6th decimal between runs."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        estimator.fit(np.asarray(x_train, dtype=np.float64), np.asarray(y_train, dtype=np.float64))
        return np.asarray(estimator.predict(np.asarray(x_test, dtype=np.float64)), dtype=np.float64)


def ridge_cv(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, name: str) -> np.ndarray:
    """Cross-validated ridge (alphas 0.1 .. 1e5), fitted reproducibly."""
    from sklearn.linear_model import RidgeCV

    ridge = RidgeCV(alphas=np.logspace(-1, 5, 13))
    pred = reproducible_fit(ridge, x_train, y_train, x_test)
    log.info("%s: alpha %.3g", name, ridge.alpha_)
    return pred


def _from_world(ctx: Context, appeal_of: Callable[[DemoWorld, str], float]) -> np.ndarray:
    """A bound read from the simulated world: ``appeal_of(world, shortcode)`` of each post,
    mapped to the target scale by a line fitted on the train split."""
    try:
        world = ctx.world()

        def appeal(rows: np.ndarray) -> np.ndarray:
            return np.array([appeal_of(world, ctx.data.index[i]["shortcode"]) for i in rows], dtype=np.float64)

        return ctx.on_target_scale(appeal(ctx.train), appeal(ctx.test))
    except DataError as err:  # e.g. crawl.demo changed since the posts were crawled
        raise Skip(str(err)) from None


def _oracle(ctx: Context) -> np.ndarray:
    return _from_world(ctx, DemoWorld.appeal)


def _image_ceiling(ctx: Context) -> np.ndarray:
    return _from_world(ctx, DemoWorld.visible_appeal)


def _ridge_features(ctx: Context) -> np.ndarray:
    from imgrate.features import robust_spread, standardise

    x_train, x_test = ctx.features()
    mean, spread = x_train.mean(axis=0), robust_spread(x_train.std(axis=0))
    return ridge_cv(standardise(x_train, mean, spread), ctx.y_train, standardise(x_test, mean, spread),
                    "ridge_features")


def _ridge_pixels(ctx: Context) -> np.ndarray:
    x_train, x_test = ctx.pixels()
    return ridge_cv(x_train, ctx.y_train, x_test, "ridge_pixels")


def _linear_regression(ctx: Context) -> np.ndarray:
    from sklearn.linear_model import LinearRegression

    x_train, x_test = ctx.pixels()
    return reproducible_fit(LinearRegression(), x_train, ctx.y_train, x_test)


def _user_mean(ctx: Context) -> np.ndarray:
    users_train, users_test = ctx.data.users(ctx.train), ctx.data.users(ctx.test)
    means = {u: float(ctx.y_train[users_train == u].mean()) for u in np.unique(users_train)}
    fallback = float(ctx.y_train.mean())  # a user with no training posts
    return np.array([means.get(u, fallback) for u in users_test], dtype=np.float64)


def _random(ctx: Context) -> np.ndarray:
    rng = np.random.default_rng(ctx.seed)
    return float(ctx.y_train.mean()) + float(ctx.y_train.std()) * rng.normal(size=len(ctx.test))


# Report order: the bounds, then the baselines from the strongest expected to chance.
BASELINES: dict[str, Baseline] = {b.name: b for b in (
    Baseline("oracle", ("world",), _oracle, "the simulated world's true appeal of each photo", bound=True),
    Baseline("image_ceiling", ("world",), _image_ceiling,
             "the simulated world's visible appeal: what the photo shows (an image-only bound)", bound=True),
    Baseline("ridge_features", ("features",), _ridge_features, "cross-validated ridge on the backbone features"),
    Baseline("ridge_pixels", ("pixels",), _ridge_pixels, "cross-validated ridge on the flattened pixels"),
    Baseline("linear_regression", ("pixels",), _linear_regression, "the paper's baseline: least squares on pixels"),
    Baseline("user_mean", ("users",), _user_mean, "each user's mean training target (a leakage probe)"),
    Baseline("random", ("targets",), _random, "seeded noise around the training mean (chance)"),
)}


def reads_any(kind: Reads) -> bool:
    """Whether some baseline reads ``kind`` (evaluate's dependencies follow)."""
    return any(kind in b.reads for b in BASELINES.values())


# what a baseline that reads the world depends on: the source, and the world's own params
WORLD_PARAMS = ("crawl.source", *PARAMS_READ)


def baseline_predictions(ctx: Context) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(predictions, skipped): every baseline's test-split predictions in registry order, and
    the reason of each that could not run."""
    found: dict[str, np.ndarray] = {}
    skipped: dict[str, str] = {}
    for name, baseline in BASELINES.items():
        try:
            found[name] = np.asarray(baseline.predict(ctx), dtype=np.float64)
        except Skip as why:
            skipped[name] = str(why)
            log.info("baseline %s skipped: %s", name, why)
    return found, skipped
