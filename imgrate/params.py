"""Typed params: one frozen dataclass per params.yaml section.

Field names are the params.yaml keys. :func:`load_params` rejects unknown keys, missing
keys, wrong types and values out of a field's range (:func:`param`) with a
:class:`ParamsError` that names the key (``train.paper_cnn.lr``).

A model's section ``train.<model>`` is a dataclass of its own module
(:mod:`imgrate.models`), checked by the same rules through :func:`parse_section` when the
model is used; this module never names a model.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import types
import typing
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin
from urllib.parse import unquote

import yaml

from imgrate.errors import DataError, ParamsError, excerpt
from imgrate.io import read_utf8

T = TypeVar("T")

RANGE = "imgrate.range"  # field metadata: the bounds :func:`param` gives a field
SECTIONS = "imgrate.sections"  # field metadata: the field collects the other keys as sections


@dataclass(frozen=True)
class Range:
    """Bounds of a number (None: unbounded on that side); a null value is not checked."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    hint: str = ""

    def holds(self, v: float) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def describe(self) -> str:
        lo = f"{self.ge:g}" if self.ge is not None else f"{self.gt:g}" if self.gt is not None else None
        hi = f"{self.le:g}" if self.le is not None else f"{self.lt:g}" if self.lt is not None else None
        if lo is not None and hi is not None:
            if self.ge is not None and self.le is not None:
                return f"between {lo} and {hi}"
            return f"in {'[' if self.ge is not None else '('}{lo}, {hi}{']' if self.le is not None else ')'}"
        if lo is not None:
            return f"at least {lo}" if self.ge is not None else f"> {lo}"
        return f"at most {hi}" if self.le is not None else f"< {hi}"


def param(default: Any, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None, hint: str = "") -> Any:
    """A dataclass field with a default and a range, checked when params are parsed: a value
    out of it fails with ``<key>: must be at least 1`` (``hint`` is added in parentheses).
    Every bound of a params key is declared this way, beside its default."""
    meta = {RANGE: Range(ge, gt, le, lt, hint)}
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


FaultKind = Literal["429", "401", "500", "503", "reset", "timeout", "truncated", "slow", "endpoint_changed"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)


@dataclass(frozen=True)
class FaultParams:
    """Faults the simulated Instagram (:mod:`imgrate.demo.server`) injects: ``rate`` is the chance
    per request (0 = none).

    Decisions are drawn from ``random.Random(seed)`` in request order, so a single-threaded
    crawl sees the same faults every run (change the seed between runs to see others). Kinds:

    - ``429``: Too Many Requests; ``401``: Unauthorized, "Please wait a few minutes before you
      try again." (Instagram's soft rate limit); ``500`` / ``503``: server errors;
    - ``reset``: the callback raises ``requests.exceptions.ConnectionError`` (connection reset);
      ``timeout``: it raises ``requests.exceptions.ReadTimeout``;
    - ``truncated``: an image served with valid headers and a cut JPEG body (image and
      profile-picture downloads only; other requests draw among the remaining kinds);
    - ``slow``: served correctly after a real :data:`SLOW_SECONDS` delay;
    - ``endpoint_changed``: a GraphQL query answered as after Instagram revoked the query ids
      Instaloader uses: 401 "Please wait a few minutes" or 400 "invalid request", in turn
      (GraphQL queries only; other requests draw among the remaining kinds). With ``rate: 1``
      and only this kind, every query fails and every page loads: a changed endpoint.

    Users whose name contains ``throttled`` are always refused (429 / 401 "Please wait"), whatever
    the rate: the test bed for a user that stays rate limited.
    """

    rate: float = 0.0  # chance per request, 0 = none
    kinds: list[FaultKind] = field(default_factory=lambda: list(FAULT_KINDS))
    seed: int = 0  # faults are drawn in request order from this seed


