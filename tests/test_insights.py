"""reports/insights.html: per photographer, what goes with their more-liked posts."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr

from imgrate import insights
from imgrate.analyze import run_stage
from imgrate.dataset import Dataset
from imgrate.paths import Paths


@pytest.fixture(scope="module")
def analyzed(tiny_world, tmp_path_factory: pytest.TempPathFactory):
    params, tiny = tiny_world
    root = tmp_path_factory.mktemp("insights")
    for folder in (tiny.raw, tiny.tables, tiny.dataset):
        shutil.copytree(folder, root / folder.relative_to(tiny.root))
    paths = Paths(root)
    return params, paths, run_stage(params.analyze, paths)


def test_spearman_interval_marks_a_relation_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    target = rng.normal(size=80)
    related = target + rng.normal(scale=0.7, size=80)
    c = insights.spearman_interval(target, related, 1000, np.random.default_rng(0))
    assert c.rho == pytest.approx(spearmanr(target, related).statistic, abs=1e-3)
    assert c.marked and 0 < c.low < c.rho < c.high <= 1 and c.n == 80
    noise = insights.spearman_interval(target, rng.normal(size=80), 1000, np.random.default_rng(0))
    assert not noise.marked and noise.low < 0 < noise.high
    inverse = insights.spearman_interval(target, -related, 1000, np.random.default_rng(0))
    assert inverse.marked and inverse.high < 0
    assert insights.spearman_interval(target, np.ones(80), 100, rng).rho is None  # a constant property
    gaps = related.copy()
    gaps[:5] = np.nan  # a first post has no previous one: left out, not counted as 0
    assert insights.spearman_interval(target, gaps, 100, np.random.default_rng(0)).n == 75


def test_posting_properties_hour_weekend_and_gap() -> None:
    posts = [{"user": "a", "shortcode": "x2", "date": "2025-03-08T21:30:00+00:00"},  # a Saturday
             {"user": "a", "shortcode": "x1", "date": "2025-03-05T09:00:00+00:00"},  # a Wednesday
             {"user": "b", "shortcode": "y1", "date": "2025-03-06T12:00:00+00:00"}]
    out = insights.posting_properties(posts)
    assert out["x1"][:2] == (9.0, 0.0) and np.isnan(out["x1"][2])
    assert out["x2"] == (21.5, 1.0, pytest.approx(3.5208, abs=1e-3))
    assert np.isnan(out["y1"][2])  # each photographer's own previous post


def _fake(n_users: int = 6, n: int = 40) -> tuple[Dataset, np.ndarray]:
    """Users whose warmer photos did better (and nothing else), by construction."""
    rng = np.random.default_rng(3)
    index, rows = [], []
    for u in range(n_users):
        target = rng.uniform(size=n)
        for i, t in enumerate(target):
            index.append({"user": f"user{u}", "shortcode": f"u{u}p{i}", "target": float(t), "likes": int(100 * t),
                          "date": "2025-01-01T00:00:00+00:00", "row": len(index), "split": "train"})
            values = rng.normal(size=len(insights.PROPERTIES))
            values[insights.PROPERTIES.index("warmth")] = t + rng.normal(scale=0.15)
            rows.append(values)
    return Dataset(np.zeros((len(index), 2, 2, 3), np.uint8), index, {"target": "max_ratio"}), np.array(rows)


def test_sentences_claim_only_what_the_intervals_support() -> None:
    data, values = _fake()
    users = insights.findings(data, values, 500, 0)
    pooled = insights.across(users, 500, 0)
    assert pooled["warmth"].marked and pooled["warmth"].rho > 0.5
    said = insights.sentences("Across photographers,", pooled)
    assert said[0].startswith("Across photographers, warmer photos tend to get more likes: ρ = 0.")
    for u in users:
        assert u.correlations["warmth"].marked
        words = insights.sentences(f"{u.user}'s", u.correlations)
        assert 1 <= len(words) <= 2 and "warmer photos" in words[0]
        claimed = {k for k in insights.PROPERTIES if any(insights.WORDS[k][0] in w or insights.WORDS[k][1] in w
                                                          for w in words)}
        assert claimed <= {k for k, c in u.correlations.items() if c.marked}  # never a claim without a mark
    page = insights.render(users, pooled, {}, "max_ratio", 500)
    assert page.count("warmer photos tend to get more likes") == len(users) + 1


def test_the_page_is_self_contained_and_covers_every_photographer(analyzed) -> None:
    params, paths, counts = analyzed
    page = paths.insights_page.read_text(encoding="utf-8")
    users = sorted({r["user"] for r in _index(paths)})
    assert counts["insights"]["photographers"] == len(users)
    assert "<script" not in page and not re.search(r"""(src|href)=["'](?!data:|#)""", page)
    for user in users:
        assert f"<h2 id='u-{users.index(user)}'>{user} " in page
    assert page.count("Across photographers") >= 1 and page.count("<table>") == len(users) + 1
    thumbs = re.findall(r'src="data:image/jpeg;base64,', page)
    assert len(thumbs) >= 2 * len(users)
    assert paths.insights_page.read_bytes() == (run_stage(params.analyze, paths), paths.insights_page.read_bytes())[1]


def _index(paths: Paths) -> list[dict]:
    from imgrate.io import read_jsonl

    return read_jsonl(paths.dataset_index)


def test_the_page_draws_every_thumbnail_offline(analyzed, tmp_path: Path) -> None:
    import browser

    _, paths, _ = analyzed
    if browser.chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI needs it (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    report = browser.render(paths.insights_page)
    want = paths.insights_page.read_text(encoding="utf-8").count("<img ")
    assert report["scripts"] == 0 and report["images"] == want > 0
    assert all(d["loaded"] and d["width"] > 0 for d in report["drawn"]), report["drawn"]
    shot = browser.screenshot(paths.insights_page, tmp_path / "insights.png", width=1100, height=1800)
    with Image.open(shot) as im:
        assert len(np.unique(np.asarray(im.convert("L")))) > 50
