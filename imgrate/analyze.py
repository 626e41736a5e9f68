"""The analyze stage: the paper's data-analysis figures and counts, redrawn from the data.

Reads ``data/tables`` (every crawled post and user), ``data/dataset`` (what preprocess kept,
with targets and splits) and the images in ``data/raw`` shards, and writes PNGs under
``reports/figures/data/`` plus ``reports/data.md``:

- ``followers.png``: followers per user (latest profile snapshot), log scale.
- ``likes_vs_age.png``: likes against the post's age when its count was last read
  (``age_at_observation_days``), one panel per user: posts read young have not collected
  their likes yet (preprocess holds back those read before ``min_age_days``). Hidden like
  counts are not drawn.
- ``targets.png``: the dataset's target (``preprocess.target``) against raw likes, coloured
  by user: per-user standardisation puts users of very different reach on one scale.
- ``top_bottom.png``: the ``top_n`` most- and least-liked posts (``rank_by: likes``, all image
  posts, as the paper) or highest/lowest targets (``rank_by: target``, dataset rows), as a
  picture grid read from the shards.
- ``preprocessing.png``: one image as crawled and as the dataset holds it.

Figures use matplotlib's object-oriented API on the Agg canvas (no pyplot, no display) and
are written without a timestamp, so the same data gives the same bytes.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgrate import insights
from imgrate.dataset import Dataset, load_dataset
from imgrate.entry import Dep, Output, Stage, Summary, clean_outputs
from imgrate.errors import DataError, ImageError
from imgrate.figures import DPI, figure, save, user_styles
from imgrate.images import fitted, image_info
from imgrate.io import atomic_open, read_jsonl
from imgrate.params import AnalyzeParams
from imgrate.paths import Paths
from imgrate.shards import read_member

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

FIGURES = ("followers.png", "likes_vs_age.png", "targets.png", "top_bottom.png", "preprocessing.png", "insights.png")


# ----------------------------------------------------------------------------------------
# What to draw (pure functions)


def extremes(rows: Sequence[dict[str, Any]], n: int, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``n`` rows with the highest and the ``n`` with the lowest ``key`` (ties: shortcode),
    highest first and lowest first. With fewer than ``2n`` rows the two lists overlap."""
    ranked = sorted(rows, key=lambda r: (-r[key], r["shortcode"]))
    bottom = sorted(rows, key=lambda r: (r[key], r["shortcode"]))
    return ranked[:n], bottom[:n]


def pick_example(index: Sequence[dict[str, Any]], shortcode: str | None) -> dict[str, Any]:
    """The dataset row shown before/after preprocessing: ``shortcode``, else the most-liked
    test image (ties: shortcode), else the most-liked image."""
    if shortcode is not None:
        for r in index:
            if r["shortcode"] == shortcode:
                return r
        raise DataError(f"analyze.example: post {shortcode} is not in the dataset")
    pool = [r for r in index if r["split"] == "test"] or list(index)
    return min(pool, key=lambda r: (-r["likes"], r["shortcode"]))


def summarize(posts: list[dict[str, Any]], users: list[dict[str, Any]], export_skipped: list[dict[str, Any]],
              data: Dataset) -> dict[str, Any]:
    """The counts in reports/data.md."""
    types = Counter(p["typename"] for p in posts)
    in_dataset = Counter(r["user"] for r in data.index)
    per_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in posts:
        per_user[p["user"]].append(p)
    followers = {u["username"]: u["followers"] for u in users}
    rows = []
    for name in sorted(set(per_user) | set(followers)):
        mine = per_user.get(name, [])
        shown = [p["likes"] for p in mine if p.get("likes") is not None]
        likes = np.array(shown) if shown else np.zeros(0)
        rows.append({
            "user": name, "followers": followers.get(name), "posts": len(mine),
            "image_posts": sum(1 for p in mine if p.get("member")), "in_dataset": in_dataset.get(name, 0),
            "median_likes": float(np.median(likes)) if len(likes) else None,
            "max_likes": int(likes.max()) if len(likes) else None,
            "first": min((p["date"] for p in mine), default=None), "last": max((p["date"] for p in mine), default=None),
        })
    return {
        "users": len(users), "posts": len(posts), "likes_hidden": sum(1 for p in posts if p.get("likes") is None),
        "photos": types.get("GraphImage", 0), "sidecars": types.get("GraphSidecar", 0),
        "videos": types.get("GraphVideo", 0), "image_posts": sum(1 for p in posts if p.get("member")),
        "export_skipped": len(export_skipped), "undecodable": len(data.meta.get("skipped", [])),
        "dataset": len(data.index), "splits": data.meta["splits"], "target": data.meta["target"],
        "funnel": data.meta.get("funnel"),
        "split": data.meta["split"], "size": data.meta["size"],
        "first": min((p["date"] for p in posts), default=None), "last": max((p["date"] for p in posts), default=None),
        "per_user": rows,
    }


