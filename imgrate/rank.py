"""Ranking photos with one or every trained model: what ``imgrate rank`` and ``predict`` do.

:func:`load_models` turns ``--model`` into model runs: a model file, a registry name, ``all``
(every trained model of the registry, :func:`imgrate.models.model_names`) or nothing (the trained model with the
best validated within-user Spearman, from its model file). Each run carries how far its order
can be trusted: the test-split within-user Spearman and pairwise accuracy that the evaluate
stage wrote to ``reports/evaluate.json`` for that very file.

:func:`rank_files` streams the files in batches: each file is checked by type and size before
it is read (:func:`imgrate.images.read_file`), decoded once per input size the models need and
once for display, scored by every model, and forgotten; only its numbers, its near-duplicate
signature (:mod:`imgrate.duplicates`) and, for the HTML sheet, a 256 px JPEG in a temporary
spool file are kept. Memory therefore stays flat however many photos the folder holds.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from imgrate import duplicates, pages
from imgrate.errors import ImageError, ImgrateError, ModelError, safe_text
from imgrate.images import MAX_FILE_BYTES, decode_image, fitted_image, read_file
from imgrate.io import atomic_open
from imgrate.models import model_names
from imgrate.paths import Paths, find_project
from imgrate.predict import Placement, Scorer
from imgrate.progress import track

BATCH = 64  # files decoded and scored at a time (the scorer's batch)
EVALUATE_JSON_LIMIT = 16 * 1024 * 1024  # reports/evaluate.json is ours, but read as input: bounded
CSV_COLUMNS = ("rank", "file", "score", "percentile", "unusual", "distance_percentile", "model", "group")


@dataclass
class Evaluation:
    """The test-split numbers of one model from reports/evaluate.json."""

    spearman: float
    spearman_ci: tuple[float, float]
    pairwise: float
    n_test: int
    n_users: int
    stale: bool  # the model file is newer than the evaluation


@dataclass
class ModelRun:
    name: str  # the registry name the model file says
    path: Path
    scorer: Scorer
    validated: float | None  # validation-split within-user Spearman of the kept epoch (model file)
    evaluation: Evaluation | None


@dataclass
class Photo:
    file: str
    scores: dict[str, float]
    placements: dict[str, Placement]
    signature: duplicates.Signature
    thumb: tuple[int, int] | None = None  # (offset, length) of its JPEG in the spool
    rank: int = 0
    group: int = 0  # the rank of the best photo of its near-duplicate group (its own rank when alone)


@dataclass
class Ranking:
    runs: list[ModelRun]  # the primary (ordering) model first
    user: str | None
    photos: list[Photo]  # best first by the primary model
    errors: list[dict[str, str]]
    agreement: dict[tuple[str, str], float | None] = field(default_factory=dict)
    spool: IO[bytes] | None = None

    @property
    def primary(self) -> ModelRun:
        return self.runs[0]

    def pool(self) -> str | None:
        """What the primary model's percentiles are taken against, in words."""
        return self.primary.scorer.describe(self.user).get("percentile_of")

    def thumbnail(self, photo: Photo) -> bytes | None:
        if self.spool is None or photo.thumb is None:
            return None
        self.spool.seek(photo.thumb[0])
        return self.spool.read(photo.thumb[1])

    def members(self) -> dict[int, list[Photo]]:
        """Photos by group, each group best first."""
        out: dict[int, list[Photo]] = {}
        for p in self.photos:
            out.setdefault(p.group, []).append(p)
        return out

    def close(self) -> None:
        if self.spool is not None:
            self.spool.close()
            self.spool = None


# --------------------------------------------------------------------------- the models


def _finite(value: Any, low: float = -math.inf, high: float = math.inf) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) and low <= v <= high else None


def read_evaluation(paths: Paths, name: str, model_file: Path) -> Evaluation | None:
    """``name``'s entry of ``reports/evaluate.json`` when that report describes ``model_file``
    (the project's ``models/<name>.pt``); None when there is none or it does not parse."""
    report = paths.stage_report("evaluate")
    try:
        if paths.model(name).resolve() != model_file.resolve() or not report.is_file():
            return None
        if report.stat().st_size > EVALUATE_JSON_LIMIT:
            return None
        entry = json.loads(report.read_text(encoding="utf-8")).get(name)
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(entry, dict):
        return None
    s, p = _finite(entry.get("spearman_within"), -1, 1), _finite(entry.get("pairwise_within"), 0, 1)
    ci = entry.get("spearman_within_ci")
    lo, hi = (_finite(ci[0], -1, 1), _finite(ci[1], -1, 1)) if isinstance(ci, list) and len(ci) == 2 else (None, None)
    n_test, n_users = _finite(entry.get("n_test"), 0), _finite(entry.get("n_users"), 0)
    if s is None or p is None or lo is None or hi is None:
        return None
    stale = model_file.stat().st_mtime > report.stat().st_mtime + 1
    return Evaluation(s, (lo, hi), p, int(n_test or 0), int(n_users or 0), stale)


