"""What goes with a photographer's more-liked posts: ``reports/insights.html`` (analyze stage).

For every photographer of the dataset, the within-user Spearman rank correlation of the
target (any target orders one user's posts as their likes do) with

- properties of the photo (:mod:`imgrate.photo`: brightness, contrast, crushed blacks, blown
  highlights, saturation, colourfulness, warmth, sharpness), measured on a
  :data:`MEASURE_PX` px thumbnail decoded from the shards, and
- properties of the posting: the hour of day (UTC: Instagram gives no time zone), whether it
  was posted at the weekend (Saturday or Sunday, UTC), and the days since the photographer's
  previous post (any post, videos included),

each with a percentile bootstrap interval (posts resampled within the photographer,
``analyze.n_boot`` times) and marked when the interval excludes 0. A photographer's sentences
claim only marked properties. The section across photographers averages the per-photographer
correlations, with an interval from resampling photographers. These are associations in past
posts, not causes; and with 11 properties per photographer about one interval in 20 excludes
0 by chance alone, which the page says.

The page is self-contained (:mod:`imgrate.pages`), as is the heatmap PNG beside the data
figures, which ``dvc plots show`` draws.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from imgrate import pages, photo
from imgrate.dataset import Dataset
from imgrate.errors import ImageError
from imgrate.figures import figure, save
from imgrate.images import fitted, load_thumbnail
from imgrate.io import atomic_open
from imgrate.paths import Paths
from imgrate.shards import iter_members

log = logging.getLogger(__name__)

MEASURE_PX = 128  # photo properties are measured on this square thumbnail
SHOW_N = 3  # top and bottom posts shown per photographer
SHOW_PX = 160  # their thumbnails' longer side
LEVEL = 0.95  # the intervals' coverage
MIN_ACROSS = 5  # photographers needed for an interval across photographers (fewer: a bootstrap says little)

POSTING: tuple[str, ...] = ("hour", "weekend", "days_since_previous")
PROPERTIES: tuple[str, ...] = (*photo.PROPERTIES, *POSTING)
WORDS: dict[str, tuple[str, str]] = {
    **{k: (f"{more} photos", f"{less} photos") for k, (more, less) in photo.WORDS.items()},
    "hour": ("posts made later in the day (UTC)", "posts made earlier in the day (UTC)"),
    "weekend": ("posts made at the weekend", "posts made on weekdays"),
    "days_since_previous": ("posts after a longer pause", "posts soon after the previous one"),
}
LABELS: dict[str, str] = {
    **{k: k.replace("_", " ") for k in photo.PROPERTIES},
    "hour": "hour of day (UTC)", "weekend": "weekend (Sat/Sun)", "days_since_previous": "days since previous post",
}


@dataclass(frozen=True)
class Correlation:
    rho: float | None  # None: not measurable (fewer than 4 posts, or a property constant for this user)
    low: float | None = None
    high: float | None = None
    n: int = 0

    @property
    def marked(self) -> bool:
        """The interval excludes 0."""
        return self.low is not None and self.high is not None and (self.low > 0 or self.high < 0)


# ----------------------------------------------------------------------------------------
# Statistics (pure)


def _rank_rows(a: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return np.asarray(rankdata(a, axis=-1), dtype=np.float64)  # ties share their average rank


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def spearman_interval(target: np.ndarray, x: np.ndarray, n_boot: int, rng: np.random.Generator) -> Correlation:
    """Spearman's rho of ``target`` with ``x`` (rows where ``x`` is finite) and a percentile
    bootstrap interval over the rows; resamples where either side is constant are left out."""
    keep = np.isfinite(x)
    t, v = np.asarray(target, dtype=np.float64)[keep], np.asarray(x, dtype=np.float64)[keep]
    n = len(t)
    if n < 4 or np.ptp(v) == 0 or np.ptp(t) == 0:
        return Correlation(None, n=n)
    rho = float(_pearson_rows(_rank_rows(t), _rank_rows(v)))
    idx = rng.integers(0, n, size=(n_boot, n))
    boot = _pearson_rows(_rank_rows(t[idx]), _rank_rows(v[idx]))
    boot = boot[np.isfinite(boot)]
    if len(boot) < n_boot // 2:
        return Correlation(round(rho, 3), n=n)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return Correlation(round(rho, 3), round(float(low), 3), round(float(high), 3), n)


def mean_interval(values: Sequence[float], n_boot: int, rng: np.random.Generator) -> Correlation:
    """The mean of per-photographer correlations and a bootstrap interval over photographers."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < MIN_ACROSS:
        return Correlation(round(float(v.mean()), 3) if len(v) else None, n=len(v))
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Correlation(round(float(v.mean()), 3), round(float(low), 3), round(float(high), 3), len(v))


