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


def _parse_all(data: dict):
    """Every section, the model sections included (each model's own dataclass checks its own)."""
    from imgrate.models import check_train

    params = parse_params(data)
    check_train(params.train)
    return params


def test_shipped_params_load_with_the_documented_defaults() -> None:
    p = load_params(ROOT / "params.yaml")
    assert p.crawl.source == "demo"
    assert p.crawl.max_posts is None
    assert p.preprocess.size == 50
    assert p.preprocess.split_ratios == [0.8, 0.1, 0.1]
    assert p.train.models["paper_cnn"] == {"epochs": 50, "batch_size": 50, "lr": 0.001}  # checked by its model
    assert p.evaluate.set_sizes == [2, 5, 10]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["train"]["paper_cnn"].update(lr_typo=0.1), "train.paper_cnn.lr_typo"),
        (lambda d: d["train"]["paper_cnn"].pop("lr"), "train.paper_cnn.lr"),
        (lambda d: d["train"]["paper_cnn"].update(lr="fast"), "train.paper_cnn.lr"),
        (lambda d: d["train"]["paper_cnn"].update(epochs=2.5), "train.paper_cnn.epochs"),
        (lambda d: d["train"]["paper_cnn"].update(epochs=True), "train.paper_cnn.epochs"),
        (lambda d: d["train"]["paper_cnn"].update(epochs=0), "train.paper_cnn.epochs: must be at least 1, got 0"),
        (lambda d: d["train"].update(paper_cn={}), "unknown params key train.paper_cn"),
        (lambda d: d["train"].update(nproc=-1), "train.nproc: must be at least 0 (0 = one process per GPU)"),
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
    """A bad key fails naming it, whether params.py checks it or a model's own params dataclass
    (train.<model>, checked where the model is used: imgrate.models)."""
    data = copy.deepcopy(_raw())
    edit(data)
    with pytest.raises(ParamsError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)")):
        _parse_all(data)


def test_yaml_dates_are_accepted_as_strings() -> None:
    data = _raw()
    data["crawl"]["demo"]["until"] = yaml.safe_load("2026-01-02")  # a datetime.date
    assert parse_params(data).crawl.demo.until == "2026-01-02"


def test_missing_params_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "params.yaml")


