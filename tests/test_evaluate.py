"""The evaluate stage: every model and baseline, the leak probes, the oracle, plots; and (slow)
the DVC side: plots show, push/clone/pull, metrics diff and experiments on a tiny world."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgrate import metrics
from imgrate.baselines import BASELINES, Context
from imgrate.dataset import Dataset, load_dataset
from imgrate.evaluate import all_predictions, run_stage, score, shuffle_within_users
from imgrate.io import write_json, write_jsonl
from imgrate.params import EvaluateParams
from imgrate.paths import Paths

METRIC_KEYS = {
    "mse", "mae", "ranking_accuracy_mixed", "ranking_accuracy_within", "spearman_within",
    "kendall_within", "pairwise_within", "ndcg10_within", "spearman_global",
    "spearman_within_ci", "pairwise_within_ci", "n_test", "n_users",
}  # fmt: skip
PIXEL_BASELINES = ["random", "user_mean", "linear_regression", "ridge_pixels"]
FIGURES = ["predicted_vs_actual.png", "spearman_per_user.png", "learning_curves.png", "ranking_accuracy.png"]


# ------------------------------------------------------------------- a synthetic world


def write_synthetic_dataset(root: Path, n_users: int = 8, size: int = 24, seed: int = 3) -> np.ndarray:
    """data/dataset/ as the preprocess stage writes it, for users who differ in level and spread.

    Each photo is a flat colour whose brightness is its appeal (plus pixel noise);
    target = user mean + user spread * (0.8 * appeal + 0.6 * noise). Splits 60/10/30 (a
    large test split, for statistics). Returns the appeal of every row.
    """
    rng = np.random.default_rng(seed)
    images, index, appeal = [], [], []
    for u in range(n_users):
        mu, sd = rng.uniform(0.15, 0.7), rng.uniform(0.03, 0.2)
        for i in range(int(rng.integers(70, 110))):
            a = float(rng.normal())
            level = np.clip(128 + 40 * a, 0, 255)
            img = np.clip(level + rng.normal(0, 12, (size, size, 3)), 0, 255).astype(np.uint8)
            split = "train" if i % 10 < 6 else "val" if i % 10 == 6 else "test"
            row = len(index)
            index.append({"row": row, "shortcode": f"S{u:02d}x{i:04d}", "user": f"user_{u:02d}", "likes": 0,
                          "date": "2025-01-01T00:00:00Z", "split": split,
                          "target": round(mu + sd * (0.8 * a + 0.6 * float(rng.normal())), 6)})
            images.append(img)
            appeal.append(a)
    paths = Paths(root)
    paths.dataset.mkdir(parents=True, exist_ok=True)
    np.save(paths.images_array(size), np.stack(images))
    write_jsonl(paths.dataset_index, index)
    write_json(paths.dataset_meta, {"images": paths.images_array(size).name, "n": len(index), "size": size,
                                    "target": "max_ratio", "users": sorted({r["user"] for r in index})})
    return np.array(appeal)


def train_tiny_cnn(paths: Paths) -> None:
    """models/paper_cnn.pt: the train stage's paper CNN, two epochs on the synthetic dataset."""
    from conftest import tiny_params

    from imgrate.params import parse_params
    from imgrate.train import run_stage as train

    params = tiny_params()
    params["train"]["paper_cnn"].update(epochs=2, batch_size=32)  # the model under test here
    params["train"]["device"] = "cpu"
    train("paper_cnn", parse_params(params), paths)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Paths, np.ndarray]:
    paths = Paths(tmp_path_factory.mktemp("synthetic"))
    appeal = write_synthetic_dataset(paths.root)
    train_tiny_cnn(paths)
    return paths, appeal


PARAMS = EvaluateParams(set_sizes=[2, 5, 10], n_sets=2000, seed=0, n_boot=200, min_items=5)