def posting_properties(posts: Sequence[dict[str, Any]]) -> dict[str, tuple[float, float, float]]:
    """Per shortcode: (hour of day UTC, 1.0 at the weekend else 0.0, days since the same
    user's previous post, NaN for the first)."""
    by_user: dict[str, list[tuple[datetime, str]]] = defaultdict(list)
    for p in posts:
        by_user[p["user"]].append((datetime.fromisoformat(p["date"]), p["shortcode"]))
    out = {}
    for mine in by_user.values():
        mine.sort()
        previous: datetime | None = None
        for when, code in mine:
            gap = (when - previous).total_seconds() / 86400 if previous is not None else math.nan
            out[code] = (when.hour + when.minute / 60, 1.0 if when.weekday() >= 5 else 0.0, gap)
            previous = when
    return out


# ----------------------------------------------------------------------------------------
# Measuring the dataset's photos (one pass over the shards)


@dataclass
class Measured:
    values: np.ndarray  # float64 N x len(PROPERTIES), one row per dataset row; NaN where unknown
    thumbs: dict[str, bytes]  # shortcode -> display JPEG, for the posts shown


def measure(data: Dataset, posts_by_code: dict[str, dict[str, Any]], paths: Paths, show: set[str]) -> Measured:
    """Every dataset row's properties; display JPEGs of the posts in ``show``."""
    values = np.full((len(data.index), len(PROPERTIES)), np.nan)
    posting = posting_properties(list(posts_by_code.values()))
    wanted: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, r in enumerate(data.index):
        post = posts_by_code[r["shortcode"]]
        wanted[post["shard"]][post["member"]].append(i)
        values[i, len(photo.PROPERTIES):] = posting[r["shortcode"]]
    thumbs: dict[str, bytes] = {}
    for shard in sorted(wanted):
        members = wanted[shard]
        rows: list[int] = []
        images: list[np.ndarray] = []
        for name, blob in iter_members(paths.shards / shard, set(members)):
            try:
                image = load_thumbnail(blob, MEASURE_PX)
            except ImageError as err:
                log.warning("insights: %s in %s: %s", name, shard, err)
                continue
            for i in members[name]:
                rows.append(i)
                images.append(image)
                code = data.index[i]["shortcode"]
                if code in show and code not in thumbs:
                    thumbs[code] = pages.jpeg(fitted(blob, SHOW_PX), SHOW_PX)
        if images:
            values[rows, :len(photo.PROPERTIES)] = photo.describe(np.stack(images))
    return Measured(values, thumbs)


# ----------------------------------------------------------------------------------------
# The findings


@dataclass
class UserFindings:
    user: str
    n: int
    correlations: dict[str, Correlation]
    top: list[dict[str, Any]]
    bottom: list[dict[str, Any]]


