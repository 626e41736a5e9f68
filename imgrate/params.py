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


@dataclass(frozen=True)
class DemoParams:
    """The simulated Instagram (``crawl.source: demo``)."""

    seed: int = 42
    start: str = "2025-01-01"  # first day anyone posts (ISO date)
    until: str = "2025-12-31"  # the world's clock: posts exist only up to it (ISO date)
    image_size: int = 320  # longest side of the drawn images, px
    mean_interval_days: float = 5.0  # average posting interval across users


@dataclass(frozen=True)
class CrawlParams:
    source: Literal["demo", "instagram"] = "demo"
    users_file: str = "users.txt"
    max_posts: int | None = None  # per user and run; None = all (the paper)
    shard_size: int = 500  # posts per tar shard
    video_thumbnails: bool = False  # keep a video's thumbnail (else videos are skipped)
    strict: bool = False  # fail the stage on the first user that fails
    demo: DemoParams = field(default_factory=DemoParams)


@dataclass(frozen=True)
class ExportParams:
    strict: bool = False  # fail on a corrupt member instead of skipping it


@dataclass(frozen=True)
class PreprocessParams:
    size: int = 50  # images become size x size RGB
    target: Literal["max_ratio", "follower_ratio", "log_zscore", "percentile"] = "max_ratio"
    max_posts_per_user: int | None = None  # per-user balance; None = keep all
    split: Literal["random", "temporal", "user"] = "random"
    split_ratios: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 0


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 50
    batch_size: int = 50
    lr: float = 0.001
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"


@dataclass(frozen=True)
class EvaluateParams:
    set_sizes: list[int] = field(default_factory=lambda: [2, 5, 10])
    n_sets: int = 2000  # random sets per set size
    seed: int = 0
    n_boot: int = 1000  # bootstrap resamples over users
    min_items: int = 5  # a user needs this many test posts for within-user metrics


@dataclass(frozen=True)
class Params:
    crawl: CrawlParams
    export: ExportParams
    preprocess: PreprocessParams
    train: TrainParams
    evaluate: EvaluateParams


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
        (p.crawl.max_posts is None or p.crawl.max_posts >= 1, "crawl.max_posts: must be null or >= 1"),
        (p.crawl.demo.image_size >= 16, "crawl.demo.image_size: must be at least 16"),
        (p.crawl.demo.mean_interval_days > 0, "crawl.demo.mean_interval_days: must be > 0"),
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
        (all(k >= 2 for k in p.evaluate.set_sizes), "evaluate.set_sizes: each must be >= 2"),
        (p.evaluate.n_sets >= 1, "evaluate.n_sets: must be at least 1"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ParamsError(msg)
    for key, value in (("crawl.demo.start", p.crawl.demo.start), ("crawl.demo.until", p.crawl.demo.until)):
        try:
            dt.datetime.fromisoformat(value)
        except ValueError as err:
            raise ParamsError(f"{key}: expected an ISO date such as 2025-12-31, got {value!r}") from err


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