@dataclass(frozen=True)
class BudgetParams:
    """How much one crawl run may ask of Instagram, and how long it waits when told to slow down."""

    max_requests: int | None = None  # HTTP requests per run, every kind counted; None = unlimited
    max_wait_per_user_s: float = 900.0  # backoff after 429 / 401 "Please wait" per user, then rate_limited
    backoff_base_s: float = 30.0  # first backoff; doubles per consecutive refusal, with jitter
    backoff_max_s: float = 600.0  # longest single backoff
    stop_after_rate_limited: int | None = 3  # users in a row rate limited: Instagram limits us, not them


@dataclass(frozen=True)
class DemoParams:
    """The simulated Instagram (``crawl.source: demo``)."""

    seed: int = 42
    start: str = "2025-01-01"  # first day anyone posts (ISO date)
    until: str = "2026-06-30"  # the world's clock: posts exist only up to it (ISO date)
    image_size: int = 320  # longest side of the drawn images, px
    mean_interval_days: float = 5.0  # average posting interval across users
    faults: FaultParams = field(default_factory=FaultParams)


@dataclass(frozen=True)
class CrawlParams:
    source: Literal["demo", "instagram"] = "demo"
    users_file: str = "users.txt"
    max_posts: int | None = None  # per user and run; None = all (the paper)
    shard_size: int = 500  # posts per tar shard
    # durable progress within a user's crawl: its verified posts go into a shard every
    # commit_every_posts posts, or after commit_every_s seconds with at least commit_every_posts // 5
    commit_every_posts: int = 100
    commit_every_s: float = 120.0
    video_thumbnails: bool = False  # keep a video's thumbnail (else videos are skipped)
    strict: bool = False  # fail the stage on the first user that fails
    # a run that stopped early or did not crawl some users: `imgrate crawl` exits 3 (INCOMPLETE)
    # either way; the DVC stage exits 0 and the pipeline goes on with what it got ("continue")
    # or exits 3 and `dvc repro` stops ("fail")
    on_incomplete: Literal["continue", "fail"] = "continue"
    max_attempts: int = 5  # tries per request before a user's crawl fails (Instaloader's max_connection_attempts)
    refresh_days: int = 7  # re-read the counts of posts whose latest count was read before they were this old
    budget: BudgetParams = field(default_factory=BudgetParams)
    demo: DemoParams = field(default_factory=DemoParams)


@dataclass(frozen=True)
class ExportParams:
    strict: bool = False  # fail on a corrupt member instead of skipping it
    # MongoDB (imgrate.mongo): the URI comes from $IMGRATE_MONGODB_URI, else mongo_uri; none = JSON only.
    mongo_uri: str | None = None  # never with a password (params.yaml is in git): use the env variable
    database: str = "imgrate"  # documents go to <database>.posts and <database>.users
    batch_size: int = 500  # documents per bulk write
    timeout_s: float = 10.0  # server selection, connect and each socket operation
    thumbnail_size: int | None = None  # longest side of the JPEG thumbnail stored per post; 0/None = none


@dataclass(frozen=True)
class PreprocessParams:
    size: int = 50  # images become size x size RGB
    target: Literal["max_ratio", "follower_ratio", "log_zscore", "percentile"] = "max_ratio"
    max_posts_per_user: int | None = 100  # per-user balance; None = keep all
    split: Literal["random", "temporal", "user"] = "random"
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 0
    min_age_days: int = 3  # hold back a post whose latest count was read before it was this old


@dataclass(frozen=True)
class FeaturizeParams:
    """The featurize stage: frozen backbone features of every post image, per shard (data/features/)."""

    backbone: Literal["efficientnet-lite0", "efficientnet-lite2"] = "efficientnet-lite0"
    input_size: int = 128  # px the backbone sees: images are decoded from the shards at this size
    batch_size: int = 64  # images per backbone forward pass
    workers: int = 0  # cores: worker processes on the CPU, decoding threads on a GPU; 1 = one core; 0 = every core
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    photo: bool = True  # append the photo descriptors of imgrate.photo (8 columns) to the backbone's
    # g > 0: the backbone's mid-level map (Lite0: 112 channels) averaged over g x g cells, for composition
    grid: int = param(2, ge=0, le=3, hint="0 = none; Lite0: 1 = 112, 2 = 448, 3 = 1008 columns")


