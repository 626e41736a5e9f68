"""Typed params: one frozen dataclass per params.yaml section.

Field names are the params.yaml keys. :func:`load_params` rejects unknown keys, missing
keys and wrong types with a :class:`ParamsError` that names the key (``train.lr``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from imgrate.errors import ParamsError

T = TypeVar("T")


FaultKind = Literal["429", "401", "500", "503", "reset", "timeout", "truncated", "slow"]
FAULT_KINDS: tuple[FaultKind, ...] = get_args(FaultKind)


@dataclass(frozen=True)
class FaultParams:
    """Faults the simulated Instagram injects (imgrate.crawl.demo.FaultConfig)."""

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
    # checkpoint_posts posts, or after checkpoint_s seconds with at least checkpoint_posts // 5
    checkpoint_posts: int = 100
    checkpoint_s: float = 120.0
    video_thumbnails: bool = False  # keep a video's thumbnail (else videos are skipped)
    strict: bool = False  # fail the stage on the first user that fails
    max_attempts: int = 5  # tries per request before a user's crawl fails (Instaloader's max_connection_attempts)
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


@dataclass(frozen=True)
class PretrainedParams:
    """train@pretrained: frozen EfficientNet-Lite0 features (cached per shard) and a small head."""

    input_size: int = 128  # images are decoded from the shards at this size for the backbone
    hidden: int = 0  # 0 = dropout + linear head; else one hidden layer of this many units
    dropout: float = 0.5
    loss: Literal["mse", "pairwise"] = "pairwise"  # pairwise = RankNet on within-user pairs
    pair_window_days: float | None = None  # pairwise: only pairs posted at most this many days apart
    epochs: int = 200  # at most: early stopping on the validation within-user Spearman
    patience: int = 20  # epochs without a better validation Spearman before stopping
    batch_size: int = 256
    lr: float = 0.001
    weight_decay: float = 0.0001
    feature_batch_size: int = 64  # images per backbone forward pass


@dataclass(frozen=True)
class TrainParams:
    # epochs, batch_size and lr are the paper CNN's (train@paper_cnn); seed and device are shared
    epochs: int = 50
    batch_size: int = 50
    lr: float = 0.001
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    pretrained: PretrainedParams = field(default_factory=PretrainedParams)


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


@dataclass(frozen=True)
class Params:
    crawl: CrawlParams
    export: ExportParams
    preprocess: PreprocessParams
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
        raise ParamsError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ParamsError(f"{key}: must be one of {choices}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ParamsError(f"{key}: expected a list, got {value!r}")
        (item_tp,) = get_args(tp)
        return [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ParamsError(f"{key}: expected a mapping of keys, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dt.date, dt.datetime)):  # YAML reads 2025-01-01 as a date
            return value.isoformat()
        if not isinstance(value, str):
            raise ParamsError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module


def _build(cls: type[T], data: dict[str, Any], prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(
            f"unknown params key {where}{unknown[0]} (known: {', '.join(names)})"
        )
    missing = [n for n in names if n not in data]
    if missing:
        where = f"{prefix}." if prefix else ""
        raise ParamsError(f"missing params key {where}{missing[0]}")
    kwargs = {
        n: _convert(data[n], hints[n], f"{prefix}.{n}" if prefix else n) for n in names
    }
    return cls(**kwargs)


def parse_params(data: Any) -> Params:
    """Build :class:`Params` from the parsed YAML mapping, naming the first bad key."""
    if not isinstance(data, dict):
        raise ParamsError("params.yaml must be a mapping with one section per stage")
    params = _build(Params, data, "")
    _check_values(params)
    return params


def _check_values(p: Params) -> None:
    """Range checks that a type alone cannot express."""
    checks: list[tuple[bool, str]] = [
        (p.crawl.shard_size >= 1, "crawl.shard_size: must be at least 1"),
        (p.crawl.checkpoint_posts >= 1, "crawl.checkpoint_posts: must be at least 1"),
        (p.crawl.checkpoint_s >= 0, "crawl.checkpoint_s: must be >= 0"),
        (p.crawl.max_posts is None or p.crawl.max_posts >= 1, "crawl.max_posts: must be null or >= 1"),
        (p.crawl.demo.image_size >= 16, "crawl.demo.image_size: must be at least 16"),
        (p.crawl.demo.mean_interval_days > 0, "crawl.demo.mean_interval_days: must be > 0"),
        (p.crawl.max_attempts >= 1, "crawl.max_attempts: must be at least 1"),
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
        (p.train.epochs >= 1, "train.epochs: must be at least 1"),
        (p.train.batch_size >= 1, "train.batch_size: must be at least 1"),
        (p.train.lr > 0, "train.lr: must be > 0"),
        (p.train.pretrained.input_size >= 32, "train.pretrained.input_size: must be at least 32"),
        (p.train.pretrained.hidden >= 0, "train.pretrained.hidden: must be >= 0"),
        (0 <= p.train.pretrained.dropout < 1, "train.pretrained.dropout: must be in [0, 1)"),
        (
            p.train.pretrained.pair_window_days is None or p.train.pretrained.pair_window_days > 0,
            "train.pretrained.pair_window_days: must be null or > 0",
        ),
        (p.train.pretrained.epochs >= 1, "train.pretrained.epochs: must be at least 1"),
        (p.train.pretrained.patience >= 1, "train.pretrained.patience: must be at least 1"),
        (p.train.pretrained.batch_size >= 2, "train.pretrained.batch_size: must be at least 2"),
        (p.train.pretrained.lr > 0, "train.pretrained.lr: must be > 0"),
        (p.train.pretrained.weight_decay >= 0, "train.pretrained.weight_decay: must be >= 0"),
        (p.train.pretrained.feature_batch_size >= 1, "train.pretrained.feature_batch_size: must be at least 1"),
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
    ]
    for ok, msg in checks:
        if not ok:
            raise ParamsError(msg)
    for key, value in (("crawl.demo.start", p.crawl.demo.start), ("crawl.demo.until", p.crawl.demo.until)):
        try:
            dt.datetime.fromisoformat(value)
        except ValueError as err:
            raise ParamsError(f"{key}: expected an ISO date such as 2025-12-31, got {value!r}") from err


def uri_password(uri: str) -> str | None:
    """The password in a ``mongodb://user:password@host/`` URI as written (None if it has none)."""
    rest = uri.split("://", 1)[-1]
    at = rest.rfind("@")  # a password must escape "@"; the last one ends the user info
    if at < 0:
        return None
    user, sep, password = rest[:at].partition(":")
    return password if sep and password else None


def load_params(path: Path) -> Params:
    """Read and validate params.yaml."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise ParamsError(f"params file not found: {path}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ParamsError(f"{path} is not valid YAML: {err}") from err
    return parse_params(data)