@pytest.fixture(scope="module")
def evaluated(synthetic: tuple[Paths, np.ndarray]) -> tuple[Paths, dict, dict]:
    """The stage run once on the synthetic world; returns what it wrote."""
    paths, _ = synthetic
    report = run_stage(PARAMS, paths).detail  # no crawl params: no oracle, no image_ceiling
    assert report.skipped["oracle"].startswith("only on the simulated world")
    assert report.skipped["image_ceiling"].startswith("only on the simulated world")
    results = json.loads(paths.stage_report("evaluate").read_text())
    leak = json.loads(paths.leak_metrics.read_text())
    assert results.pop("paired") == report.paired
    assert results == report.metrics and leak == report.leak
    return paths, results, leak


def test_paired_differences_are_reported_for_the_pairs_present(evaluated: tuple[Paths, dict, dict]) -> None:
    """reports/evaluate.json's ``paired``: each pair of PAIRS whose two sides ran, with the
    difference of the plain metrics and a paired interval around it."""
    from imgrate.evaluate import PAIRS

    paths, results, _ = evaluated
    paired = json.loads(paths.stage_report("evaluate").read_text())["paired"]
    assert set(paired) == {f"{a}-{b}" for a, b in PAIRS if a in results and b in results} == {
        "paper_cnn-linear_regression"}
    entry = paired["paper_cnn-linear_regression"]
    assert entry["a"] == "paper_cnn" and entry["b"] == "linear_regression" and entry["n_users"] == 8
    for metric in ("spearman_within", "pairwise_within"):
        d = entry[metric]
        want = results["paper_cnn"][metric] - results["linear_regression"][metric]
        assert d["difference"] == pytest.approx(want, abs=2e-6), metric
        lo, hi = d["ci"]
        assert lo <= d["difference"] <= hi, metric
        assert d["excludes_0"] == (lo > 0 or hi < 0)
        assert d["verdict"] == ("paper_cnn better" if lo > 0 else "linear_regression better" if hi < 0
                                else "no clear difference")


def test_metrics_hold_one_small_row_per_model(evaluated: tuple[Paths, dict, dict]) -> None:
    """metrics/evaluate/<name>.json: what a comparison needs, one file per model (one row of
    `dvc metrics show`); the rest stays in reports/evaluate.json."""
    paths, results, leak = evaluated
    rows = {p.stem: json.loads(p.read_text()) for p in paths.evaluate_metrics.glob("*.json")}
    assert set(rows) == set(results)
    for name, row in rows.items():
        assert row == {"spearman_within": results[name]["spearman_within"],
                       "pairwise_within": results[name]["pairwise_within"],
                       "rank_acc_mixed_2": results[name]["ranking_accuracy_mixed"]["2"],
                       "leak_lift": leak[name]["lift"]}, name


# ---------------------------------------------------------------------------- outputs


def test_every_model_and_baseline_has_every_metric(evaluated: tuple[Paths, dict, dict]) -> None:
    paths, results, leak = evaluated
    names = {"paper_cnn", *PIXEL_BASELINES}
    assert set(results) == names and set(leak) == names  # top-level keys are model names only
    for name, m in results.items():
        assert set(m) == METRIC_KEYS, name
        for key in ("ranking_accuracy_mixed", "ranking_accuracy_within"):
            assert set(m[key]) == {"2", "5", "10"} and all(v is not None for v in m[key].values()), (name, key)
        for key in ("spearman_within_ci", "pairwise_within_ci"):
            lo, hi = m[key]
            assert lo <= m[key.removesuffix("_ci")] <= hi, (name, key)
        assert m["n_users"] == 8
        assert set(leak[name]) == {"user_accuracy", "majority_rate", "lift"}
        assert leak[name]["lift"] == pytest.approx(leak[name]["user_accuracy"] - leak[name]["majority_rate"], abs=2e-6)
    # pixels carry the appeal here: the ridge baseline must find it within users
    assert results["ridge_pixels"]["spearman_within"] > 0.3
    assert results["ridge_pixels"]["pairwise_within"] > 0.6


