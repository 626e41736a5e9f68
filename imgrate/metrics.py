"""Ranking metrics for photo-popularity models: the paper's metric and honest ones.

Pure functions on 1-D numpy arrays, no I/O. Conventions shared by every function:

- ``y_true``: targets (e.g. likes divided by the user's most-liked post), ``y_pred``: model
  scores, ``users``: the photographer of each item (strings or integers), all the same
  length. Non-finite values raise :class:`ValueError`: a model that outputs NaN should
  fail loudly, not rank NaN last.
- Higher score = more popular. Only the order of ``y_pred`` matters for every metric except
  :func:`mse` and :func:`mae`.

**The leak in the paper's metric** (notes/model.md). The founding paper's *ranking
accuracy* draws sets of k test items across all users. When users differ in their target
distribution, a model that only recognises the photographer scores well above chance on
such mixed sets without knowing anything about the photo. So this module reports the
paper's metric on mixed sets (for continuity) *and* within one user
(``groups=users``), and within-user Spearman, Kendall, pairwise accuracy and NDCG, which a
user-mean predictor cannot beat chance on. :func:`leak_score` measures how well the user
can be recovered from a model's outputs alone.

**Ties.** Rankings use a stable ascending argsort: items with equal values keep their
order of appearance. In :func:`exact_position_share` this applies to both the true and the
predicted order, so ties are broken the same way on both sides (a set whose true values
and predictions are all equal scores 1.0). Random sets come in a random order, so over many
sets a constant predictor scores chance. The correlation metrics use average ranks
(Spearman, Kendall tau-b), pairwise accuracy counts a tied prediction as half a correct
pair, and NDCG averages the gains over tied predictions (the expectation over random tie
breaks, as ``sklearn.metrics.ndcg_score`` does).

**NDCG gains.** Each user's true targets are min-max scaled to [0, 1] within the user (the
least popular item gains 0, the most popular 1), linear gains (not ``2**g - 1``) and
discounts ``1 / log2(position + 1)``. Min-max keeps the gain proportional to the target
(likes relative to the user's range) while making users comparable; rank gains would
throw away how much more popular one photo is than another.

**Undefined values.** A user whose true targets are all equal has nothing to rank: the
within-user metrics drop that user (no value in :func:`per_user`). Constant *predictions*
are defined: Spearman and Kendall 0, pairwise accuracy 0.5.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

__all__ = [
    "bootstrap_ci",
    "evaluate_predictions",
    "exact_position_share",
    "json_safe",
    "kendall_within",
    "leak_score",
    "mae",
    "mse",
    "ndcg_within",
    "paired_bootstrap",
    "pairwise_within",
    "per_user",
    "ranking_accuracies",
    "ranking_accuracy",
    "spearman_global",
    "spearman_within",
]

WithinMetric = Literal["spearman", "kendall", "pairwise", "ndcg"]
_WITHIN_METRICS: tuple[str, ...] = ("spearman", "kendall", "pairwise", "ndcg")
_PAIR_BLOCK = 1024  # rows per block in the O(n^2) pairwise count (bounds memory)


# --------------------------------------------------------------------------- helpers


def _as_float(name: str, x: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    t = _as_float("y_true", y_true)
    p = _as_float("y_pred", y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    return t, p


def _as_groups(name: str, groups: ArrayLike, n: int) -> NDArray[Any]:
    g = np.asarray(groups)
    if g.ndim != 1 or g.shape[0] != n:
        raise ValueError(f"{name} must be 1-D with {n} entries, got shape {g.shape}")
    return g


def _group_indices(groups: NDArray[Any]) -> tuple[NDArray[Any], list[NDArray[np.intp]]]:
    """Distinct groups (sorted) and, for each, the indices of its items (ascending)."""
    uniq, codes = np.unique(groups, return_inverse=True)
    codes = codes.reshape(-1)
    order = np.argsort(codes, kind="stable")
    bounds = np.cumsum(np.bincount(codes, minlength=len(uniq)))[:-1]
    return uniq, np.split(order, bounds)


def _py_key(u: Any) -> Any:
    """A numpy scalar as the matching Python scalar (JSON-friendly dict keys)."""
    return u.item() if isinstance(u, np.generic) else u


def _rng(rng: np.random.Generator | int | None) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _sample_subsets(
    rng: np.random.Generator, pop_sizes: NDArray[np.int64], k: int
) -> NDArray[np.int64]:
    """One uniform random k-subset of ``range(pop_sizes[r])`` per row r, in random order.

    Floyd's algorithm vectorised over rows: O(rows * k^2), whatever the population size.
    Shape (rows, k). Every ``pop_sizes[r]`` must be >= k.
    """
    m = pop_sizes.shape[0]
    out = np.empty((m, k), dtype=np.int64)
    for i in range(k):
        j = pop_sizes - k + i  # Floyd: draw t in [0, j]; if taken, take j (never taken yet)
        t = rng.integers(0, j + 1)
        if i:
            taken = (out[:, :i] == t[:, None]).any(axis=1)
            t = np.where(taken, j, t)
        out[:, i] = t
    # Floyd's insertion order is not uniform (j tends to come last); shuffle each row so
    # that stable tie-breaking by position within a set is random.
    return rng.permuted(out, axis=1)


# ------------------------------------------------------------ the paper's ranking metric


def exact_position_share(y_true_set: ArrayLike, y_pred_set: ArrayLike) -> float:
    """Share of a set's items whose predicted position equals their true position.

    The per-set core of the founding paper's ranking accuracy: sort the set by true value
    and by predicted value (both ascending, stable: ties keep their order within the set)
    and count the positions holding the same item in both orders. Paper's example: true
    order ``[0, 4, 2, 3, 1]`` against predicted ``[0, 1, 2, 3, 4]`` gives 3/5 = 0.6.
    """
    t, p = _pair(y_true_set, y_pred_set)
    if t.size == 0:
        return math.nan
    same = np.argsort(t, kind="stable") == np.argsort(p, kind="stable")
    return float(same.mean())


def ranking_accuracy(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    k: int,
    n_sets: int,
    rng: np.random.Generator | int | None,
    groups: ArrayLike | None = None,
) -> float:
    """The founding paper's ranking accuracy: mean :func:`exact_position_share` over sets.

    Draws ``n_sets`` random sets of ``k`` distinct items. With ``groups=None`` a set is
    drawn from the whole array ("mixed" sets: the paper's metric, which rewards merely
    recognising the user). With ``groups=users`` each set lies within one group: a group
    is picked with probability proportional to its number of items among the groups that
    have at least ``k`` items (smaller groups are skipped), then ``k`` of its items
    uniformly. Chance level is 1/k for continuous targets.

    The sets depend only on ``rng``, ``k``, ``len(y_true)`` and ``groups``, never on the
    values, so the same seed gives every model the same sets. Returns nan when no set can
    be drawn (fewer than ``k`` items, no qualifying group, ``n_sets == 0``). Vectorised:
    10,000 sets of 10 from 10,000 items take a few milliseconds.
    """
    t, p = _pair(y_true, y_pred)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n_sets < 0:
        raise ValueError(f"n_sets must be >= 0, got {n_sets}")
    gen = _rng(rng)
    n = t.shape[0]
    if n_sets == 0:
        return math.nan
    if groups is None:
        if n < k:
            return math.nan
        idx = _sample_subsets(gen, np.full(n_sets, n, dtype=np.int64), k)
    else:
        g = _as_groups("groups", groups, n)
        _, members = _group_indices(g)
        members = [m for m in members if m.size >= k]
        if not members:
            return math.nan
        sizes = np.array([m.size for m in members], dtype=np.int64)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        flat = np.concatenate(members)
        which = gen.choice(len(members), size=n_sets, p=sizes / sizes.sum())
        local = _sample_subsets(gen, sizes[which], k)
        idx = flat[starts[which][:, None] + local]
    same = np.argsort(t[idx], axis=1, kind="stable") == np.argsort(p[idx], axis=1, kind="stable")
    return float(same.mean())


def ranking_accuracies(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    set_sizes: Sequence[int],
    n_sets: int,
    seed: int,
    groups: ArrayLike | None = None,
) -> dict[str, float]:
    """:func:`ranking_accuracy` for each k in ``set_sizes``, keyed by ``str(k)``.

    Each k gets its own generator seeded from ``(seed, k)``, so the sets for one k do not
    depend on which other sizes are asked for, and every model evaluated with the same
    seed (on the same items and groups) is scored on identical sets.
    """
    return {
        str(k): ranking_accuracy(
            y_true, y_pred, k, n_sets, np.random.default_rng([seed, k]), groups=groups
        )
        for k in set_sizes
    }


# ------------------------------------------------------------------ per-user metrics


def _spearman_one(t: NDArray[np.float64], p: NDArray[np.float64]) -> float:
    if np.ptp(t) == 0:
        return math.nan
    if np.ptp(p) == 0:
        return 0.0
    rt = stats.rankdata(t)
    rp = stats.rankdata(p)
    rt -= rt.mean()
    rp -= rp.mean()
    return float(np.clip((rt @ rp) / math.sqrt((rt @ rt) * (rp @ rp)), -1.0, 1.0))


def _kendall_one(t: NDArray[np.float64], p: NDArray[np.float64]) -> float:
    if np.ptp(t) == 0:
        return math.nan
    if np.ptp(p) == 0:
        return 0.0
    return float(stats.kendalltau(t, p).statistic)  # tau-b


def _pairwise_one(t: NDArray[np.float64], p: NDArray[np.float64]) -> float:
    pairs = 0
    score = 0.0
    for s in range(0, t.size, _PAIR_BLOCK):
        dt = np.sign(t[s : s + _PAIR_BLOCK, None] - t[None, :])
        dp = np.sign(p[s : s + _PAIR_BLOCK, None] - p[None, :])
        valid = dt != 0
        pairs += int(valid.sum())
        score += float(((dt == dp) & valid).sum()) + 0.5 * float(((dp == 0) & valid).sum())
    return score / pairs if pairs else math.nan  # each pair counted twice: ratio unchanged


def _ndcg_one(t: NDArray[np.float64], p: NDArray[np.float64], k: int) -> float:
    span = np.ptp(t)
    if span == 0:
        return math.nan
    gains = (t - t.min()) / span
    n = t.size
    disc = 1.0 / np.log2(np.arange(2, n + 2))
    disc[min(k, n) :] = 0.0
    idcg = float(np.sort(gains)[::-1] @ disc)
    order = np.argsort(-p, kind="stable")
    sp, sg = p[order], gains[order]
    starts = np.flatnonzero(np.r_[True, sp[1:] != sp[:-1]])  # tie groups, best first
    sizes = np.diff(np.r_[starts, n])
    mean_gain = np.add.reduceat(sg, starts) / sizes
    dcg = float(mean_gain @ np.add.reduceat(disc, starts))
    return dcg / idcg


def per_user(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    users: ArrayLike,
    metric: WithinMetric = "spearman",
    min_items: int = 5,
    k: int = 10,
) -> dict[Any, float]:
    """Per-user value of a within-user metric: ``{user: value}``, sorted by user.

    ``metric`` is ``"spearman"``, ``"kendall"`` (tau-b), ``"pairwise"`` or ``"ndcg"``
    (NDCG@``k``; ``k`` is ignored by the others). Only users with at least ``min_items``
    items and non-constant true targets appear. User keys are Python scalars (numpy
    scalars converted), so the dict can be dumped to JSON or plotted directly.
    """
    t, p = _pair(y_true, y_pred)
    g = _as_groups("users", users, t.shape[0])
    if metric not in _WITHIN_METRICS:
        raise ValueError(f"metric must be one of {_WITHIN_METRICS}, got {metric!r}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    one = {
        "spearman": _spearman_one,
        "kendall": _kendall_one,
        "pairwise": _pairwise_one,
        "ndcg": lambda a, b: _ndcg_one(a, b, k),
    }[metric]
    out: dict[Any, float] = {}
    if t.size == 0:
        return out
    uniq, members = _group_indices(g)
    for u, idx in zip(uniq, members):
        if idx.size < min_items:
            continue
        v = one(t[idx], p[idx])
        if not math.isnan(v):
            out[_py_key(u)] = v
    return out


def _mean_or_nan(values: Mapping[Any, float]) -> float:
    return float(np.mean(list(values.values()))) if values else math.nan


def spearman_within(
    y_true: ArrayLike, y_pred: ArrayLike, users: ArrayLike, min_items: int = 5
) -> float:
    """Spearman correlation within each user, averaged over users (each user weighs 1).

    Users with fewer than ``min_items`` items or constant targets are skipped; constant
    predictions count 0. nan when no user qualifies. Chance (and user-mean predictor): 0.
    """
    return _mean_or_nan(per_user(y_true, y_pred, users, "spearman", min_items))


def kendall_within(
    y_true: ArrayLike, y_pred: ArrayLike, users: ArrayLike, min_items: int = 5
) -> float:
    """Kendall tau-b within each user, averaged over users; as :func:`spearman_within`."""
    return _mean_or_nan(per_user(y_true, y_pred, users, "kendall", min_items))


def pairwise_within(
    y_true: ArrayLike, y_pred: ArrayLike, users: ArrayLike, min_items: int = 5
) -> float:
    """Share of correctly ordered pairs within each user, averaged over users.

    Pairs are the within-user pairs with distinct true values; a pair with tied
    predictions counts 0.5. Chance (and constant predictions): 0.5. Equals the expected
    within-user ranking accuracy at k = 2 when users have equal item counts.
    """
    return _mean_or_nan(per_user(y_true, y_pred, users, "pairwise", min_items))


def ndcg_within(
    y_true: ArrayLike, y_pred: ArrayLike, users: ArrayLike, k: int = 10, min_items: int = 5
) -> float:
    """NDCG@k within each user (gains: targets min-max scaled per user), averaged."""
    return _mean_or_nan(per_user(y_true, y_pred, users, "ndcg", min_items, k=k))


# -------------------------------------------------------------------- global metrics


def spearman_global(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Spearman correlation over all items (mixes users: inflated by the user leak).

    0 for constant predictions, nan for constant targets or fewer than 2 items.
    """
    t, p = _pair(y_true, y_pred)
    if t.size < 2:
        return math.nan
    return _spearman_one(t, p)