def _run(path: Path, paths: Paths | None) -> ModelRun:
    scorer = Scorer(path)
    name = scorer.info.model
    validated = _finite(scorer.info.summary.get("val_spearman_within"), -1, 1)
    project = find_project(path.resolve().parent)
    where = Paths(project) if project else paths
    evaluation = read_evaluation(where, name, path) if where else None
    return ModelRun(name, path, scorer, validated, evaluation)


def trained_models(paths: Paths) -> list[Path]:
    """The model files of the registry's models that exist in the project, in registry order."""
    return [paths.model(name) for name in model_names() if paths.model(name).is_file()]


def load_models(choice: str | None, paths: Paths) -> list[ModelRun]:
    """The model runs for ``--model``, the ordering one first: a model file, a registry name,
    ``all`` (every trained model), or None (the trained model with the best validated score)."""
    if choice is not None and choice != "all":
        names = model_names()
        path = paths.model(choice) if choice in names and not Path(choice).exists() else Path(choice)
        if not path.is_file():
            raise ModelError(f"model file not found: {safe_text(path)}" +
                             ("" if choice in names else f" (a model file, one of {', '.join(names)}, or all)"))
        return [_run(path, paths)]
    found = trained_models(paths)
    if not found:
        raise ModelError(f"no trained model in {paths.models}: run `dvc repro` (or `imgrate train MODEL`), "
                         "or pass --model FILE")
    runs = sorted((_run(p, paths) for p in found),
                  key=lambda r: (-(r.validated if r.validated is not None else -math.inf), r.name))
    return runs if choice == "all" else runs[:1]


# --------------------------------------------------------------------------- the files


def photo_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Every non-hidden entry of ``folder`` that is not a folder, sorted: regular files and
    anything else (a FIFO, a link to a device), which :func:`rank_files` reports, not reads."""
    if not folder.is_dir():
        raise ImageError(f"{safe_text(folder)}: not a folder")
    found = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in found if not p.is_dir() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def _batches(items: Iterable[Path], n: int) -> Iterator[list[Path]]:
    batch: list[Path] = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


def rank_files(files: list[Path], runs: list[ModelRun], user: str | None = None, *, thumbnails: bool = False,
               limit: int = MAX_FILE_BYTES) -> Ranking:
    """Score ``files`` with every run, best first by the first run; near-duplicates grouped.
    A file that is not a photo (or too big, or unreadable) is reported in the errors with the
    reason, the others are still ranked. With ``thumbnails`` each photo's 256 px JPEG is kept
    in a temporary spool file for the HTML sheet (:meth:`Ranking.close` removes it)."""
    sizes = sorted({r.scorer.input_size for r in runs})
    # the spool outlives this function (the sheet reads it): Ranking.close() closes it, and an
    # unnamed temporary file leaves nothing behind however the process ends
    spool = tempfile.TemporaryFile(prefix="imgrate-thumbs-") if thumbnails else None  # noqa: SIM115
    try:
        return _rank(files, runs, user, spool, sizes, limit)
    except BaseException:
        if spool is not None:
            spool.close()
        raise


def _rank(files: list[Path], runs: list[ModelRun], user: str | None, spool: IO[bytes] | None, sizes: list[int],
          limit: int) -> Ranking:
    photos: list[Photo] = []
    errors: list[dict[str, str]] = []
    for batch in _batches(track(files, "ranking photos", total=len(files)), BATCH):
        names: list[Path] = []
        arrays: dict[int, list[np.ndarray]] = {s: [] for s in sizes}
        for path in batch:
            try:
                data = read_file(path, limit)
                decoded = {s: decode_image(data, s, path) for s in sizes}
                shown = fitted_image(data, pages.THUMB_PX, path)
            except ImageError as err:
                errors.append({"file": str(path), "error": str(err)})
                continue
            thumb = None
            if spool is not None:
                jpeg = pages.jpeg(shown)
                thumb = (spool.seek(0, os.SEEK_END), len(jpeg))
                spool.write(jpeg)
            photos.append(Photo(str(path), {}, {}, duplicates.signature(shown), thumb))
            names.append(path)
            for s in sizes:
                arrays[s].append(decoded[s])
        if not names:
            continue
        mine = photos[-len(names):]
        for run in runs:
            images = np.stack(arrays[run.scorer.input_size])
            scores = run.scorer.score_images(images)
            for photo, score, placement in zip(mine, scores, run.scorer.place(scores, images, user)):
                photo.scores[run.name] = float(score)
                photo.placements[run.name] = placement
    primary = runs[0].name
    photos.sort(key=lambda p: (-p.scores[primary], p.file))
    for i, p in enumerate(photos, start=1):
        p.rank = i
    for p, g in zip(photos, duplicates.groups([p.signature for p in photos])):
        p.group = g + 1  # groups() numbers a group by its first (here: best) photo's index
    ranking = Ranking(runs, user, photos, errors, spool=spool)
    ranking.agreement = agreement(ranking)
    return ranking


def agreement(ranking: Ranking) -> dict[tuple[str, str], float | None]:
    """Spearman rank correlation of every two models' scores over the ranked photos (None
    with fewer than 3 photos or when a model gives every photo the same score)."""
    from scipy.stats import spearmanr

    out: dict[tuple[str, str], float | None] = {}
    names = [r.name for r in ranking.runs]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            x = [p.scores[a] for p in ranking.photos]
            y = [p.scores[b] for p in ranking.photos]
            rho = float(spearmanr(x, y).statistic) if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0 else None
            out[(a, b)] = None if rho is None or not math.isfinite(rho) else round(rho, 3)
    return out


# --------------------------------------------------------------------------- in words


def trust_words(run: ModelRun) -> str:
    """How far to trust ``run``'s order, in plain words, from its evaluation."""
    e = run.evaluation
    if e is None:
        if run.validated is not None and run.validated <= 0.1:
            return (f"{run.name} has no evaluation of this model file in reports/evaluate.json, and its validation "
                    f"within-user Spearman was {run.validated:.2f}, no better than chance: do not rely on this order.")
        val = f" (its validation within-user Spearman was {run.validated:.2f})" if run.validated is not None else ""
        return (f"{run.name} has no evaluation of this model file in reports/evaluate.json{val}: "
                "run `dvc repro` to measure how well it orders photos before trusting the order.")
    lo, hi = e.spearman_ci
    numbers = (f"within-photographer rank correlation {e.spearman:.2f} (95% interval {lo:.2f} to {hi:.2f}); "
               f"of two test photos by the same photographer it put the more-liked first {100 * e.pairwise:.0f}% "
               f"of the time, where a coin would manage 50%")
    stale = (" The model file is newer than that evaluation: rerun `dvc repro` for up-to-date numbers."
             if e.stale else "")
    where = f"On {e.n_test} test photos of {e.n_users} photographers" if e.n_test else "On its test photos"
    if lo <= 0:
        return (f"{where}, {run.name} ordered photos no better than chance could have: {numbers}. "
                f"Do not rely on this order.{stale}")
    strength = ("a weak" if e.spearman < 0.2 else "a modest" if e.spearman < 0.4
                else "a moderate" if e.spearman < 0.6 else "a fairly strong")
    return (f"{where}, {run.name} was {strength} guide: {numbers}. Use the order to shortlist, "
            f"not to decide; neighbouring ranks are close to a coin toss.{stale}")


