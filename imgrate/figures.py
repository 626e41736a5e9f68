"""PNG figures: the one helper every figure goes through (:func:`figure`, :func:`save`), and the
evaluate stage's figures (``reports/figures/evaluate/``), drawn with matplotlib's Agg canvas.

DVC renders the same data from ``plots/`` and ``dvclive/`` as interactive HTML
(``dvc plots show``); these PNGs are for the docs, a report or a quick look without a
browser. Each function takes plain arrays and dicts and writes one file atomically. Only
the object-oriented API (``matplotlib.figure.Figure``) is used: no pyplot, no global
backend switch, no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgrate.io import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 110


def figure(width: float, height: float) -> Figure:
    """A new matplotlib figure of ``width`` x ``height`` inches at :data:`DPI` (no pyplot state)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def save(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path``, atomically; the same figure gives the same bytes."""
    with atomic_path(path) as tmp:
        # no Software/date metadata: the same inputs give the same bytes
        fig.savefig(tmp, format="png", metadata={"Software": None})
    return path


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, max(n, 1))
    return (n + cols - 1) // cols, cols


def user_styles(names: Sequence[str]) -> dict[str, dict[str, Any]]:
    """A distinct (colour, marker) per user: tab10's colours x 3 markers, 30 before a repeat
    (every figure of a photographer, evaluate's and analyze's, uses it)."""
    from matplotlib import colormaps

    colours = colormaps["tab10"].colors  # type: ignore[attr-defined]  # a ListedColormap
    markers = ("o", "s", "^")
    return {name: {"color": colours[i % 10], "marker": markers[(i // 10) % 3]} for i, name in enumerate(sorted(names))}


def predicted_vs_actual(
    path: Path,
    y_true: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    users: np.ndarray,
    scores: Mapping[str, Mapping[str, Any]],
) -> Path:
    """One scatter per model: actual target (x) against prediction (y); each photographer a
    colour and marker of their own, named in one legend beside the panels."""
    names = list(predictions)
    rows, cols = _grid(len(names))
    fig = figure(3.2 * cols + 2.2, 3.0 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    users = np.asarray(users)
    styles = user_styles([str(u) for u in np.unique(users)])
    for ax, name in zip(axes, names):
        for user, style in styles.items():
            mine = users == user
            ax.scatter(y_true[mine], np.asarray(predictions[name])[mine], s=10, alpha=0.75, linewidths=0,
                       label=user, **style)
        rho = scores.get(name, {}).get("spearman_within")
        ax.set_title(f"{name}\nSpearman within users {_fmt(rho)}", fontsize=9)
        ax.set_xlabel("actual", fontsize=8)
        ax.set_ylabel("predicted", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if names:
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside right center", fontsize=6, markerscale=1.4, frameon=False,
                   title="photographer", title_fontsize=7)
    fig.suptitle("Test split: predicted against actual", fontsize=10)
    return save(fig, path)


def spearman_per_user(path: Path, per_user: Mapping[str, Mapping[str, float]],
                      counts: Mapping[str, int] | None = None) -> Path:
    """Within-user Spearman of each model for each user (one marker per model); ``counts``:
    each user's test posts, shown beside the name (a Spearman over 7 posts is noisy)."""
    users = sorted({u for values in per_user.values() for u in values})
    fig = figure(7.5, max(2.5, 0.28 * len(users) + 1.2))
    ax = fig.add_subplot()
    y = np.arange(len(users))
    markers = "osD^v<>ph*"
    for i, (name, values) in enumerate(per_user.items()):
        x = np.array([values.get(u, np.nan) for u in users], dtype=float)
        ax.scatter(x, y, label=name, marker=markers[i % len(markers)], s=22, alpha=0.8)
    ax.axvline(0.0, color="grey", lw=0.8, ls="--")
    labels = [f"{u} (n={counts[u]})" if counts and u in counts else u for u in users]
    ax.set_yticks(y, labels, fontsize=7)
    ax.set_xlim(-1.05, 1.05)
    ax.set_xlabel("Spearman correlation within the user's test posts (n = test posts)")
    ax.set_title("Within-user Spearman per photographer (0 = chance)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return save(fig, path)


def learning_curves(path: Path, histories: Mapping[str, Sequence[Mapping[str, float]]],
                    losses: Mapping[str, str] | None = None, kept: Mapping[str, int] | None = None) -> Path:
    """Train and validation loss per epoch, one panel per trained model (``losses``: the
    name of each model's training loss, ``mse`` by default; ``kept``: the epoch whose
    weights the model file holds, marked by a vertical line)."""
    names = list(histories)
    rows, cols = _grid(len(names), max_cols=3)
    fig = figure(4.0 * cols, 3.0 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        hist = histories[name]
        epochs = [h["epoch"] for h in hist]
        for key, label in (("train_loss", "train"), ("val_loss", "validation")):
            ax.plot(epochs, [h.get(key, np.nan) for h in hist], marker=".", label=label)
        if kept and name in kept:
            ax.axvline(kept[name], color="black", lw=0.9, ls="--", label=f"kept: epoch {kept[name]}")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_ylabel(f"{(losses or {}).get(name, 'mse')} loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if not names:
        axes[0].set_visible(True)
        axes[0].text(0.5, 0.5, "no training history", ha="center", va="center")
    return save(fig, path)


def ranking_accuracy(path: Path, scores: Mapping[str, Mapping[str, Any]], set_sizes: Sequence[int]) -> Path:
    """The paper's ranking accuracy on mixed-user sets beside within-user sets, with chance."""
    names = list(scores)
    fig = figure(4.2 * len(set_sizes), 0.32 * len(names) + 1.6)
    axes = np.atleast_1d(fig.subplots(1, len(set_sizes), sharey=True, squeeze=False)).ravel()
    y = np.arange(len(names))
    for ax, k in zip(axes, set_sizes):
        for offset, key, label in ((-0.18, "ranking_accuracy_mixed", "mixed users (paper)"),
                                   (0.18, "ranking_accuracy_within", "within one user")):
            x = [_num(scores[n].get(key, {}).get(str(k))) for n in names]
            ax.barh(y + offset, x, height=0.36, label=label)
        ax.axvline(1.0 / k, color="black", lw=0.8, ls="--", label="chance 1/k")
        ax.set_title(f"k = {k}", fontsize=9)
        ax.set_xlabel("ranking accuracy", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_yticks(y, names)
    axes[0].invert_yaxis()
    axes[-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("Ranking accuracy: mixed-user sets reward recognising the photographer", fontsize=10)
    return save(fig, path)


def _num(x: Any) -> float:
    return float(x) if x is not None else np.nan


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"
