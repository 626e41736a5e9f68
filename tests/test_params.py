"""params.yaml: typed, complete, and a bad key is named."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from imgrate.errors import ParamsError
from imgrate.params import load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


def _raw() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_load_with_the_documented_defaults() -> None:
    p = load_params(ROOT / "params.yaml")
    assert p.crawl.source == "demo"
    assert p.crawl.max_posts is None
    assert p.preprocess.size == 50
    assert p.preprocess.split_ratios == [0.8, 0.1, 0.1]
    assert p.train.paper_cnn.batch_size == 50
    assert p.train.paper_cnn.epochs == 50
    assert p.evaluate.set_sizes == [2, 5, 10]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["train"]["paper_cnn"].update(lr_typo=0.1), "train.paper_cnn.lr_typo"),
        (lambda d: d["train"]["paper_cnn"].pop("lr"), "train.paper_cnn.lr"),
        (lambda d: d["train"]["paper_cnn"].update(lr="fast"), "train.paper_cnn.lr"),
        (lambda d: d["train"].update(epochs=2.5), "train.epochs"),
        (lambda d: d["train"].update(epochs=True), "train.epochs"),
        (lambda d: d["crawl"]["demo"].update(seed="x"), "crawl.demo.seed"),
        (lambda d: d["crawl"]["demo"].pop("until"), "crawl.demo.until"),
        (lambda d: d["crawl"]["demo"].update(until="yesterday"), "crawl.demo.until"),
        (lambda d: d["crawl"].update(source="tiktok"), "crawl.source"),
        (lambda d: d["evaluate"].update(set_sizes=[2, "five"]), "evaluate.set_sizes[1]"),
        (lambda d: d["preprocess"].update(split_ratios=[0.5, 0.5, 0.5]), "preprocess.split_ratios"),
        (lambda d: d.pop("export"), "export"),
        (lambda d: d.update(extra={}), "extra"),
    ],
)
def test_bad_params_name_the_key(edit, message: str) -> None:
    data = copy.deepcopy(_raw())
    edit(data)
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_params(data)


def test_yaml_dates_are_accepted_as_strings() -> None:
    data = _raw()
    data["crawl"]["demo"]["until"] = yaml.safe_load("2026-01-02")  # a datetime.date
    assert parse_params(data).crawl.demo.until == "2026-01-02"


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