# --------------------------------------------------------------------------- outputs


def _csv_text(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text, never as a formula (OWASP: a leading ')."""
    s = str(value)
    return "'" + s if s[:1] in ("=", "+", "-", "@", "\t", "\r") else s


def _num(value: float | None, digits: int = 6) -> str:
    return "" if value is None else f"{round(value, digits)}"


def write_csv(ranking: Ranking, path: Path) -> None:
    """One row per photo, best first: :data:`CSV_COLUMNS` for the ordering model, then a
    score and percentile column per model when there are several."""
    primary = ranking.primary.name
    extra = [r.name for r in ranking.runs] if len(ranking.runs) > 1 else []
    with atomic_open(path) as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow([*CSV_COLUMNS, *(f"{k}_{n}" for n in extra for k in ("score", "percentile"))])
        for p in ranking.photos:
            pl = p.placements[primary]
            row: list[object] = [p.rank, _csv_text(p.file), _num(p.scores[primary]), _num(pl.percentile, 1),
                                 str(pl.unusual).lower(), _num(pl.distance_percentile, 1), primary, p.group]
            for n in extra:
                row += [_num(p.scores[n]), _num(p.placements[n].percentile, 1)]
            w.writerow(row)


def to_json(ranking: Ranking) -> dict[str, Any]:
    """``--json``: the ordering model's description, one entry per photo, the errors."""
    primary = ranking.primary
    out = {**primary.scorer.describe(ranking.user), "trust": trust_words(primary)}
    out["models"] = [{"model": r.name, "file": str(r.path), "validated_spearman_within": r.validated,
                      "test_spearman_within": r.evaluation.spearman if r.evaluation else None,
                      "test_pairwise_within": r.evaluation.pairwise if r.evaluation else None}
                     for r in ranking.runs]
    out["agreement"] = [{"models": [a, b], "spearman": rho} for (a, b), rho in ranking.agreement.items()]
    scores = []
    for p in ranking.photos:
        pl = p.placements[primary.name]
        entry: dict[str, Any] = {"rank": p.rank, "file": p.file, "score": p.scores[primary.name],
                                 "percentile": pl.percentile, "distance_percentile": pl.distance_percentile,
                                 "unusual": pl.unusual, "group": p.group}
        if len(ranking.runs) > 1:
            entry["by_model"] = {n: {"score": p.scores[n], "percentile": p.placements[n].percentile} for n in p.scores}
        scores.append(entry)
    out["scores"] = scores
    out["errors"] = ranking.errors
    return out


def check_outputs(*outputs: Path | None) -> None:
    """Fail before any photo is read when an output cannot be written (a missing folder)."""
    for out in outputs:
        if out is not None and not out.parent.is_dir():
            raise ImgrateError(f"cannot write {safe_text(out)}: the folder {safe_text(out.parent)} does not exist")