def test_user_mean_sits_at_chance_within_users(evaluated: tuple[Paths, dict, dict]) -> None:
    """The leakage probe: it knows only who posted, so within one user it cannot rank."""
    _, results, leak = evaluated
    m = results["user_mean"]
    assert m["spearman_within"] == 0.0 and m["kendall_within"] == 0.0 and m["pairwise_within"] == 0.5
    for k, chance in (("2", 0.5), ("5", 0.2), ("10", 0.1)):
        assert m["ranking_accuracy_within"][k] == pytest.approx(chance, abs=0.03), k
    # ... while the paper's mixed-user sets reward it well above chance: the leak
    assert m["ranking_accuracy_mixed"]["2"] > 0.6
    assert m["spearman_global"] > 0.5
    # and its outputs reveal the user; random outputs do not
    assert leak["user_mean"]["lift"] > 0.5
    assert abs(leak["random"]["lift"]) < 0.1


def test_shuffling_targets_within_users_drops_every_model_to_chance(synthetic: tuple[Paths, np.ndarray]) -> None:
    paths, appeal = synthetic
    data = load_dataset(paths)
    test = data.split("test")
    y, users = data.targets(test).astype(float), data.users(test)
    predictions, skipped = all_predictions(data, paths, PARAMS)
    assert list(predictions) == ["paper_cnn"] + [b for b in BASELINES if b in predictions]
    assert set(PIXEL_BASELINES) <= set(predictions)
    assert ("ridge_features" in predictions) != ("ridge_features" in skipped)
    assert all(np.all(np.isfinite(p)) for p in predictions.values())
    predictions["true_appeal"] = appeal[test]  # a perfect image model, to show the drop
    fast = EvaluateParams(set_sizes=[2], n_sets=200, seed=0, n_boot=10, min_items=5)
    before = score(y, users, predictions, fast)
    assert before["true_appeal"]["spearman_within"] > 0.6
    rng = np.random.default_rng(0)
    shuffled = [score(shuffle_within_users(y, users, rng), users, predictions, fast) for _ in range(10)]
    for name in predictions:
        rho = np.mean([s[name]["spearman_within"] for s in shuffled])
        pairs = np.mean([s[name]["pairwise_within"] for s in shuffled])
        assert abs(rho) < 0.08, (name, rho)
        assert pairs == pytest.approx(0.5, abs=0.05), (name, pairs)


def test_shuffle_within_users_keeps_each_users_values() -> None:
    y = np.arange(10.0)
    users = np.array(list("aaaaabbbbb"))
    out = shuffle_within_users(y, users, np.random.default_rng(1))
    assert sorted(out[:5]) == [0, 1, 2, 3, 4] and sorted(out[5:]) == [5, 6, 7, 8, 9]
    assert not np.array_equal(out, y)