def extremes(rows: list[dict[str, Any]], n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``n`` best posts by target, and the ``n`` worst that are not among them (worst first)."""
    ranked = sorted(rows, key=lambda r: (-r["target"], r["shortcode"]))
    return ranked[:n], ranked[::-1][:max(0, min(n, len(ranked) - n))]


def findings(data: Dataset, values: np.ndarray, n_boot: int, seed: int) -> list[UserFindings]:
    rng = np.random.default_rng(seed)
    by_user: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(data.index):
        by_user[r["user"]].append(i)
    out = []
    for user in sorted(by_user):
        rows = by_user[user]
        target = np.array([data.index[i]["target"] for i in rows], dtype=np.float64)
        corr = {k: spearman_interval(target, values[rows, j], n_boot, rng) for j, k in enumerate(PROPERTIES)}
        top, bottom = extremes([data.index[i] for i in rows], SHOW_N)
        out.append(UserFindings(user, len(rows), corr, top, bottom))
    return out


def across(users: list[UserFindings], n_boot: int, seed: int) -> dict[str, Correlation]:
    """Per property: the mean of the photographers' ρ (those measurable) with an interval over photographers."""
    rng = np.random.default_rng(seed + 1)
    out = {}
    for k in PROPERTIES:
        rhos = [rho for u in users if (rho := u.correlations[k].rho) is not None]
        out[k] = mean_interval(rhos, n_boot, rng)
    return out


def _fmt(c: Correlation) -> str:
    if c.rho is None:
        return "not measurable"
    if c.low is None:
        return f"ρ = {c.rho:.2f}"
    return f"ρ = {c.rho:.2f} [{c.low:.2f}, {c.high:.2f}]"


def sentences(lead: str, corr: dict[str, Correlation], limit: int = 2) -> list[str]:
    """At most ``limit`` plain sentences, strongest first, about marked properties only
    (``lead`` starts each: "Across photographers,", "alpha_lens's")."""
    marked = sorted((k for k, c in corr.items() if c.marked), key=lambda k: (-abs(corr[k].rho or 0), k))
    out = []
    for k in marked[:limit]:
        c = corr[k]
        more, less = WORDS[k]
        subject = more if (c.rho or 0) > 0 else less
        out.append(f"{lead} {subject} tend to get more likes: {_fmt(c)}.")
    return out


# ----------------------------------------------------------------------------------------
# The page and the figure


def _table(corr: dict[str, Correlation]) -> str:
    rows = []
    for k in PROPERTIES:
        c = corr[k]
        cls = "" if not c.marked else (" pos" if (c.rho or 0) > 0 else " neg")
        interval = "-" if c.low is None else f"[{c.low:.2f}, {c.high:.2f}]"
        rows.append(f"<tr><td>{pages.esc(LABELS[k])}</td><td class='num{cls}'>"
                    f"{'-' if c.rho is None else f'{c.rho:+.2f}'}</td><td class='num{cls}'>{interval}</td>"
                    f"<td>{'excludes 0' if c.marked else ''}</td></tr>")
    return ("<table><tr><th>property</th><th>ρ</th><th>95% interval</th><th></th></tr>"
            + "".join(rows) + "</table>")


def _thumbs(title: str, rows: list[dict[str, Any]], thumbs: dict[str, bytes], key: str) -> str:
    figs = []
    for r in rows:
        jpeg = thumbs.get(r["shortcode"])
        picture = (pages.img(jpeg, f"{r['user']} {r['shortcode']}", "post", shortcode=r["shortcode"]) if jpeg
                   else "<div class='muted'>(unreadable)</div>")
        figs.append(f"<figure>{picture}<figcaption>{pages.esc(r['date'][:10])}<br>{r['likes']:,} likes"
                    f" · {key} {r['target']:.2f}</figcaption></figure>")
    return f"<div><b>{pages.esc(title)}</b><div class='thumbs'>{''.join(figs)}</div></div>"


def render(users: list[UserFindings], pooled: dict[str, Correlation], thumbs: dict[str, bytes], target: str,
           n_boot: int) -> str:
    tests = sum(1 for u in users for c in u.correlations.values() if c.low is not None)
    marks = sum(1 for u in users for c in u.correlations.values() if c.marked)
    parts = [pages.start("imgrate: what goes with more likes", "What goes with more likes, per photographer")]
    parts.append(
        f"<p class='lead'>For each photographer: the rank correlation (Spearman's ρ) between how well a post did "
        f"(its target, <code>{pages.esc(target)}</code>, which orders one photographer's posts as their likes do) "
        "and properties of the photo and of the posting, over the posts in the dataset. ρ runs from −1 to 1; 0 means "
        f"no relation. Each ρ has a {LEVEL:.0%} bootstrap interval ({n_boot} resamples of the posts); only where it "
        "excludes 0 does the page claim anything.</p>"
        "<p class='warn'>These are associations in past posts, not causes: warmer photos may do better because of "
        f"what they show. By chance alone about 1 interval in 20 excludes 0: here {marks} of {tests} intervals do, "
        f"where chance alone would give about {round(tests * (1 - LEVEL))}. A pattern shared across photographers "
        "(the first section) is worth more than one photographer's single mark.</p>")
    parts.append("<h2 id='across'>Across photographers</h2>")
    said = sentences("Across photographers,", pooled)
    parts.append("".join(f"<p class='claim'>{pages.esc(s)}</p>" for s in said) or
                 "<p class='noclaim'>No property goes with more likes across photographers: every interval of "
                 "the average includes 0.</p>")
    parts.append(f"<p class='muted'>The average of the {len(users)} photographers' ρ, with an interval from "
                 f"resampling the photographers (given from {MIN_ACROSS} photographers on); the counts say how many "
                 "photographers' own intervals lie above or below 0.</p>")
    rows = []
    for k in PROPERTIES:
        c = pooled[k]
        up = sum(1 for u in users if u.correlations[k].marked and (u.correlations[k].rho or 0) > 0)
        down = sum(1 for u in users if u.correlations[k].marked and (u.correlations[k].rho or 0) < 0)
        cls = "" if not c.marked else (" pos" if (c.rho or 0) > 0 else " neg")
        interval = "-" if c.low is None else f"[{c.low:.2f}, {c.high:.2f}]"
        rows.append(f"<tr><td>{pages.esc(LABELS[k])}</td><td class='num{cls}'>"
                    f"{'-' if c.rho is None else f'{c.rho:+.2f}'}</td><td class='num{cls}'>{interval}</td>"
                    f"<td class='num'>{up}</td><td class='num'>{down}</td></tr>")
    parts.append("<table><tr><th>property</th><th>mean ρ</th><th>95% interval</th><th>photographers above 0</th>"
                 f"<th>below 0</th></tr>{''.join(rows)}</table>")
    parts.append("<p class='muted'>Photographers: " + ", ".join(
        f"<a href='#u-{i}'>{pages.esc(u.user)}</a>" for i, u in enumerate(users)) + "</p>")
    for i, u in enumerate(users):
        parts.append(f"<h2 id='u-{i}'>{pages.esc(u.user)} <span class='muted'>({u.n} posts)</span></h2>")
        said = sentences(f"{u.user}'s", u.correlations)
        parts.append("".join(f"<p class='claim'>{pages.esc(s)}</p>" for s in said) or
                     f"<p class='noclaim'>Nothing stands out for {pages.esc(u.user)}: every interval includes 0, so "
                     "no property can be said to go with more likes here.</p>")
        parts.append(_table(u.correlations))
        parts.append(_thumbs("Most liked", u.top, thumbs, target))
        if u.bottom:
            parts.append(_thumbs("Least liked", u.bottom, thumbs, target))
    parts.append(pages.END)
    return "\n".join(parts)


def plot_heatmap(path: Path, users: list[UserFindings], pooled: dict[str, Correlation]) -> Path:
    """Photographers (and the average) x properties, coloured by ρ; marked cells carry a dot."""
    names = ["(average)", *(u.user for u in users)]
    grid = [[pooled[k] for k in PROPERTIES], *([u.correlations[k] for k in PROPERTIES] for u in users)]
    rho = np.array([[np.nan if c.rho is None else c.rho for c in row] for row in grid])
    fig = figure(1.6 + 0.55 * len(PROPERTIES), 1.6 + 0.26 * len(names))
    ax = fig.add_subplot()
    im = ax.imshow(np.ma.masked_invalid(rho), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
    for y, row in enumerate(grid):
        for x, c in enumerate(row):
            if c.marked:
                ax.plot(x, y, "o", color="black", markersize=3)
    ax.set_xticks(range(len(PROPERTIES)), [LABELS[k] for k in PROPERTIES], rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_title("Within-photographer rank correlation with likes (dot: 95% interval excludes 0)", fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.6, label="Spearman ρ")
    return save(fig, path)


def write(n_boot: int, seed: int, data: Dataset, posts_by_code: dict[str, dict[str, Any]], paths: Paths,
          page: Path, heatmap: Path) -> dict[str, Any]:
    """Measure, correlate, and write the page and the heatmap; returns the counts."""
    show = set()
    for user_rows in _by_user(data).values():
        top, bottom = extremes(user_rows, SHOW_N)
        show |= {r["shortcode"] for r in top + bottom}
    measured = measure(data, posts_by_code, paths, show)
    users = findings(data, measured.values, n_boot, seed)
    pooled = across(users, n_boot, seed)
    with atomic_open(page) as fh:
        fh.write(render(users, pooled, measured.thumbs, str(data.meta["target"]), n_boot))
    plot_heatmap(heatmap, users, pooled)
    return {"photographers": len(users),
            "marked": sum(1 for u in users for c in u.correlations.values() if c.marked),
            "marked_across": [k for k, c in pooled.items() if c.marked]}


def _by_user(data: Dataset) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in data.index:
        out[r["user"]].append(r)
    return out