def mse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean squared error; nan for empty input."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean((t - p) ** 2)) if t.size else math.nan


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error; nan for empty input."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p))) if t.size else math.nan


# ------------------------------------------------------------------------- intervals


def bootstrap_ci(
    per_user_values: Mapping[Any, float] | ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over users.

    ``per_user_values`` is a :func:`per_user` dict or an array of per-user values; nan
    values are dropped. Resamples users with replacement ``n_boot`` times and returns the
    ``alpha/2`` and ``1 - alpha/2`` percentiles of the resampled means. ``(nan, nan)``
    with no values; ``(v, v)`` with a single one.
    """
    if isinstance(per_user_values, Mapping):
        vals = np.asarray(list(per_user_values.values()), dtype=np.float64)
    else:
        vals = np.asarray(per_user_values, dtype=np.float64).reshape(-1)
    vals = vals[~np.isnan(vals)]
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if vals.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = vals[rng.integers(0, vals.size, size=(n_boot, vals.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def _spearman_rows(t: NDArray[np.float64], p: NDArray[np.float64]) -> NDArray[np.float64]:
    """:func:`_spearman_one` of each row of two (rows, n) arrays: nan where a row's targets are
    constant, 0 where its predictions are."""
    rt = stats.rankdata(t, axis=1)
    rp = stats.rankdata(p, axis=1)
    rt -= rt.mean(axis=1, keepdims=True)
    rp -= rp.mean(axis=1, keepdims=True)
    num = (rt * rp).sum(axis=1)
    den = np.sqrt((rt * rt).sum(axis=1) * (rp * rp).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho: NDArray[np.float64] = np.clip(num / den, -1.0, 1.0)
    rho[np.ptp(p, axis=1) == 0] = 0.0
    rho[np.ptp(t, axis=1) == 0] = math.nan
    return rho


def _pairwise_rows(t: NDArray[np.float64], p: NDArray[np.float64]) -> NDArray[np.float64]:
    """:func:`_pairwise_one` of each row of two (rows, n) arrays (nan where no pair differs)."""
    out = np.empty(t.shape[0], dtype=np.float64)
    block = max(1, (1 << 22) // max(1, t.shape[1] ** 2))  # rows per block: ~4M pair cells
    for s in range(0, t.shape[0], block):
        tb, pb = t[s : s + block], p[s : s + block]
        dt = np.sign(tb[:, :, None] - tb[:, None, :])
        dp = np.sign(pb[:, :, None] - pb[:, None, :])
        valid = dt != 0
        pairs = valid.sum(axis=(1, 2))
        score = ((dt == dp) & valid).sum(axis=(1, 2)) + 0.5 * ((dp == 0) & valid).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s : s + block] = np.where(pairs > 0, score / np.maximum(pairs, 1), math.nan)
    return out


_ROWS = {"spearman": _spearman_rows, "pairwise": _pairwise_rows}


def paired_bootstrap(
    y_true: ArrayLike,
    pred_a: ArrayLike,
    pred_b: ArrayLike,
    users: ArrayLike,
    metrics: Sequence[Literal["spearman", "pairwise"]] = ("spearman", "pairwise"),
    n_boot: int = 1000,
    seed: int = 0,
    min_items: int = 5,
    alpha: float = 0.05,
) -> dict[str, dict[str, Any]]:
    """The difference a - b of a within-user metric of two models on the same items, with a
    paired, hierarchical percentile bootstrap interval.

    Each replicate resamples the users (with replacement) and, within each user, the user's
    items (with replacement); both models are scored on the *same* resampled items, so what
    the two share (which photos are easy, which users are noisy) cancels in the difference.
    The users are those :func:`per_user` keeps (at least ``min_items`` items, targets not
    constant); a user drawn twice in one replicate keeps that replicate's item resample; a
    resample whose targets are all equal drops that user from the replicate's mean.

    Returns, per metric (``"spearman"``, ``"pairwise"``): ``difference`` (the plain within-user
    metric of a minus that of b), ``ci`` ([lo, hi], the ``alpha/2`` and ``1 - alpha/2``
    percentiles), ``excludes_0`` (the interval lies wholly above or below 0) and ``n_users``.
    The replicates depend on ``seed``, the items and the users only, never on the scores, so
    every pair evaluated with one seed is resampled alike. Identical models give ``[0, 0]``.
    """
    t, a = _pair(y_true, pred_a)
    _, b = _pair(y_true, pred_b)
    if b.shape != t.shape:
        raise ValueError(f"pred_b has {b.shape[0]} items, y_true {t.shape[0]}")
    g = _as_groups("users", users, t.shape[0])
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    for m in metrics:
        if m not in _ROWS:
            raise ValueError(f"metric must be one of {tuple(_ROWS)}, got {m!r}")
    _, members = _group_indices(g) if t.size else (None, [])
    kept = [idx for idx in members if idx.size >= min_items and np.ptp(t[idx]) > 0]
    rng = np.random.default_rng(seed)
    draws = [idx[rng.integers(0, idx.size, size=(n_boot, idx.size))] for idx in kept]  # (n_boot, n_u) each
    pick = rng.integers(0, len(kept), size=(n_boot, len(kept))) if kept else np.empty((n_boot, 0), np.int64)
    out: dict[str, dict[str, Any]] = {}
    for m in metrics:
        rows = _ROWS[m]
        plain = {"spearman": _spearman_one, "pairwise": _pairwise_one}[m]
        diff_users = np.array([plain(t[idx], a[idx]) - plain(t[idx], b[idx]) for idx in kept])
        # (users, n_boot): each user's difference on each replicate's item resample
        boot = np.array([rows(t[d], a[d]) - rows(t[d], b[d]) for d in draws]).reshape(len(kept), n_boot)
        chosen = boot[pick, np.arange(n_boot)[:, None]]  # (n_boot, users drawn)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Mean of empty slice")
            means = np.nanmean(chosen, axis=1) if kept else np.full(n_boot, math.nan)
        means = means[np.isfinite(means)]
        if diff_users.size == 0 or means.size == 0:
            lo = hi = diff = math.nan
        else:
            diff = float(diff_users.mean())
            lo, hi = (float(q) for q in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
        out[m] = {"difference": diff, "ci": [lo, hi], "excludes_0": bool(lo > 0 or hi < 0),
                  "n_users": len(kept)}
    return out


# ------------------------------------------------------------------------------ leak


def leak_score(
    y_pred: ArrayLike, users: ArrayLike, seed: int = 0, n_splits: int = 5
) -> dict[str, float]:
    """How well the user can be predicted from a model's outputs alone.

    Out-of-fold accuracy of a decision tree on the prediction value (``y_pred`` may also
    be 2-D: one row of outputs per item). No depth limit, leaves of at least
    max(5, n/200) items: a 1-D tree is a set of thresholds, so it catches users that
    differ in level or in spread. Stratified k-fold (``n_splits`` folds, fewer when the
    largest user has fewer items; users smaller than the fold count make scikit-learn
    stratify as well as it can). The baseline ``majority`` is the share of the most
    frequent user: what always guessing that user scores. A model whose outputs carry no
    user information has ``lift`` ~0; negative values are the tree overfitting noise (down
    to about -0.1 on small, unbalanced test sets of a few hundred items). The user-mean
    predictor has ``lift`` near ``1 - majority``.

    Returns ``{"accuracy": .., "majority": .., "lift": accuracy - majority}``.
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.tree import DecisionTreeClassifier

    x = np.asarray(y_pred, dtype=np.float64)
    x = x.reshape(-1, 1) if x.ndim == 1 else x
    if x.ndim != 2 or not np.all(np.isfinite(x)):
        raise ValueError("y_pred must be 1-D or 2-D and finite")
    g = _as_groups("users", users, x.shape[0])
    n = x.shape[0]
    if n == 0:
        return {"accuracy": math.nan, "majority": math.nan, "lift": math.nan}
    _, codes, counts = np.unique(g, return_inverse=True, return_counts=True)
    codes = codes.reshape(-1)
    majority = float(counts.max() / n)
    folds = min(n_splits, int(counts.max()))
    if counts.size < 2 or folds < 2:
        return {"accuracy": majority, "majority": majority, "lift": 0.0}
    clf = DecisionTreeClassifier(min_samples_leaf=max(5, n // 200), random_state=seed)
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        oof = cross_val_predict(clf, x, codes, cv=cv)
    accuracy = float(np.mean(oof == codes))
    return {"accuracy": accuracy, "majority": majority, "lift": accuracy - majority}


# ------------------------------------------------------------------------ everything


def json_safe(x: Any, ndigits: int = 6) -> Any:
    """Plain, rounded, JSON-safe values: numpy scalars to Python, nan/inf to None."""
    if isinstance(x, Mapping):
        return {str(k): json_safe(v, ndigits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v, ndigits) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return round(f, ndigits) if math.isfinite(f) else None
    return x


def evaluate_predictions(
    y_true: ArrayLike,
    y_pred: ArrayLike,
    users: ArrayLike,
    set_sizes: Sequence[int] = (2, 5, 10),
    n_sets: int = 2000,
    seed: int = 0,
    n_boot: int = 1000,
    min_items: int = 5,
) -> dict[str, Any]:
    """Every metric of one model on one test split, as a JSON-serialisable dict.

    Keys: ``mse``, ``mae``, ``ranking_accuracy_mixed`` and ``ranking_accuracy_within``
    (``{"2": .., "5": .., "10": ..}``, the same sets for every model given ``seed``),
    ``spearman_within``, ``kendall_within``, ``pairwise_within``, ``ndcg10_within``,
    ``spearman_global``, ``spearman_within_ci`` and ``pairwise_within_ci`` (``[lo, hi]``,
    95% percentile bootstrap over users), ``n_test`` (items), ``n_users`` (distinct users
    in the split). Values are plain floats rounded to 6 decimals; nan becomes None.
    """
    t, p = _pair(y_true, y_pred)
    g = _as_groups("users", users, t.shape[0])
    sp_users = per_user(t, p, g, "spearman", min_items)
    pw_users = per_user(t, p, g, "pairwise", min_items)
    result: dict[str, Any] = {
        "mse": mse(t, p),
        "mae": mae(t, p),
        "ranking_accuracy_mixed": ranking_accuracies(t, p, set_sizes, n_sets, seed),
        "ranking_accuracy_within": ranking_accuracies(t, p, set_sizes, n_sets, seed, groups=g),
        "spearman_within": _mean_or_nan(sp_users),
        "kendall_within": kendall_within(t, p, g, min_items),
        "pairwise_within": _mean_or_nan(pw_users),
        "ndcg10_within": ndcg_within(t, p, g, k=10, min_items=min_items),
        "spearman_global": spearman_global(t, p),
        "spearman_within_ci": list(bootstrap_ci(sp_users, n_boot=n_boot, seed=seed)),
        "pairwise_within_ci": list(bootstrap_ci(pw_users, n_boot=n_boot, seed=seed)),
        "n_test": int(t.size),
        "n_users": int(np.unique(g).size) if g.size else 0,
    }
    cleaned: dict[str, Any] = json_safe(result)
    return cleaned