def test_plot_tables_and_figures(evaluated: tuple[Paths, dict, dict]) -> None:
    paths, results, _ = evaluated
    for name in results:
        rows = (paths.plots / "predictions" / f"{name}.csv").read_text().splitlines()
        assert rows[0] == "shortcode,user,actual,predicted" and len(rows) == 1 + results[name]["n_test"]
        per_user = (paths.plots / "spearman_per_user" / f"{name}.csv").read_text().splitlines()
        assert per_user[0] == "user,spearman" and len(per_user) == 1 + 8
    for fig in FIGURES:
        assert (paths.figures / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig


def test_summary_tables_print(evaluated: tuple[Paths, dict, dict]) -> None:
    from rich.console import Console

    from imgrate.evaluate import Report

    paths, results, leak = evaluated
    console = Console(record=True, width=100)
    paired = json.loads(paths.stage_report("evaluate").read_text())["paired"]
    for table in Report(results, leak, {"oracle": "why not"}, paired).tables():
        console.print(table)
    text = console.export_text()
    assert "leak" in text and "user_mean" in text and "why not" in text
    assert "paired differences" in text and "paper_cnn-linear_regression" in text


def test_ridge_features_fits_the_featurize_stages_features(synthetic: tuple[Paths, np.ndarray],
                                                          tmp_path: Path) -> None:
    """ridge_features reads data/features (the featurize stage), whatever models exist; without
    features it is skipped with the reason."""
    from imgrate.features import FeatureMeta, ShardFeatures, write_meta, write_shard

    source, appeal = synthetic
    paths = Paths(tmp_path)
    shutil.copytree(source.dataset, paths.dataset)
    shutil.copytree(source.models, paths.models)
    data = load_dataset(paths)
    _, skipped = all_predictions(data, paths, PARAMS)
    assert "data/features" in skipped["ridge_features"]

    # features of one fake shard: the appeal in one column plus noise
    write_jsonl(paths.dataset_index, [{**r, "shard": "000001.tar", "member": r["shortcode"]} for r in data.index])
    data = load_dataset(paths)
    rng = np.random.default_rng(0)
    x = np.stack([np.r_[appeal[r["row"]], rng.normal(size=15)] for r in data.index]).astype(np.float32)
    write_meta(paths, FeatureMeta("efficientnet-lite0", 64, 16))
    write_shard(paths, "000001.tar", "-", ShardFeatures([r["shortcode"] for r in data.index], x, {}))
    predictions, skipped = all_predictions(data, paths, PARAMS)
    assert "ridge_features" not in skipped and "ridge_features" in predictions
    test = data.split("test")
    rho = metrics.spearman_within(data.targets(test), predictions["ridge_features"], data.users(test))
    assert rho > 0.4


# ------------------------------------------------------------------------------ oracle


def test_oracle_is_recomputed_from_the_world_not_from_crawled_data(tiny_world) -> None:
    params, paths = tiny_world
    data = load_dataset(paths)
    # a test split large enough to rank: every other post
    index = [{**r, "split": "train" if r["row"] % 2 else "test"} for r in data.index]
    half = Dataset(data.images, index, data.meta)
    test = half.split("test")
    oracle = BASELINES["oracle"].predict(Context(half, paths, 0, params.crawl))
    y, users = half.targets(test), half.users(test)
    assert metrics.spearman_within(y, oracle, users, min_items=3) > 0.5  # the true appeal ranks well

    # it never reads likes or targets: scrambled targets leave its ranking unchanged
    rng = np.random.default_rng(0)
    scrambled = Dataset(data.images, [{**r, "target": float(rng.random()), "likes": 1} for r in index], data.meta)
    again = BASELINES["oracle"].predict(Context(scrambled, paths, 0, params.crawl))
    assert np.array_equal(np.argsort(again), np.argsort(oracle))


def test_image_ceiling_is_the_visible_appeal_scored_like_every_model(tiny_world) -> None:
    """image_ceiling: the part of the true appeal the photo shows, from the world's seed; it
    differs from the oracle (by the invisible noise), ranks well, never reads the targets, and
    gets the same metrics as every model."""
    from imgrate.demo.world import APPEAL_NOISE, DemoWorld

    params, paths = tiny_world
    data = load_dataset(paths)
    index = [{**r, "split": "train" if r["row"] % 2 else "test"} for r in data.index]
    half = Dataset(data.images, index, data.meta)
    test = half.split("test")
    ctx = Context(half, paths, 0, params.crawl)
    ceiling, oracle = BASELINES["image_ceiling"].predict(ctx), BASELINES["oracle"].predict(ctx)
    assert BASELINES["image_ceiling"].bound and BASELINES["image_ceiling"].reads == ("world",)
    assert ceiling.shape == oracle.shape == (len(test),) and np.all(np.isfinite(ceiling))
    assert not np.allclose(np.argsort(ceiling), np.argsort(oracle))
    y, users = half.targets(test), half.users(test)
    assert metrics.spearman_within(y, ceiling, users, min_items=3) > 0.3

    # the visible appeal is the true appeal less noise of sd APPEAL_NOISE
    world = DemoWorld(sorted({str(r["user"]).lower() for r in index}), params.crawl.demo)
    codes = [r["shortcode"] for r in index]
    noise = np.array([world.appeal(c) - world.visible_appeal(c) for c in codes])
    assert 0.25 < noise.std() < 0.7 and abs(noise.mean()) < 0.2 and APPEAL_NOISE == 0.45

    rng = np.random.default_rng(0)
    scrambled = Dataset(data.images, [{**r, "target": float(rng.random()), "likes": 1} for r in index], data.meta)
    again = BASELINES["image_ceiling"].predict(Context(scrambled, paths, 0, params.crawl))
    assert np.array_equal(np.argsort(again), np.argsort(ceiling))

    scored = score(y.astype(float), users, {"image_ceiling": ceiling, "oracle": oracle}, PARAMS)
    assert set(scored["image_ceiling"]) == set(scored["oracle"]) == METRIC_KEYS
    assert scored["image_ceiling"] != scored["oracle"]


# -------------------------------------------------------------------- DVC, end to end


def _json(proc) -> dict:
    return json.loads(proc.stdout or "{}")


def _assert_drawn_offline(project: Path) -> bool:
    """Headless Chromium with the network cut off draws every Vega plot and image of the page;
    the same page on DVC's default template (Vega from a CDN) draws none, which shows that
    the network really was off. False when Chromium is missing (the caller skips, visibly, at
    its end; under CI=true that fails here)."""
    import os

    import browser
    from conftest import dvc

    if browser.chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI needs it (.ci/run installs Debian's chromium)")
        return False  # a developer machine without chromium: the caller's other checks still run
    page = project / "dvc_plots" / "index.html"
    report = browser.render(page)
    want = browser.vega_plots(page)
    assert report["vega_loaded"] and report["vega_drawn"] == want > 0, report
    assert report["images"] == report["images_loaded"] >= len(FIGURES), report
    from dvc_render.html import PAGE_HTML  # DVC's own page: Vega from cdn.jsdelivr.net

    (project / "cdn.html").write_text(PAGE_HTML)
    dvc(project, "plots", "show", "--html-template", str(project / "cdn.html"), "-o", "dvc_plots_cdn")
    online = browser.render(project / "dvc_plots_cdn" / "index.html")
    assert not online["vega_loaded"] and online["vega_drawn"] == 0, online
    shutil.rmtree(project / "dvc_plots_cdn")
    (project / "cdn.html").unlink()
    return True


@pytest.mark.slow
def test_plots_remote_clone_and_experiments(project: Path, tmp_path: Path) -> None:
    from conftest import dvc, git, run

    # 1. a local-folder remote, committed before the data it carries
    store = tmp_path / "dvc-store"
    dvc(project, "remote", "add", "-d", "store", str(store))
    git(project, "add", ".dvc/config")
    git(project, "commit", "-q", "-m", "remote")

    # 2. repro: evaluate writes both metric files, per-model plots and the oracle
    dvc(project, "repro")
    results = json.loads((project / "reports/evaluate.json").read_text())
    assert {"paper_cnn", "oracle", *PIXEL_BASELINES} <= set(results)
    assert "pretrained-paper_cnn" in results.pop("paired")
    assert {"oracle", "image_ceiling"} <= set(results)
    assert set(json.loads((project / "reports/leak.json").read_text())) == set(results)
    assert {p.stem for p in (project / "metrics/evaluate").glob("*.json")} == set(results)
    for fig in FIGURES:
        assert (project / "reports/figures/evaluate" / fig).exists(), fig

    # 3. dvc plots show writes a page a browser opens, with every plot in it, each curve once,
    # and the PNG figures; the project's template carries Vega, so it needs no network
    dvc(project, "plots", "show", "-o", "dvc_plots")
    page = (project / "dvc_plots/index.html").read_text()
    assert "paper_cnn: train and validation loss" in page and "cdn.jsdelivr" not in page
    per_model = [f"plots/{kind}/{model}.csv" for kind in ("predictions", "spearman_per_user") for model in results]
    for name in ("learning_curves_paper_cnn", "validation_spearman_paper_cnn", *per_model):
        assert page.count(f"vegaEmbed('#{re.sub(r'[^A-Za-z0-9]', '_', name)}'") == 1, name  # the plot's id
    for tsv in ("train_loss", "val_loss", "val_spearman_within"):  # not drawn a second time on their own
        assert f"dvclive_paper_cnn_plots_metrics_{tsv}_tsv" not in page, tsv
    for fig in FIGURES:
        assert f"reports_figures_evaluate_{fig.replace('.', '_')}" in page, fig  # the PNGs, as images
    drawn_offline = _assert_drawn_offline(project)
    shutil.rmtree(project / "dvc_plots")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "first run")

    # 4. push, clone, pull: only crawl (always_changed) differs; metrics diff shows nothing
    dvc(project, "push")
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    dvc(clone, "pull")
    assert (clone / "models/paper_cnn.pt").exists() and (clone / "reports/figures/evaluate/learning_curves.png").exists()
    assert set(_json(dvc(clone, "status", "--json"))) <= {"crawl"}
    assert _json(dvc(clone, "metrics", "diff", "--json")) == {}
    assert dvc(clone, "metrics", "diff").stdout.strip() == ""

    # 5. two experiments with different learning rates: exp show lists both, with metrics
    for name, lr in (("lr-high", "0.01"), ("lr-low", "0.0001")):
        dvc(project, "exp", "run", "-n", name, "-S", f"train.paper_cnn.lr={lr}")
    shown = _json(dvc(project, "exp", "show", "--json"))
    exps = {}
    for rev in shown:
        for exp in (rev.get("experiments") or []):
            for sub in exp.get("revs", []):
                exps[sub.get("name")] = sub["data"]
    assert {"lr-high", "lr-low"} <= set(exps)
    for name, lr in (("lr-high", 0.01), ("lr-low", 0.0001)):
        data = exps[name]
        assert data["params"]["params.yaml"]["data"]["train"]["paper_cnn"]["lr"] == lr
        spearman = data["metrics"]["metrics/evaluate/paper_cnn.json"]["data"]["spearman_within"]
        assert spearman is None or math.isfinite(spearman)
    table = dvc(project, "exp", "show", "--md", "--only-changed").stdout
    assert "lr-high" in table and "lr-low" in table
    if not drawn_offline:
        pytest.skip("chromium is not installed: every check of this test passed but the offline drawing of "
                    "`dvc plots show`'s page (tests/browser.py; CI installs chromium and fails without it)")


def test_figures_tell_27_photographers_apart_and_mark_the_kept_epoch(tmp_path: Path) -> None:
    """Issue 12.10: one (colour, marker) per photographer with a legend, n per user beside
    the Spearman bars, the kept epoch marked on the learning curves."""
    from PIL import Image

    from imgrate import figures

    users = np.array([f"photographer_{i:02d}" for i in range(27) for _ in range(7)])
    styles = figures.user_styles(sorted(set(users)))
    assert len({(s["color"], s["marker"]) for s in styles.values()}) == 27
    rng = np.random.default_rng(0)
    y = rng.random(len(users))
    out = figures.predicted_vs_actual(tmp_path / "pva.png", y, {"a": y + rng.normal(0, 0.1, len(y))}, users,
                                      {"a": {"spearman_within": 0.5}})
    counts = {u: 7 for u in set(users)}
    bars = figures.spearman_per_user(tmp_path / "spu.png", {"a": {u: 0.1 for u in set(users)}}, counts)
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0 + (e - 5) ** 2 / 50} for e in range(1, 11)]
    curves = figures.learning_curves(tmp_path / "lc.png", {"a": history}, kept={"a": 5})
    for png in (out, bars, curves):
        assert Image.open(png).size[0] > 300