# what each preprocess.target is, for the figure's title
TARGET_MEANING = {"max_ratio": "likes / the user's most-liked post", "follower_ratio": "likes / followers",
                  "log_zscore": "standardised log likes per user", "percentile": "percentile of likes per user"}


def _funnel(c: dict[str, Any]) -> list[str]:
    """Table rows from the posts with an image to the dataset's rows, each step's loss named."""
    f = c.get("funnel")
    if not f:  # a dataset from before preprocess recorded it
        return [f"| posts with an image (first image of a sidecar) | {c['image_posts']:,} |",
                f"| images preprocess could not decode | {c['undecodable']:,} |",
                f"| dataset images (after per-user balance) | {c['dataset']:,} |"]
    cap = f.get("max_posts_per_user")
    return [
        f"| posts with an image (first image of a sidecar) | {f['image_posts']:,} |",
        f"| − their like count hidden by the owner | {f['likes_hidden']:,} |",
        f"| − too young (count read before `preprocess.min_age_days`; held back) | {f['too_young']:,} |",
        f"| − not decodable, or in a damaged shard | {f['undecodable']:,} |",
        f"| = image posts with a target | {f['with_target']:,} |",
        f"| dataset images (after per-user balance{f', at most {cap:,} per user' if cap else ''}) | {f['dataset']:,} |",
    ]


