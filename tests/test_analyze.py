"""analyze: the data-analysis figures and reports/data.md."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest
from PIL import Image

from imgrate.analyze import FIGURES, extremes, pick_example, run_stage
from imgrate.errors import DataError
from imgrate.io import read_jsonl
from imgrate.paths import Paths


@pytest.fixture(scope="module")
def analyzed(tiny_world, tmp_path_factory: pytest.TempPathFactory):
    """The tiny world's data copied to a fresh root (tiny_world is read-only), analyzed once."""
    params, tiny = tiny_world
    root = tmp_path_factory.mktemp("analyze")
    for folder in (tiny.raw, tiny.tables, tiny.dataset):
        shutil.copytree(folder, root / folder.relative_to(tiny.root))
    paths = Paths(root)
    return params, paths, run_stage(params.analyze, paths)


def test_every_figure_is_a_legible_png(analyzed) -> None:
    _, paths, _ = analyzed
    for name in FIGURES:
        with Image.open(paths.data_figures / name) as im:
            assert im.format == "PNG" and im.size[0] >= 600 and im.size[1] >= 200, name
            # not blank: a drawn figure has many distinct colours
            assert len(im.convert("RGB").getcolors(1 << 20) or []) > 50, name
    assert sorted(p.name for p in paths.data_figures.iterdir()) == sorted(FIGURES)


def test_data_report_counts_match_the_tables(analyzed) -> None:
    _, paths, counts = analyzed
    posts = read_jsonl(paths.posts_table)
    index = read_jsonl(paths.dataset_index)
    text = paths.data_report.read_text()
    assert counts["posts"] == len(posts) and counts["dataset"] == len(index)
    assert counts["image_posts"] == sum(1 for p in posts if p["member"])
    assert counts["videos"] == sum(p["typename"] == "GraphVideo" for p in posts)
    assert f"| posts | {len(posts):,} |" in text
    assert f"| dataset images (after per-user balance) | {len(index):,} |" in text
    for user in read_jsonl(paths.users_table):
        assert f"| {user['username']} | {user['followers']:,} |" in text
    for name in FIGURES:
        assert f"(figures/data/{name})" in text  # links that work from reports/data.md


def test_same_data_gives_the_same_bytes(analyzed) -> None:
    params, paths, _ = analyzed
    before = {n: (paths.data_figures / n).read_bytes() for n in FIGURES}
    run_stage(params.analyze, paths)
    assert {n: (paths.data_figures / n).read_bytes() for n in FIGURES} == before


def test_extremes_and_example_on_a_hand_built_table() -> None:
    rows = [{"shortcode": c, "likes": n, "split": s}
            for c, n, s in [("a", 5, "train"), ("b", 9, "val"), ("c", 1, "test"), ("d", 9, "test"), ("e", 3, "train")]]
    top, bottom = extremes(rows, 2, "likes")
    assert [r["shortcode"] for r in top] == ["b", "d"]  # a tie goes by shortcode
    assert [r["shortcode"] for r in bottom] == ["c", "e"]
    assert pick_example(rows, None)["shortcode"] == "d"  # the most-liked test row
    assert pick_example(rows, "e")["shortcode"] == "e"
    assert pick_example([r for r in rows if r["split"] != "test"], None)["shortcode"] == "b"


def test_rank_by_target_and_a_chosen_example(analyzed, monkeypatch: pytest.MonkeyPatch) -> None:
    """The last test of the module: it redraws the figures with other params."""
    import imgrate.analyze as analyze

    params, paths, _ = analyzed
    index = read_jsonl(paths.dataset_index)
    images = np.load(paths.images_array(50), mmap_mode="r")
    chosen = index[3]
    drawn = {}
    real = analyze.plot_preprocessing

    def spy(path, paths_, post, after):
        drawn.update(post=post, after=after)
        return real(path, paths_, post, after)

    monkeypatch.setattr(analyze, "plot_preprocessing", spy)
    run_stage(dataclasses.replace(params.analyze, rank_by="target", top_n=3, example=chosen["shortcode"]), paths)
    # the "after" half is the dataset's own row for the example, the "before" its shard member
    assert drawn["post"]["shortcode"] == chosen["shortcode"] and drawn["post"]["member"] == chosen["member"]
    assert np.array_equal(drawn["after"], images[chosen["row"]])
    with Image.open(paths.data_figures / "top_bottom.png") as im:
        assert im.size[0] < 1000  # three columns, not five
    with pytest.raises(DataError, match="not in the dataset"):
        run_stage(dataclasses.replace(params.analyze, example="no-such-post"), paths)