def test_a_stage_validates_only_the_sections_it_reads() -> None:
    """`train.paper_cnn.lr: fast` fails the stage that reads it, train@paper_cnn, not the crawl
    (issue 12.7) nor train@pretrained (issue 17: each model checks its own section)."""
    from imgrate.models import model_spec

    data = _raw()
    data["train"]["paper_cnn"]["lr"] = "fast"
    data["preprocess"]["size"] = 2  # out of range: checked only where preprocess is read
    crawl_only = parse_params(data, ["crawl"])
    assert crawl_only.crawl.source == "demo"
    with pytest.raises(ParamsError, match="params section train was not loaded"):
        crawl_only.train.seed  # noqa: B018
    with pytest.raises(ParamsError, match="train.paper_cnn.lr: expected a number, got 'fast'"):
        model_spec("paper_cnn").params_of(parse_params(data, ["train"]).train)  # what train@paper_cnn reads
    model_spec("pretrained").params_of(parse_params(data, ["train"]).train)  # train@pretrained does not read it
    with pytest.raises(ParamsError, match="preprocess.size: must be at least 8"):
        parse_params(data, ["preprocess"])
    with pytest.raises(ParamsError, match="preprocess.size"):
        _parse_all(data)  # every section: one bad key is named
    data["trainn"] = {}
    with pytest.raises(ParamsError, match="unknown params key trainn"):
        parse_params(data, ["crawl"])  # an unknown section is still named, by every stage
    del data["trainn"], data["crawl"]
    with pytest.raises(ParamsError, match="missing params key crawl"):
        parse_params(data, ["crawl"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["evaluate"].update(set_sizes=[]), "evaluate.set_sizes: must name at least one"),
        (lambda d: d["evaluate"].update(n_boot=0), "evaluate.n_boot: must be at least 1"),
        (lambda d: d["evaluate"].update(min_items=1), "evaluate.min_items"),
        (lambda d: d["train"]["paper_cnn"].update(lr=float("inf")), "train.paper_cnn.lr: must be a finite number"),
        (lambda d: d["train"]["paper_cnn"].update(lr=float("nan")), "train.paper_cnn.lr: must be a finite number"),
        (lambda d: d["train"]["pretrained"].update(weight_decay=float("-inf")), "train.pretrained.weight_decay"),
        (lambda d: d["crawl"]["budget"].update(backoff_max_s=float("inf")), "crawl.budget.backoff_max_s"),
        (lambda d: d["preprocess"].update(split_ratios=[0.8, float("nan"), 0.1]), r"preprocess.split_ratios\[1\]"),
        (lambda d: d["crawl"]["demo"].update(image_size=60000), "crawl.demo.image_size: must be at most 2048"),
        (lambda d: d["crawl"]["demo"].update(mean_interval_days=1e-9), "crawl.demo.mean_interval_days"),
        (lambda d: d["preprocess"].update(size=60000), "preprocess.size: must be at most"),
        (lambda d: d["featurize"].update(input_size=60000), "featurize.input_size"),
        (lambda d: d["featurize"].update(grid=4), "featurize.grid: must be between 0 and 3"),
        (lambda d: d["featurize"].update(grid=-1), "featurize.grid: must be between 0 and 3"),
        (lambda d: d["export"].update(thumbnail_size=60000), "export.thumbnail_size"),
        # issue 20: the world's clock past what a timestamp holds was an OverflowError traceback
        (lambda d: d["crawl"]["demo"].update(until="9999-12-31"), "crawl.demo.until: must be before 2100"),
        (lambda d: d["crawl"]["demo"].update(start="2100-01-01", until="2100-02-01"), "crawl.demo.start: must be"),
        (lambda d: d["crawl"]["demo"].update(until="2099-12-31", mean_interval_days=0.1), "crawl.demo.until: the world"),
        # issue 20: evaluate.n_sets 1e9 was OOM-killed in 15 s; train.nproc 1000 launched ~290 ranks
        (lambda d: d["evaluate"].update(n_sets=10**9), "evaluate.n_sets: must be at most 100,000"),
        (lambda d: d["evaluate"].update(n_boot=10**9), "evaluate.n_boot: must be at most 100,000"),
        (lambda d: d["evaluate"].update(set_sizes=[2, 10**6]), "evaluate.set_sizes: each must be at most 100"),
        (lambda d: d["train"].update(nproc=1000, device="cpu"), r"train.nproc: 1,000 processes, but this machine has "
                                                               r"\d+ CPU cores"),
    ],
)
def test_params_that_cannot_work_fail_at_load_naming_the_key(edit, message: str) -> None:
    data = copy.deepcopy(_raw())
    edit(data)
    with pytest.raises(ParamsError, match=message):
        _parse_all(data)


def _params_text(**replace: str) -> str:
    text = (ROOT / "params.yaml").read_text()
    for old, new in replace.items():
        assert old in text
        text = text.replace(old, new)
    return text


def test_yaml_exponent_floats_read_as_numbers_and_inf_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(_params_text(**{"lr: 0.001  ": "lr: 1e-3  ", "weight_decay: 0.0001": "weight_decay: 1e-9"}))
    from imgrate.models import model_spec

    train = load_params(path).train
    assert model_spec("paper_cnn").params_of(train).lr == 1e-3
    assert model_spec("pretrained").params_of(train).weight_decay == 1e-9
    path.write_text(_params_text(**{"lr: 0.001  ": "lr: .inf  "}))
    with pytest.raises(ParamsError, match="train.paper_cnn.lr: must be a finite number, got inf"):
        model_spec("paper_cnn").params_of(load_params(path).train)


def test_a_section_given_twice_is_refused_naming_the_key_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    path.write_text(text + "\ntrain:\n  epochs: 3\n")  # a second train: section, as an edit might add
    with pytest.raises(ParamsError, match=r"params.yaml: line \d+: key 'train' is given twice \(first on line \d+\)"):
        load_params(path)
    path.write_text(text.replace("    epochs: 50 ", "    epochs: 50\n    epochs: 3 ", 1))
    with pytest.raises(ParamsError, match="key 'epochs' is given twice"):
        load_params(path)


def test_non_utf8_params_name_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes((ROOT / "params.yaml").read_bytes().replace(b"# the paper: 50x50 RGB", b"# 50\xd750 RGB"))
    with pytest.raises(ParamsError, match=r"params.yaml:\d+: not UTF-8 text \(byte 0xd7"):
        load_params(path)


def test_a_huge_value_is_quoted_as_an_excerpt() -> None:
    data = copy.deepcopy(_raw())
    data["train"]["device"] = "x" * 1_000_000
    with pytest.raises(ParamsError) as err:
        parse_params(data)
    assert "train.device" in str(err.value) and len(str(err.value)) < 300