def render_report(c: dict[str, Any]) -> str:
    """reports/data.md from :func:`summarize`'s counts."""

    def num(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}"

    s = c["splits"]
    lines = [
        "# Data", "",
        "Written by the analyze stage (`dvc repro analyze`) from `data/tables`, `data/dataset` and "
        "the shards in `data/raw`.", "",
        "| | count |", "|---|---:|",
        f"| users | {c['users']:,} |",
        f"| posts | {c['posts']:,} |",
        f"| photos / sidecars / videos | {c['photos']:,} / {c['sidecars']:,} / {c['videos']:,} |",
        f"| posts whose owner hides the like count (videos included; never a target) | {c['likes_hidden']:,} |",
        f"| shard members the export skipped | {c['export_skipped']:,} |",
        *_funnel(c),
        f"| train / val / test ({c['split']} split) | {s.get('train', 0):,} / {s.get('val', 0):,} / "
        f"{s.get('test', 0):,} |",
        f"| posted between | {(c['first'] or '-')[:10]} and {(c['last'] or '-')[:10]} |", "",
        f"Images are {c['size']} x {c['size']} RGB; the target is `{c['target']}`.", "",
        "## Per user", "",
        "| user | followers | posts | image posts | in dataset | median likes | max likes | first post | last post |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in c["per_user"]:
        lines.append(f"| {r['user']} | {num(r['followers'])} | {r['posts']:,} | {r['image_posts']:,} | "
                     f"{r['in_dataset']:,} | {num(r['median_likes'])} | {num(r['max_likes'])} | "
                     f"{(r['first'] or '-')[:10]} | {(r['last'] or '-')[:10]} |")
    lines += ["", "What goes with each photographer's more-liked posts (photo and posting properties, with "
              "intervals): [insights.html](insights.html).", "", "## Figures", ""]
    captions = {
        "followers.png": "Followers per user",
        "likes_vs_age.png": "Likes against the post's age when they were last read, per user",
        "targets.png": "Dataset target against raw likes, coloured by user",
        "top_bottom.png": "Top and bottom posts",
        "preprocessing.png": "One image before and after preprocessing",
        "insights.png": "Within-photographer rank correlation of likes with photo and posting properties "
                        "(reports/insights.html says what it means)",
    }
    for name in FIGURES:
        lines += [f"![{captions[name]}](figures/data/{name})", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------
# Drawing


def _compact(value: float, _pos: object = None) -> str:
    """1,500 -> 1.5k; 2,000,000 -> 2M: short tick labels for counts on a log axis."""
    for div, unit in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= div:
            return f"{value / div:g}{unit}"
    return f"{value:g}"


def _log_counts(ax: Axes, axis: str = "y", subs: tuple[float, ...] = (1.0, 2.0, 5.0)) -> None:
    """A log axis of counts labelled 1, 2, 5, 10, 20, 50, ... (or 1, 10, 100, ...) in compact form."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    target = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target.set_major_locator(LogLocator(base=10, subs=subs, numticks=8))
    target.set_major_formatter(FuncFormatter(_compact))
    target.set_minor_locator(NullLocator())  # minor ticks on 27 panels cost seconds and say little


def plot_followers(path: Path, users: list[dict[str, Any]]) -> Path:
    """A dot per user on a log axis (bars would start at an arbitrary floor there)."""
    rows = sorted(users, key=lambda u: u["followers"])
    values = np.array([max(u["followers"], 1) for u in rows], dtype=float)
    fig = figure(7.5, 1.2 + 0.26 * max(len(rows), 1))
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    floor = 10 ** np.floor(np.log10(values.min())) if len(values) else 1.0
    ax.hlines(y, floor, values, color="#4c72b0", alpha=0.4, linewidth=2)
    ax.plot(values, y, "o", color="#4c72b0")
    for i, v in enumerate(values):
        ax.text(v * 1.15, i, f"{v:,.0f}", va="center", fontsize=7)
    _log_counts(ax, "x")
    ax.set_xlim(floor, values.max() * 4 if len(values) else 10)
    ax.set_yticks(y, [u["username"] for u in rows], fontsize=8)
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel("followers (log scale)")
    ax.set_title("Followers per user (latest profile snapshot)")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def plot_likes_vs_age(path: Path, posts: list[dict[str, Any]]) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    per_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in posts:
        per_user[p["user"]].append(p)
    names = sorted(per_user)
    cols = min(6, max(len(names), 1))
    rows = (len(names) + cols - 1) // cols
    height = 1.9 * rows + 0.9
    # fixed margins: constrained layout costs seconds on a grid of 27 log axes
    fig = Figure(figsize=(2.3 * cols, height), dpi=DPI)
    fig.subplots_adjust(left=0.75 / (2.3 * cols), right=0.99, bottom=0.5 / height, top=1 - 0.55 / height,
                        hspace=0.45, wspace=0.32)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharex=True)).ravel()
    for ax, name in zip(axes, names):
        mine = [p for p in per_user[name] if p.get("likes") is not None]
        age = np.array([p["age_at_observation_days"] for p in mine], dtype=float)
        likes = np.maximum(np.array([p["likes"] for p in mine], dtype=float), 1.0)
        ax.scatter(age, likes, s=5, alpha=0.5, linewidths=0, color="#4c72b0")
        if not mine:
            ax.text(0.5, 0.5, "like counts hidden", ha="center", va="center", fontsize=7, transform=ax.transAxes)
        _log_counts(ax)
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    for ax in axes[max(len(names) - cols, 0):len(names)]:  # the lowest panel of each column
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.supxlabel("age of the post when its likes were last read (days)", fontsize=9, y=0.1 / height)
    fig.supylabel("likes (log scale; 0 drawn at 1)", fontsize=9, x=0.05 / (2.3 * cols))
    fig.suptitle("Likes against age at observation, per user", fontsize=11, y=1 - 0.12 / height)
    return save(fig, path)


def plot_targets(path: Path, data: Dataset) -> Path:
    styles = user_styles(sorted({r["user"] for r in data.index}))
    fig = figure(10, 6)
    ax = fig.add_subplot()
    per_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in data.index:
        per_user[r["user"]].append(r)
    for name in sorted(per_user):
        mine = per_user[name]
        ax.scatter([max(r["likes"], 1) for r in mine], [r["target"] for r in mine], s=12, alpha=0.7,
                   linewidths=0, label=name, **styles[name])
    _log_counts(ax, "x", subs=(1.0,))
    ax.set_xlabel("likes (raw, log scale)")
    ax.set_ylabel(f"target: {data.meta['target']}")
    ax.set_title(f"Target ({data.meta['target']}: {TARGET_MEANING.get(data.meta['target'], 'per user')}) against raw likes, "
                 f"{len(data.index):,} dataset images")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7, markerscale=1.6, frameon=False,
              ncols=1 if len(per_user) <= 30 else 2, title="user", title_fontsize=8)
    return save(fig, path)


def _display_image(data: bytes, max_px: int) -> np.ndarray | None:
    """An image for display, at most ``max_px`` on its longer side (None if undecodable)."""
    try:
        return np.asarray(fitted(data, max_px))
    except ImageError as err:
        log.warning("analyze: cannot decode an image for display: %s", err)
        return None


def _show(ax: Axes, image: np.ndarray | None, title: str, **kw: Any) -> None:
    if image is None:
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.imshow(image, **kw)
    ax.set_title(title, fontsize=7.5)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_top_bottom(path: Path, paths: Paths, top: list[dict[str, Any]], bottom: list[dict[str, Any]],
                    key: str) -> Path:
    n = max(len(top), len(bottom), 1)
    fig = figure(2.2 * n, 5.4)
    axes = fig.subplots(2, n, squeeze=False)
    for row, (label, posts) in enumerate((("top", top), ("bottom", bottom))):
        for i in range(n):
            ax = axes[row][i]
            if i >= len(posts):
                ax.set_visible(False)
                continue
            p = posts[i]
            image = _display_image(read_member(paths.shards / p["shard"], p["member"]), 320)
            likes = f"{p['likes']:,} like{'' if p['likes'] == 1 else 's'}"
            value = likes if key == "likes" else f"target {p['target']:.3f} ({likes})"
            _show(ax, image, f"{label} {i + 1}: {p['user']}\n{value}\n{p['date'][:10]}")
    what = "likes (all image posts)" if key == "likes" else "target (dataset images)"
    fig.suptitle(f"The {len(top)} highest and {len(bottom)} lowest by {what}", fontsize=11)
    return save(fig, path)


def plot_preprocessing(path: Path, paths: Paths, post: dict[str, Any], after: np.ndarray) -> Path:
    data = read_member(paths.shards / post["shard"], post["member"])
    fmt, (w, h) = image_info(data)
    before = _display_image(data, 640)
    fig = figure(9, 4.6)
    a, b = fig.subplots(1, 2)
    _show(a, before, f"before: {w} x {h} {fmt}, {len(data) / 1024:.0f} KB\n{post['member']}")
    s = after.shape[0]
    _show(b, after, f"after: {s} x {s} RGB uint8 (as the model sees it,\ndrawn with nearest-neighbour pixels)",
          interpolation="nearest")
    fig.suptitle(f"Preprocessing of post {post['shortcode']} ({post['user']})", fontsize=11)
    return save(fig, path)


# ----------------------------------------------------------------------------------------
# The stage


def run_stage(params: AnalyzeParams, paths: Paths) -> Summary[None]:
    """The DVC stage: the figures under reports/figures/data/ and reports/data.md; returns the counts."""
    clean_outputs(STAGE.outputs(paths, ""))  # left by a killed run
    for table in (paths.posts_table, paths.users_table):
        if not table.exists():
            raise DataError(f"{table} not found: run the export stage first")
    posts = read_jsonl(paths.posts_table)
    users = read_jsonl(paths.users_table)
    export_skipped = read_jsonl(paths.skipped_table) if paths.skipped_table.exists() else []
    data = load_dataset(paths)
    if not data.index:
        raise DataError(f"{paths.dataset_index} is empty: nothing to analyze")
    by_code = {p["shortcode"]: p for p in posts}
    missing = [r["shortcode"] for r in data.index if r["shortcode"] not in by_code]
    if missing:
        raise DataError(f"dataset post {missing[0]} is not in {paths.posts_table}: rerun preprocess")

    example = pick_example(data.index, params.example)  # a bad analyze.example fails before any drawing
    out = paths.data_figures
    out.mkdir(parents=True, exist_ok=True)
    plot_followers(out / "followers.png", users)
    plot_likes_vs_age(out / "likes_vs_age.png", posts)
    plot_targets(out / "targets.png", data)
    if params.rank_by == "likes":
        undecodable = {(s["shard"], s["member"]) for s in data.meta.get("skipped", [])}
        ranked = [p for p in posts if p.get("member") and p.get("likes") is not None
                  and (p["shard"], p["member"]) not in undecodable]
    else:
        ranked = [{**by_code[r["shortcode"]], "target": r["target"]} for r in data.index]
    top, bottom = extremes(ranked, params.top_n, params.rank_by)
    plot_top_bottom(out / "top_bottom.png", paths, top, bottom, params.rank_by)
    plot_preprocessing(out / "preprocessing.png", paths, by_code[example["shortcode"]],
                       np.asarray(data.images[example["row"]]))

    counts = summarize(posts, users, export_skipped, data)
    counts["insights"] = insights.write(params.n_boot, params.seed, data, by_code, paths, paths.insights_page,
                                        out / "insights.png")
    with atomic_open(paths.data_report) as fh:
        fh.write(render_report(counts))
    line = (f"analyze: {counts['users']} users, {counts['posts']} posts, {counts['dataset']} dataset images; "
            f"figures in {paths.data_figures}, counts in {paths.data_report}, what goes with more likes in "
            f"{paths.insights_page}")
    return Summary("analyze", counts, line)


STAGE = Stage(
    name="analyze",
    about="the paper's data-analysis figures and reports/insights.html; nothing depends on it",
    sections=("analyze",),
    reads=lambda paths, item: [
        Dep(paths.rel(paths.raw), "the pictures of the top/bottom grid and the before/after example"),
        Dep(paths.rel(paths.tables)), Dep(paths.rel(paths.dataset))],
    outputs=lambda paths, item: [
        Output(paths.data_report, cache=False),
        Output(paths.insights_page, cache=False,
               note="per photographer, what goes with their more-liked posts (self-contained, offline)"),
        Output(paths.data_figures, "plots", folder=True, cache=False,
               note="PNGs: `dvc plots show` renders each as an image plot; git carries them (cache: false)"),
    ],
    run=lambda params, paths: run_stage(params.analyze, paths),
)
