"""Tests for imgrate.metrics: hand-computed values on tiny inputs, and the leak properties."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from sklearn.metrics import ndcg_score

from imgrate.metrics import (
    bootstrap_ci,
    evaluate_predictions,
    exact_position_share,
    kendall_within,
    leak_score,
    mae,
    mse,
    ndcg_within,
    paired_bootstrap,
    pairwise_within,
    per_user,
    ranking_accuracies,
    ranking_accuracy,
    spearman_global,
    spearman_within,
)

LOG2_3 = math.log2(3)
LOG2_5 = math.log2(5)


# ------------------------------------------------------------------------- fixtures


def simulated_world(seed: int = 1, n_users: int = 30) -> dict[str, np.ndarray]:
    """Users differ in post count, mean and spread of the target; each photo has an appeal.

    target = user mean + user spread * (0.7 * appeal + 0.7 * noise)
    """
    r = np.random.default_rng(seed)
    users, targets, appeal = [], [], []
    for i in range(n_users):
        m = int(r.integers(40, 300))
        mu, sd = r.uniform(0.1, 0.6), r.uniform(0.02, 0.2)
        a = r.normal(0.0, 1.0, m)
        targets.append(mu + sd * (0.7 * a + 0.7 * r.normal(0.0, 1.0, m)))
        appeal.append(a)
        users += [f"user{i:02d}"] * m
    u = np.array(users)
    t = np.concatenate(targets)
    user_mean = np.zeros_like(t)
    for name in np.unique(u):
        user_mean[u == name] = t[u == name].mean()
    return {"users": u, "y_true": t, "appeal": np.concatenate(appeal), "user_mean": user_mean}


@pytest.fixture(scope="module")
def world() -> dict[str, np.ndarray]:
    return simulated_world()


# A tiny two-user test set, every value computed by hand below.
# user "a": true 1..5, prediction swaps the top two    -> 1 discordant pair of 10
# user "b": true 1..5, prediction reversed             -> 10 discordant pairs of 10
TINY_T = np.array([1, 2, 3, 4, 5, 1, 2, 3, 4, 5], dtype=float)
TINY_P = np.array([1, 2, 3, 5, 4, 5, 4, 3, 2, 1], dtype=float)
TINY_U = np.array(["a"] * 5 + ["b"] * 5)


# ----------------------------------------------------------- exact_position_share


def test_paper_example_scores_0_6() -> None:
    # true order [0, 4, 2, 3, 1] vs predicted [0, 1, 2, 3, 4]: positions 0, 2, 3 agree
    assert exact_position_share([0, 4, 2, 3, 1], [0, 1, 2, 3, 4]) == pytest.approx(0.6)
    # scale and shift of either side change nothing
    assert exact_position_share([0, 40, 20, 30, 10], [5, 6, 7, 8, 9]) == pytest.approx(0.6)


def test_exact_position_share_perfect_and_reversed() -> None:
    assert exact_position_share([3, 1, 2], [30, 10, 20]) == 1.0
    assert exact_position_share([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(0.2)  # middle
    assert exact_position_share([1, 2, 3, 4], [4, 3, 2, 1]) == 0.0


def test_exact_position_share_ties_are_stable() -> None:
    # ties keep their order within the set, on both sides
    assert exact_position_share([1, 1, 2], [3, 3, 3]) == 1.0  # orders [0,1,2] and [0,1,2]
    assert exact_position_share([2, 1, 1], [0, 0, 0]) == 0.0  # [1,2,0] vs [0,1,2]
    assert exact_position_share([5, 5], [1, 2]) == 1.0  # [0,1] vs [0,1]
    assert exact_position_share([5, 5], [2, 1]) == 0.0  # [0,1] vs [1,0]


def test_exact_position_share_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        exact_position_share([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        exact_position_share([1, 2, 3], [1, np.nan, 2])
    assert math.isnan(exact_position_share([], []))


# ---------------------------------------------------------------- ranking_accuracy


def test_ranking_accuracy_whole_array_sets_equal_the_per_set_value() -> None:
    t, p = [0, 4, 2, 3, 1], [0, 1, 2, 3, 4]
    # k = n: every set is the whole array (in random order); no ties, so always 0.6
    v = ranking_accuracy(t, p, k=5, n_sets=200, rng=np.random.default_rng(3))
    assert v == pytest.approx(0.6)
    assert math.isnan(ranking_accuracy(t, p, k=6, n_sets=10, rng=0))  # fewer items than k
    assert math.isnan(ranking_accuracy(t, p, k=2, n_sets=0, rng=0))


def test_ranking_accuracy_within_groups_by_hand() -> None:
    # user a: perfect (share 1.0); user b: the paper's example (0.6); user c has 3 < k items
    t = np.array([1, 2, 3, 4, 5, 0, 4, 2, 3, 1, 9, 8, 7], dtype=float)
    p = np.array([1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 1, 2, 3], dtype=float)
    g = np.array(["a"] * 5 + ["b"] * 5 + ["c"] * 3)
    v = ranking_accuracy(t, p, k=5, n_sets=4000, rng=0, groups=g)
    # each set is all of a or all of b (c skipped), each with probability 1/2: 0.6 + 0.4*f
    f = (v - 0.6) / 0.4
    assert f * 4000 == pytest.approx(round(f * 4000), abs=1e-6)  # a whole number of a-sets
    assert v == pytest.approx(0.8, abs=0.03)
    # user c alone: 3 items in reversed order -> only the middle one in place -> 1/3
    only_c = ranking_accuracy(t[10:], p[10:], k=3, n_sets=50, rng=0, groups=g[10:])
    assert only_c == pytest.approx(1 / 3)
    assert math.isnan(ranking_accuracy(t, p, k=6, n_sets=50, rng=0, groups=g))  # none qualifies
    with pytest.raises(ValueError):
        ranking_accuracy(t, p, k=2, n_sets=10, rng=0, groups=g[:5])


@pytest.mark.parametrize("grouped", [False, True])
def test_perfect_and_reversed_predictors(world: dict[str, np.ndarray], grouped: bool) -> None:
    t, u = world["y_true"], world["users"]
    g = u if grouped else None
    perfect = ranking_accuracies(t, 3 * t + 1, (2, 5, 10), 500, seed=0, groups=g)
    assert perfect == {"2": 1.0, "5": 1.0, "10": 1.0}
    rev = ranking_accuracies(t, -t, (2, 5, 10), 500, seed=0, groups=g)
    assert rev["2"] == 0.0 and rev["10"] == 0.0
    assert rev["5"] == pytest.approx(0.2)  # odd k: only the middle item stays in place


def test_random_predictor_sits_at_one_over_k() -> None:
    # sd of the k=2 value: ~0.003 (this predictor's pairwise accuracy) + 0.005 (sets)
    r = np.random.default_rng(7)
    t, p = r.random(20_000), r.random(20_000)
    u = r.integers(0, 20, 20_000)
    for g in (None, u):
        acc = ranking_accuracies(t, p, (2, 5, 10), 10_000, seed=1, groups=g)
        assert acc["2"] == pytest.approx(0.5, abs=0.02)
        assert acc["5"] == pytest.approx(0.2, abs=0.015)
        assert acc["10"] == pytest.approx(0.1, abs=0.01)


def test_constant_predictor_is_at_chance_even_on_sorted_data() -> None:
    # ties are broken by position within a set, and sets come in random order: a constant
    # predictor must not profit from data stored sorted by target (or by user, or date)
    t = np.arange(2000, dtype=float)
    p = np.zeros(2000)
    u = np.repeat(np.arange(200), 10)  # users of exactly k = 10 items: the hardest case
    for g in (None, u):
        acc = ranking_accuracies(t, p, (2, 5, 10), 10_000, seed=3, groups=g)
        assert acc["2"] == pytest.approx(0.5, abs=0.02)
        assert acc["5"] == pytest.approx(0.2, abs=0.015)
        assert acc["10"] == pytest.approx(0.1, abs=0.01)


def test_k2_ranking_accuracy_is_pairwise_accuracy_in_expectation() -> None:
    r = np.random.default_rng(11)
    n_users, m = 6, 60  # equal counts: user-weighted pairwise = item-weighted set draws
    t = r.normal(size=n_users * m)
    p = t + r.normal(scale=1.0, size=t.size)
    u = np.repeat(np.arange(n_users), m)
    within = ranking_accuracy(t, p, k=2, n_sets=40000, rng=2, groups=u)
    assert within == pytest.approx(pairwise_within(t, p, u), abs=0.01)
    mixed = ranking_accuracy(t, p, k=2, n_sets=40000, rng=2)
    one_user = np.zeros(t.size, dtype=int)
    assert mixed == pytest.approx(pairwise_within(t, p, one_user), abs=0.01)


def test_same_seed_same_sets_for_every_model(world: dict[str, np.ndarray]) -> None:
    t, a, u = world["y_true"], world["appeal"], world["users"]
    for g in (None, u):
        first = ranking_accuracies(t, a, (2, 5, 10), 300, seed=5, groups=g)
        assert ranking_accuracies(t, a, (2, 5, 10), 300, seed=5, groups=g) == first
        # a monotone transform of the scores has the same orders: equal only on equal sets
        assert ranking_accuracies(t, np.exp(a) + 2, (2, 5, 10), 300, seed=5, groups=g) == first
        # one k's sets do not depend on which other sizes were asked for
        assert ranking_accuracies(t, a, (10,), 300, seed=5, groups=g) == {"10": first["10"]}
        assert ranking_accuracies(t, a, (2, 5, 10), 300, seed=6, groups=g) != first


def test_ranking_accuracy_is_fast() -> None:
    r = np.random.default_rng(0)
    t, p, u = r.random(10_000), r.random(10_000), r.integers(0, 30, 10_000)
    start = time.perf_counter()
    ranking_accuracy(t, p, k=10, n_sets=10_000, rng=0)
    ranking_accuracy(t, p, k=10, n_sets=10_000, rng=0, groups=u)
    assert time.perf_counter() - start < 1.0


# --------------------------------------------------------------- within-user metrics


def test_within_metrics_by_hand() -> None:
    # user a: d^2 sum = 2 -> Spearman 1 - 6*2/(5*24) = 0.9; Kendall (9-1)/10 = 0.8; pairs 9/10
    # user b: reversed -> -1, -1, 0
    assert per_user(TINY_T, TINY_P, TINY_U, "spearman") == pytest.approx({"a": 0.9, "b": -1.0})
    assert per_user(TINY_T, TINY_P, TINY_U, "kendall") == pytest.approx({"a": 0.8, "b": -1.0})
    assert per_user(TINY_T, TINY_P, TINY_U, "pairwise") == pytest.approx({"a": 0.9, "b": 0.0})
    assert spearman_within(TINY_T, TINY_P, TINY_U) == pytest.approx(-0.05)
    assert kendall_within(TINY_T, TINY_P, TINY_U) == pytest.approx(-0.1)
    assert pairwise_within(TINY_T, TINY_P, TINY_U) == pytest.approx(0.45)
    # keys are plain Python strings (JSON, plotting)
    assert all(type(k) is str for k in per_user(TINY_T, TINY_P, TINY_U))


def test_ndcg_by_hand() -> None:
    # gains: (t - 1) / 4 = [0, .25, .5, .75, 1]
    # user a ranks items 3, 4, 2, 1, 0: gains .75, 1, .5, .25, 0
    dcg_a = 0.75 + 1 / LOG2_3 + 0.5 / 2 + 0.25 / LOG2_5
    idcg = 1 + 0.75 / LOG2_3 + 0.5 / 2 + 0.25 / LOG2_5
    # user b ranks worst first: gains 0, .25, .5, .75, 1
    dcg_b = 0 + 0.25 / LOG2_3 + 0.5 / 2 + 0.75 / LOG2_5 + 1 / math.log2(6)
    idcg_b = idcg  # k=10 > 5 items; the gain-0 item adds nothing
    expected = {"a": dcg_a / idcg, "b": dcg_b / idcg_b}
    assert per_user(TINY_T, TINY_P, TINY_U, "ndcg") == pytest.approx(expected)
    assert ndcg_within(TINY_T, TINY_P, TINY_U) == pytest.approx(np.mean(list(expected.values())))
    # NDCG@2: only the top two positions count
    at2 = (0.75 + 1 / LOG2_3) / (1 + 0.75 / LOG2_3)
    assert per_user(TINY_T, TINY_P, TINY_U, "ndcg", k=2)["a"] == pytest.approx(at2)
    # perfect ranking
    assert ndcg_within(TINY_T, TINY_T, TINY_U) == pytest.approx(1.0)


def test_ndcg_ties_average_gains_and_match_sklearn() -> None:
    t = np.array([1, 2, 3, 4, 5], dtype=float)
    g = (t - 1) / 4
    # constant predictions: every position gets the mean gain 0.5
    disc = 1 / np.log2(np.arange(2, 7))
    expected = 0.5 * disc.sum() / (np.sort(g)[::-1] @ disc)
    assert per_user(t, np.zeros(5), np.zeros(5), "ndcg")[0] == pytest.approx(expected)
    r = np.random.default_rng(4)
    for _ in range(20):
        n = int(r.integers(5, 40))
        tt = r.random(n)
        pp = r.integers(0, 4, n).astype(float)  # many ties
        gains = (tt - tt.min()) / (tt.max() - tt.min())
        for k in (3, 10):
            ours = per_user(tt, pp, np.zeros(n), "ndcg", k=k)[0]
            assert ours == pytest.approx(ndcg_score([gains], [pp], k=k))


def test_within_metrics_with_ties_by_hand() -> None:
    t = np.array([1, 2, 3, 4, 5], dtype=float)
    p = np.array([1, 1, 2, 2, 3], dtype=float)
    u = np.zeros(5, dtype=int)
    # pairs: (0,1) and (2,3) tied in prediction -> 0.5 each; the other 8 right -> 9/10
    assert pairwise_within(t, p, u) == pytest.approx(0.9)
    # tau-b = (C - D) / sqrt((n0 - 0)(n0 - 2)) = 8 / sqrt(10 * 8)
    assert kendall_within(t, p, u) == pytest.approx(8 / math.sqrt(80))
    # Spearman on average ranks [1.5, 1.5, 3.5, 3.5, 5]: cov 9, var 10 and 9
    assert spearman_within(t, p, u) == pytest.approx(9 / math.sqrt(90))
    # ties in the truth: pairs with equal true values are not counted
    t2 = np.array([1, 1, 2, 2, 3], dtype=float)
    p2 = np.array([5, 4, 3, 2, 1], dtype=float)
    assert pairwise_within(t2, p2, u) == 0.0


def test_constant_predictions_and_undefined_users() -> None:
    t = np.array([1, 2, 3, 4, 5, 7, 7, 7, 7, 7, 1, 2], dtype=float)
    p = np.array([3, 3, 3, 3, 3, 1, 2, 3, 4, 5, 1, 2], dtype=float)
    u = np.array(["const_pred"] * 5 + ["const_true"] * 5 + ["small"] * 2)
    assert per_user(t, p, u, "spearman") == {"const_pred": 0.0}  # not nan
    assert per_user(t, p, u, "kendall") == {"const_pred": 0.0}
    assert per_user(t, p, u, "pairwise") == {"const_pred": 0.5}
    assert spearman_within(t, p, u) == 0.0
    assert pairwise_within(t, p, u) == 0.5
    # "small" counts with min_items=2
    assert per_user(t, p, u, "spearman", min_items=2) == {"const_pred": 0.0, "small": 1.0}
    # nobody qualifies -> nan
    assert math.isnan(spearman_within(t, p, u, min_items=6))
    assert math.isnan(ndcg_within(t, p, u, min_items=6))
    with pytest.raises(ValueError):
        per_user(t, p, u, "auc")  # type: ignore[arg-type]


def test_pairwise_large_user_blocks() -> None:
    # more items than one block of the O(n^2) count; compare with a direct count
    r = np.random.default_rng(9)
    t = r.integers(0, 50, 2500).astype(float)
    p = r.integers(0, 50, 2500).astype(float) + t
    dt = np.sign(t[:, None] - t[None, :])
    dp = np.sign(p[:, None] - p[None, :])
    valid = dt != 0
    direct = (((dt == dp) & valid).sum() + 0.5 * ((dp == 0) & valid).sum()) / valid.sum()
    assert pairwise_within(t, p, np.zeros(2500)) == pytest.approx(direct)


# -------------------------------------------------------------------- global metrics


def test_global_metrics_by_hand() -> None:
    assert mse([1, 2, 3], [1, 2, 5]) == pytest.approx(4 / 3)
    assert mae([1, 2, 3], [0, 2, 5]) == pytest.approx(1.0)
    assert spearman_global(TINY_T[:5], TINY_P[:5]) == pytest.approx(0.9)
    assert spearman_global([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman_global([1, 2, 3], [0, 0, 0]) == 0.0
    assert math.isnan(spearman_global([1, 1, 1], [1, 2, 3]))
    assert math.isnan(mse([], []))


# ------------------------------------------------------------------------ bootstrap


def test_bootstrap_ci() -> None:
    r = np.random.default_rng(0)
    few = r.normal(0.3, 0.1, 20)
    many = r.normal(0.3, 0.1, 500)
    lo, hi = bootstrap_ci(few)
    assert lo < few.mean() < hi
    lo2, hi2 = bootstrap_ci(many)
    assert lo2 < many.mean() < hi2
    assert (hi2 - lo2) < 0.4 * (hi - lo)  # width ~ 1/sqrt(n_users): ratio ~0.2
    # dict input (from per_user), nan dropped, deterministic per seed
    d = {f"u{i}": v for i, v in enumerate(few)} | {"nan_user": math.nan}
    assert bootstrap_ci(d) == (lo, hi)
    assert bootstrap_ci(few, seed=1) != (lo, hi)
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert all(math.isnan(x) for x in bootstrap_ci({}))
    # two values 0 and 1: resampled means are 0, 0.5 or 1 -> the 95% interval is [0, 1]
    assert bootstrap_ci([0.0, 1.0], n_boot=2000) == (0.0, 1.0)


# ------------------------------------------------------------------------------ leak


def test_leak_score_by_hand() -> None:
    p = np.r_[np.zeros(10), np.ones(10)]
    u = np.array(["a"] * 10 + ["b"] * 10)
    assert leak_score(p, u) == pytest.approx({"accuracy": 1.0, "majority": 0.5, "lift": 0.5})
    one = leak_score(np.arange(5.0), ["x"] * 5)
    assert one == {"accuracy": 1.0, "majority": 1.0, "lift": 0.0}


def test_leak_score_user_mean_vs_random(world: dict[str, np.ndarray]) -> None:
    u = world["users"]
    user_mean = leak_score(world["user_mean"], u)
    assert user_mean["majority"] < 0.1
    assert user_mean["accuracy"] > 0.95 and user_mean["lift"] > 0.85
    random = leak_score(np.random.default_rng(0).random(u.size), u)
    assert abs(random["lift"]) < 0.05
    assert set(random) == {"accuracy", "majority", "lift"}


# --------------------------------------------------------- the leak in the paper's metric


def test_user_mean_predictor_wins_mixed_sets_but_is_at_chance_within(
    world: dict[str, np.ndarray],
) -> None:
    t, u, um, appeal = world["y_true"], world["users"], world["user_mean"], world["appeal"]
    mixed = ranking_accuracies(t, um, (2, 5, 10), 5000, seed=0)
    within = ranking_accuracies(t, um, (2, 5, 10), 5000, seed=0, groups=u)
    assert mixed["2"] > 0.65 and mixed["5"] > 0.3 and mixed["10"] > 0.16  # chance .5/.2/.1
    assert within["2"] == pytest.approx(0.5, abs=0.03)
    assert within["5"] == pytest.approx(0.2, abs=0.03)
    assert within["10"] == pytest.approx(0.1, abs=0.03)
    assert spearman_within(t, um, u) == 0.0
    assert kendall_within(t, um, u) == 0.0
    assert pairwise_within(t, um, u) == 0.5
    # on mixed sets, knowing the user beats knowing the image; within users it is reversed
    oracle_mixed = ranking_accuracies(t, appeal, (2,), 5000, seed=0)
    oracle_within = ranking_accuracies(t, appeal, (2,), 5000, seed=0, groups=u)
    assert mixed["2"] > oracle_mixed["2"]
    assert oracle_within["2"] > within["2"] + 0.15


def test_shuffling_targets_within_users_drops_a_good_model_to_chance(
    world: dict[str, np.ndarray],
) -> None:
    t, u, appeal = world["y_true"], world["users"], world["appeal"]
    assert spearman_within(t, appeal, u) > 0.5
    r = np.random.default_rng(0)
    shuffled = t.copy()
    for name in np.unique(u):
        idx = np.flatnonzero(u == name)
        shuffled[idx] = t[r.permutation(idx)]
    assert abs(spearman_within(shuffled, appeal, u)) < 0.05
    assert abs(kendall_within(shuffled, appeal, u)) < 0.05
    assert pairwise_within(shuffled, appeal, u) == pytest.approx(0.5, abs=0.03)
    within = ranking_accuracies(shuffled, appeal, (2, 5, 10), 5000, seed=0, groups=u)
    assert within["2"] == pytest.approx(0.5, abs=0.03)
    assert within["10"] == pytest.approx(0.1, abs=0.03)


# ------------------------------------------------------------------ evaluate_predictions

KEYS = {
    "mse", "mae", "ranking_accuracy_mixed", "ranking_accuracy_within", "spearman_within",
    "kendall_within", "pairwise_within", "ndcg10_within", "spearman_global",
    "spearman_within_ci", "pairwise_within_ci", "n_test", "n_users",
}  # fmt: skip


def _plain(x: object) -> bool:
    if isinstance(x, dict):
        return all(type(k) is str and _plain(v) for k, v in x.items())
    if isinstance(x, list):
        return all(_plain(v) for v in x)
    return x is None or type(x) in (int, float)


def test_evaluate_predictions_perfect(world: dict[str, np.ndarray]) -> None:
    t, u = world["y_true"], world["users"]
    res = evaluate_predictions(t, t, u, n_sets=300, n_boot=200)
    assert set(res) == KEYS
    assert _plain(res)
    json.dumps(res, allow_nan=False)
    assert res["mse"] == 0.0 and res["mae"] == 0.0
    assert res["ranking_accuracy_mixed"] == {"2": 1.0, "5": 1.0, "10": 1.0}
    assert res["ranking_accuracy_within"] == {"2": 1.0, "5": 1.0, "10": 1.0}
    for key in ("spearman_within", "kendall_within", "pairwise_within", "ndcg10_within",
                "spearman_global"):  # fmt: skip
        assert res[key] == 1.0
    assert res["spearman_within_ci"] == [1.0, 1.0]
    assert res["n_test"] == t.size and res["n_users"] == 30


def test_evaluate_predictions_tiny_and_none_for_nan() -> None:
    res = evaluate_predictions(TINY_T, TINY_P, TINY_U, n_sets=100, n_boot=100)
    assert res["spearman_within"] == pytest.approx(-0.05)
    assert res["pairwise_within"] == pytest.approx(0.45)
    assert res["mse"] == pytest.approx((1 + 1 + 16 + 4 + 0 + 4 + 16) / 10)  # 4.2
    assert res["n_test"] == 10 and res["n_users"] == 2
    lo, hi = res["pairwise_within_ci"]
    assert lo <= 0.45 <= hi
    # nobody has 6 items: within metrics are None, everything stays JSON-safe
    res = evaluate_predictions(TINY_T, TINY_P, TINY_U, n_sets=100, n_boot=100, min_items=6)
    assert res["spearman_within"] is None and res["spearman_within_ci"] == [None, None]
    assert res["ranking_accuracy_within"]["10"] is None  # no user has 10 items
    assert res["ranking_accuracy_mixed"]["10"] is not None
    json.dumps(res, allow_nan=False)


# ------------------------------------------------------------------- paired bootstrap


def _two_models(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(20), 12)
    return rng.normal(size=users.size), users, rng


def test_paired_bootstrap_of_identical_models_is_exactly_zero() -> None:
    y, users, rng = _two_models()
    pred = y + rng.normal(size=y.size)
    for metric, d in paired_bootstrap(y, pred, pred.copy(), users, n_boot=300).items():
        assert d == {"difference": 0.0, "ci": [0.0, 0.0], "excludes_0": False, "n_users": 20}, metric


def test_paired_bootstrap_tells_the_target_from_noise() -> None:
    """The target itself against random scores: the difference is the plain metrics' difference
    and its interval lies above 0 (below 0 the other way round, the mirror image)."""
    y, users, rng = _two_models(1)
    noise = rng.normal(size=y.size)
    ab = paired_bootstrap(y, y, noise, users, n_boot=500, seed=3)
    ba = paired_bootstrap(y, noise, y, users, n_boot=500, seed=3)
    assert ab["spearman"]["difference"] == pytest.approx(1.0 - spearman_within(y, noise, users))
    assert ab["pairwise"]["difference"] == pytest.approx(1.0 - pairwise_within(y, noise, users))
    for metric in ("spearman", "pairwise"):
        lo, hi = ab[metric]["ci"]
        assert 0 < lo <= ab[metric]["difference"] <= hi and ab[metric]["excludes_0"], metric
        assert ba[metric]["ci"] == pytest.approx([-hi, -lo]) and ba[metric]["excludes_0"], metric


def test_paired_bootstrap_is_seeded_and_pairs_the_resamples() -> None:
    """Same seed, same interval; two noisy copies of one model are closer to each other than
    either model's own interval is wide (the pairing cancels what they share)."""
    y, users, rng = _two_models(2)
    a = y + rng.normal(size=y.size)
    b = a + 0.1 * rng.normal(size=y.size)
    first = paired_bootstrap(y, a, b, users, n_boot=400, seed=7)
    assert first == paired_bootstrap(y, a, b, users, n_boot=400, seed=7)
    assert first != paired_bootstrap(y, a, b, users, n_boot=400, seed=8)
    lo, hi = first["spearman"]["ci"]
    own_lo, own_hi = bootstrap_ci(per_user(y, a, users), n_boot=400, seed=7)
    assert hi - lo < (own_hi - own_lo) / 2
    # users below min_items or with constant targets take no part
    y2 = np.r_[y, np.ones(6)]
    u2, a2, b2 = np.r_[users, np.full(6, 99)], np.r_[a, np.arange(6.0)], np.r_[b, -np.arange(6.0)]
    assert paired_bootstrap(y2, a2, b2, u2, n_boot=400, seed=7) == first
    with pytest.raises(ValueError):
        paired_bootstrap(y, a, b[:-1], users)