@dataclass(frozen=True)
class TrainParams:
    """Shared by every model (seed, device, processes), then one section per model of the
    registry (:mod:`imgrate.models`): ``train.<model>``, kept here as parsed YAML and checked
    by that model's own params dataclass when the model is used (``train@<model>`` validates
    and tracks only its own section)."""

    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    # processes; > 1 = the stage relaunches itself under torchrun (DDP); 0 = one per GPU
    nproc: int = param(1, ge=0, hint="0 = one process per GPU")
    models: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={SECTIONS: True})

    def with_model(self, name: str, **changes: Any) -> TrainParams:
        """These params with keys of section ``train.<name>`` changed (tests, benches, sweeps)."""
        return dataclasses.replace(self, models={**self.models, name: {**self.models.get(name, {}), **changes}})


@dataclass(frozen=True)
class EvaluateParams:
    set_sizes: list[int] = field(default_factory=lambda: [2, 5, 10])
    n_sets: int = 2000  # random sets per set size
    seed: int = 0
    n_boot: int = 1000  # bootstrap resamples over users
    min_items: int = 5  # a user needs this many test posts for within-user metrics


@dataclass(frozen=True)
class AnalyzeParams:
    """The data-analysis figures (reports/figures/data/) and reports/data.md."""

    top_n: int = 5  # posts in each row of the top/bottom picture grid
    rank_by: Literal["likes", "target"] = "likes"  # likes: every image post (the paper); target: the dataset's
    example: str | None = None  # shortcode shown before/after preprocessing; None = the most-liked test image
    n_boot: int = 1000  # bootstrap resamples of each interval of reports/insights.html
    seed: int = 0  # of those resamples


@dataclass(frozen=True)
class Params:
    crawl: CrawlParams
    export: ExportParams
    preprocess: PreprocessParams
    featurize: FeaturizeParams
    train: TrainParams
    evaluate: EvaluateParams
    analyze: AnalyzeParams


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (dataclasses are built)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ParamsError as err:
                errors.append(str(err))
        raise ParamsError(f"{key}: expected {_type_name(tp)}, got {_shown(value)}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ParamsError(f"{key}: must be one of {choices}, got {_shown(value)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {_shown(value)}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping of keys, got {_shown(value)}")
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {_shown(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {_shown(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {_shown(value)}")
        if not math.isfinite(value):  # .inf / .nan: no rate, size or wait works with it
            raise ParamsError(f"{key}: must be a finite number, got {_shown(value)}")
        return float(value)
    if tp is str:
        if isinstance(value, (dt.date, dt.datetime)):  # YAML reads 2025-01-01 as a date
            return value.isoformat()
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {_shown(value)}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def _build(cls: type[T], data: dict[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    rest = next((f.name for f in fields if f.metadata.get(SECTIONS)), None)
    names = [f.name for f in fields if f.name != rest]
    where = f"{prefix}." if prefix else ""
    unknown = sorted(set(data) - set(names))
    if unknown and rest is None:
        raise ParamsError(
            f"unknown params key {where}{unknown[0]} (known: {', '.join(names)})"
        )
    missing = [n for n in names if n not in data]
    if missing:
        raise ParamsError(f"missing params key {where}{missing[0]}")
    kwargs = {
        n: _convert(data[n], hints[n], f"{prefix}.{n}" if prefix else n) for n in names
    }
    if rest is not None:  # the other keys are sections, each checked by its owner
        for key in unknown:
            if not isinstance(data[key], dict):
                raise ParamsError(f"{where}{key}: expected a mapping of keys, got {_shown(data[key])}")
        kwargs[rest] = {key: data[key] for key in unknown}
    _check_ranges(cls, kwargs, prefix)
    return cls(**kwargs)


def _check_ranges(cls: type, values: dict[str, Any], prefix: str) -> None:
    for f in dataclasses.fields(cls):
        bounds = f.metadata.get(RANGE)
        value = values.get(f.name)
        if bounds is None or value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not bounds.holds(value):
            nullable = type(None) in get_args(typing.get_type_hints(cls)[f.name])
            hint = f" ({bounds.hint})" if bounds.hint else ""
            raise ParamsError(f"{prefix}.{f.name}: must be {'null or ' if nullable else ''}{bounds.describe()}"
                              f"{hint}, got {_shown(value)}")


def as_mapping(obj: Any) -> Any:
    """Typed params (or one section) as params.yaml writes them: the inverse of
    :func:`parse_params` (train's model sections are keys of train again)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = as_mapping(getattr(obj, f.name))
            if f.metadata.get(SECTIONS):
                out.update(value)
            else:
                out[f.name] = value
        return out
    if isinstance(obj, list):
        return [as_mapping(v) for v in obj]
    if isinstance(obj, dict):
        return {k: as_mapping(v) for k, v in obj.items()}
    return obj


def parse_section(cls: type[T], data: Any, key: str) -> T:
    """Section ``key`` of params.yaml (``train.paper_cnn``) as dataclass ``cls``: every key
    required and typed, ranges checked (:func:`param`); a bad one is named."""
    if not isinstance(data, dict):
        raise ParamsError(f"{key}: expected a mapping of keys, got {_shown(data)}")
    return _build(cls, data, key)


class _Unread:
    """A params section a stage did not ask for: it was not validated, so it cannot be read."""

    def __init__(self, section: str) -> None:
        self._section = section

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # copy, pickle and friends probe for these
            raise AttributeError(name)
        raise ParamsError(f"params section {self._section} was not loaded (load_params(..., sections=...))")


def parse_params(data: Any, sections: Collection[str] | None = None) -> Params:
    """Build :class:`Params` from the parsed YAML mapping, naming the first bad key.

    ``sections``: validate and build only these sections (a stage reads its own, so a bad
    ``train.lr`` fails training, not the crawl); the others must still be known sections, and
    reading one raises. None: every section.
    """
    if not isinstance(data, dict):
        raise ParamsError("params.yaml must be a mapping with one section per stage")
    names = [f.name for f in dataclasses.fields(Params)]
    if sections is None:
        params = _build(Params, data, "")
        _check_values(params)
        check_workable(params)
        return params
    unknown = sorted(set(sections) - set(names)) or sorted(set(data) - set(names))
    if unknown:
        raise ParamsError(f"unknown params key {unknown[0]} (known: {', '.join(names)})")
    hints = typing.get_type_hints(Params)
    # the unread sections take their defaults for the range checks, then become unreadable
    built = {n: _convert(data[n], hints[n], n) if n in sections and n in data else hints[n]() for n in names}
    missing = [n for n in names if n in sections and n not in data]
    if missing:
        raise ParamsError(f"missing params key {missing[0]}")
    params = Params(**built)
    _check_values(params)
    check_workable(params, sections)
    unread: dict[str, Any] = {n: _Unread(n) for n in names if n not in sections}  # stands in for a section
    return dataclasses.replace(params, **unread)


def _check_values(p: Params) -> None:
    """Range checks that a type alone cannot express."""
    checks: list[tuple[bool, str]] = [
        (p.crawl.shard_size >= 1, "crawl.shard_size: must be at least 1"),
        (p.crawl.commit_every_posts >= 1, "crawl.commit_every_posts: must be at least 1"),
        (p.crawl.commit_every_s >= 0, "crawl.commit_every_s: must be >= 0"),
        (p.crawl.max_posts is None or p.crawl.max_posts >= 1, "crawl.max_posts: must be null or >= 1"),
        (p.crawl.demo.image_size >= 16, "crawl.demo.image_size: must be at least 16"),
        (p.crawl.demo.mean_interval_days > 0, "crawl.demo.mean_interval_days: must be > 0"),
        (p.crawl.max_attempts >= 1, "crawl.max_attempts: must be at least 1"),
        (0 <= p.crawl.refresh_days <= 3650, "crawl.refresh_days: must be between 0 (never re-read) and 3650"),
        (p.preprocess.min_age_days >= 0, "preprocess.min_age_days: must be >= 0"),
        (
            p.preprocess.min_age_days <= p.crawl.refresh_days,
            "preprocess.min_age_days: must be at most crawl.refresh_days (a post whose count was read "
            "between the two ages would never be re-read, so it would be held back for good)",
        ),
        (
            p.crawl.budget.max_requests is None or p.crawl.budget.max_requests >= 1,
            "crawl.budget.max_requests: must be null or >= 1",
        ),
        (p.crawl.budget.max_wait_per_user_s >= 0, "crawl.budget.max_wait_per_user_s: must be >= 0"),
        (
            p.crawl.budget.stop_after_rate_limited is None or p.crawl.budget.stop_after_rate_limited >= 1,
            "crawl.budget.stop_after_rate_limited: must be null or >= 1",
        ),
        (
            0 < p.crawl.budget.backoff_base_s <= p.crawl.budget.backoff_max_s,
            "crawl.budget.backoff_base_s: must be > 0 and at most crawl.budget.backoff_max_s",
        ),
        (0.0 <= p.crawl.demo.faults.rate <= 1.0, "crawl.demo.faults.rate: must be between 0 and 1"),
        (p.preprocess.size >= 8, "preprocess.size: must be at least 8"),
        (
            len(p.preprocess.split_ratios) == 3
            and all(r >= 0 for r in p.preprocess.split_ratios)
            and abs(sum(p.preprocess.split_ratios) - 1.0) < 1e-6,
            "preprocess.split_ratios: must be three non-negative numbers summing to 1",
        ),
        (
            p.preprocess.max_posts_per_user is None or p.preprocess.max_posts_per_user >= 1,
            "preprocess.max_posts_per_user: must be null or >= 1",
        ),
        (p.featurize.input_size >= 32, "featurize.input_size: must be at least 32"),
        (p.featurize.batch_size >= 1, "featurize.batch_size: must be at least 1"),
        (p.featurize.workers >= 0, "featurize.workers: must be >= 0 (0 = every core)"),
        (all(k >= 2 for k in p.evaluate.set_sizes), "evaluate.set_sizes: each must be >= 2"),
        (p.evaluate.n_sets >= 1, "evaluate.n_sets: must be at least 1"),
        (1 <= p.analyze.top_n <= 20, "analyze.top_n: must be between 1 and 20"),
        (p.export.batch_size >= 1, "export.batch_size: must be at least 1"),
        (p.export.timeout_s > 0, "export.timeout_s: must be > 0"),
        (p.export.thumbnail_size is None or p.export.thumbnail_size >= 0, "export.thumbnail_size: must be null or >= 0"),
        (
            bool(p.export.database) and not set(p.export.database) & set('/\\. "$'),
            "export.database: must be a non-empty name without / \\ . \" $ or spaces",
        ),
        (
            p.export.mongo_uri is None or p.export.mongo_uri.startswith(("mongodb://", "mongodb+srv://")),
            "export.mongo_uri: must start with mongodb:// or mongodb+srv://",
        ),
        (
            p.export.mongo_uri is None or uri_password(p.export.mongo_uri) is None,
            "export.mongo_uri: must not contain a password (params.yaml is tracked by git); "
            "put the URI with credentials in the IMGRATE_MONGODB_URI environment variable",
        ),
        (
            p.export.mongo_uri is None or not uri_secret_options(p.export.mongo_uri),
            "export.mongo_uri: must not contain a secret option ("
            + ", ".join(excerpt(n, 40) for n, _ in uri_secret_options(p.export.mongo_uri or ""))
            + ": params.yaml is tracked by git); put the URI with credentials in the IMGRATE_MONGODB_URI "
            "environment variable",
        ),
    ]
    for ok, msg in checks:
        if not ok:
            raise ParamsError(msg)
    times = {}
    for key, value in (("crawl.demo.start", p.crawl.demo.start), ("crawl.demo.until", p.crawl.demo.until)):
        try:
            times[key] = dt.datetime.fromisoformat(value).replace(tzinfo=None)
        except ValueError as err:
            raise ParamsError(f"{key}: expected an ISO date such as 2025-12-31, got {_shown(value)}") from err
    if times["crawl.demo.start"] < dt.datetime(2016, 1, 1):
        raise ParamsError(f"crawl.demo.start: must be 2016 or later (the world's 11-character shortcodes), "
                          f"got {p.crawl.demo.start}")
    for key, when in times.items():  # what a post's metadata may say (imgrate.metadata: before 2100)
        if when >= dt.datetime(2100, 1, 1):
            raise ParamsError(f"{key}: must be before 2100 (the latest time a post may carry), got {when.date()}")
    if times["crawl.demo.until"] < times["crawl.demo.start"]:
        raise ParamsError(f"crawl.demo.until ({p.crawl.demo.until}) is before crawl.demo.start ({p.crawl.demo.start})")
    if p.crawl.demo.faults.rate > 0 and not p.crawl.demo.faults.kinds:
        raise ParamsError("crawl.demo.faults.kinds: name at least one fault kind when crawl.demo.faults.rate > 0")


# Largest sizes that still fit a machine's memory: the demo draws a photo of image_size^2
# pixels in float arrays, preprocess keeps N x size^2 x 3 bytes in memory, the pretrained
# backbone sees input_size^2 images in batches. Instagram serves photos of at most 1440 px.
MAX_IMAGE_SIZE = 2048
MAX_DATASET_SIZE = 512
MAX_INPUT_SIZE = 1024
MAX_THUMBNAIL_SIZE = 1080
MIN_INTERVAL_DAYS = 0.01  # the demo world's mean posting interval: at most ~100 posts a day per user
MAX_SETS = 100_000  # evaluate.n_sets: random sets per set size, drawn at once
MAX_SET_SIZE = 100  # evaluate.set_sizes: photos ranked in one set
MAX_BOOT = 100_000  # evaluate.n_boot: bootstrap resamples, drawn at once
MAX_DEMO_POSTS_PER_USER = 50_000  # (until - start) / mean_interval_days; a user's interval varies 0.5-2.5x


def _demo_days(p: Params) -> float:
    """Days from crawl.demo.start to crawl.demo.until (both checked by _check_values)."""
    start, until = (dt.datetime.fromisoformat(v).replace(tzinfo=None) for v in (p.crawl.demo.start, p.crawl.demo.until))
    return max((until - start).total_seconds() / 86_400, 0.0)


def _processes_possible(device: str) -> tuple[int, str]:
    """How many training processes ``train.device`` can hold, and of what: one per CUDA device
    (auto: when there is one), one for MPS, else one per CPU core this process may use. Torch
    is imported only here, when more than one process is asked for."""
    import os

    import torch

    if device in ("auto", "cuda") and torch.cuda.is_available():
        return torch.cuda.device_count(), "CUDA devices"
    if device == "cuda":
        return 0, "CUDA devices"
    if device == "mps" or (device == "auto" and torch.backends.mps.is_available()):
        return 1, "MPS device (one process)"
    return (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1), "CPU cores"


def check_workable(p: Params, sections: typing.Iterable[str] | None = None) -> None:
    """Values that pass the type and range checks but cannot work: an empty list of set sizes,
    zero bootstrap resamples, sizes whose arrays no machine can allocate. Each message names
    the key. ``sections`` limits the checks to those params.yaml sections (default: all)."""
    checks: dict[str, list[tuple[bool, str]]] = {
        "crawl": [
            (p.crawl.demo.image_size <= MAX_IMAGE_SIZE,
             f"crawl.demo.image_size: must be at most {MAX_IMAGE_SIZE} px, got {p.crawl.demo.image_size} "
             "(each photo is drawn in memory; Instagram serves at most 1440 px)"),
            (p.crawl.demo.mean_interval_days >= MIN_INTERVAL_DAYS,
             f"crawl.demo.mean_interval_days: must be at least {MIN_INTERVAL_DAYS}, got "
             f"{p.crawl.demo.mean_interval_days:g} (the world would hold more posts than memory)"),
            (_demo_days(p) / p.crawl.demo.mean_interval_days <= MAX_DEMO_POSTS_PER_USER,
             f"crawl.demo.until: the world from crawl.demo.start to it ({_demo_days(p):,.0f} days) at one post "
             f"every {p.crawl.demo.mean_interval_days:g} days (crawl.demo.mean_interval_days) gives each user "
             f"more than {MAX_DEMO_POSTS_PER_USER:,} posts, more than any account holds: move it closer"),
        ],
        "export": [
            (p.export.thumbnail_size is None or p.export.thumbnail_size <= MAX_THUMBNAIL_SIZE,
             f"export.thumbnail_size: must be at most {MAX_THUMBNAIL_SIZE} px, got {p.export.thumbnail_size}"),
        ],
        "preprocess": [
            (p.preprocess.size <= MAX_DATASET_SIZE,
             f"preprocess.size: must be at most {MAX_DATASET_SIZE} px, got {p.preprocess.size} "
             "(the dataset holds every image at size x size in memory; the paper used 50)"),
        ],
        "featurize": [
            (p.featurize.input_size <= MAX_INPUT_SIZE,
             f"featurize.input_size: must be at most {MAX_INPUT_SIZE} px, got {p.featurize.input_size}"),
        ],
        "evaluate": [
            (len(p.evaluate.set_sizes) >= 1, "evaluate.set_sizes: must name at least one set size, e.g. [2, 5, 10]"),
            (max(p.evaluate.set_sizes, default=2) <= MAX_SET_SIZE,
             f"evaluate.set_sizes: each must be at most {MAX_SET_SIZE}, got {max(p.evaluate.set_sizes, default=2):,} "
             "(drawing a set of k costs k^2 steps)"),
            (p.evaluate.n_sets <= MAX_SETS,
             f"evaluate.n_sets: must be at most {MAX_SETS:,}, got {p.evaluate.n_sets:,} (the sets of each size are "
             "drawn at once, about 40 bytes x n_sets x the set size; the metric settles well before 2,000)"),
            (p.evaluate.n_boot >= 1, f"evaluate.n_boot: must be at least 1 bootstrap resample, got {p.evaluate.n_boot}"),
            (p.evaluate.n_boot <= MAX_BOOT,
             f"evaluate.n_boot: must be at most {MAX_BOOT:,} bootstrap resamples, got {p.evaluate.n_boot:,} (they are "
             "drawn at once, 16 bytes x n_boot x the users; intervals settle well before 10,000)"),
            (p.evaluate.min_items >= 2,
             f"evaluate.min_items: must be at least 2 (a ranking needs two posts), got {p.evaluate.min_items}"),
        ],
        "analyze": [
            (10 <= p.analyze.n_boot <= 100_000,
             f"analyze.n_boot: must be between 10 and 100,000 bootstrap resamples, got {p.analyze.n_boot}"),
        ],
    }
    for section, section_checks in checks.items():
        if sections is not None and section not in sections:
            continue
        for ok, msg in section_checks:
            if not ok:
                raise ParamsError(msg)
    if (sections is None or "train" in sections) and p.train.nproc > 1:
        most, what = _processes_possible(p.train.device)
        if p.train.nproc > most:
            raise ParamsError(f"train.nproc: {p.train.nproc:,} processes, but this machine has {most} {what} for "
                              f"train.device {p.train.device} (one process each; 0 = one per GPU)")


def _shown(value: Any, limit: int = 80) -> str:
    """A value for a message: its repr, cut when long."""
    if isinstance(value, str):
        return excerpt(value, limit)
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


# YAML 1.2 floats: PyYAML follows YAML 1.1, where 1e-9 (no dot) is a string.
_FLOAT_12 = re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class DuplicateKeyError(ParamsError):
    """A YAML mapping names the same key twice (YAML would silently keep the last)."""


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader, reading ``1e-9`` as a number and refusing a key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark.line)
            except TypeError:  # an unhashable key: the base class says what is wrong
                break
            if first != key_node.start_mark.line:
                raise DuplicateKeyError(
                    f"line {key_node.start_mark.line + 1}: key {_shown(key)} is given twice (first on line "
                    f"{first + 1}); YAML would keep only the last one: merge the two"
                )
        return super().construct_mapping(node, deep=deep)


ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


def uri_parts(uri: str) -> tuple[str, str | None, str]:
    """``(scheme://, userinfo or None, hosts/db?options)`` of a MongoDB URI.

    The user info ends at the last "@" before the options ("?"); an unescaped "?" in a
    password (which MongoDB refuses anyway) still counts as password when no "/" precedes it,
    so that a message never shows part of it.
    """
    scheme, sep, rest = uri.partition("://")
    q = rest.find("?")
    at = rest.rfind("@", 0, q if q >= 0 else len(rest))
    if at < 0 and q >= 0:
        last = rest.rfind("@")
        at = last if last >= 0 and "/" not in rest[:last] else -1
    if at < 0:
        return scheme + sep, None, rest
    return scheme + sep, rest[:at], rest[at + 1:]


def uri_password(uri: str) -> str | None:
    """The password in a ``mongodb://user:password@host/`` URI as written (None if it has none)."""
    _, userinfo, _ = uri_parts(uri)
    if userinfo is None:
        return None
    user, sep, password = userinfo.partition(":")
    return password if sep and password else None


# URI options whose value is a credential, matched by name: MongoDB's tlsCertificateKeyFilePassword
# (and the older sslPEMKeyPassword), authMechanismProperties (it can carry AWS_SESSION_TOKEN:...),
# and anything named like a password, secret, token, key or credential.
_SECRET_OPTION = re.compile(r"pass|pwd|secret|token|credential|apikey|api_key|privatekey|"
                            r"authmechanismproperties", re.IGNORECASE)


def uri_secret_options(uri: str) -> list[tuple[str, str]]:
    """``(name, value)`` of the options of ``uri`` that hold a secret, as written."""
    _, _, rest = uri_parts(uri)
    query = rest.partition("?")[2].partition("#")[0]
    found = []
    for part in re.split(r"[&;]", query):
        name, sep, value = part.partition("=")
        if sep and value and _SECRET_OPTION.search(unquote(name)):
            found.append((name, value))
    return found


def read_yaml(text: str) -> Any:
    """Parse params YAML: ``1e-9`` is a number, a key given twice is an error."""
    return yaml.load(text, Loader=ParamsLoader)


def load_params(path: Path, sections: Collection[str] | None = None) -> Params:
    """Read and validate params.yaml (only ``sections`` of it, when given: see parse_params)."""
    try:
        text = read_utf8(path)
    except FileNotFoundError as err:
        raise ParamsError(f"params file not found: {path}") from err
    except DataError as err:
        raise ParamsError(str(err)) from None
    try:
        data = read_yaml(text)
    except DuplicateKeyError as err:
        raise DuplicateKeyError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from None
    return parse_params(data, sections)
