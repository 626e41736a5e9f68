"""`imgrate experiments`: DVC's experiments in a table under 120 columns (the real `dvc exp
show` runs in tests/test_docs.py, from docs/experiments.md)."""

from __future__ import annotations

from typing import Any

from imgrate.experiments import changed_params, parse_exp_show, table


def _data(lr: float, spearman: float | None) -> dict[str, Any]:
    params = {"crawl": {"source": "demo"}, "train": {"seed": 0, "paper_cnn": {"lr": lr, "epochs": 2}}}
    metrics = {f"metrics/evaluate/{name}.json": {"data": {"spearman_within": spearman, "pairwise_within": 0.61,
                                                          "rank_acc_mixed_2": 0.5, "leak_lift": 0.0}}
               for name in ("paper_cnn", "pretrained", "user_mean")}
    metrics["metrics/crawl.json"] = {"data": {"users": 3}}
    return {"params": {"params.yaml": {"data": params}}, "metrics": metrics}


# the shape of `dvc exp show --json` (DVC 3): the workspace, the commit, its experiments
SHOWN = [
    {"rev": "workspace", "name": None, "data": _data(0.001, 0.31), "experiments": None},
    {"rev": "a" * 40, "name": "main", "data": _data(0.001, 0.31),
     "experiments": [{"name": "lr-high", "revs": [{"rev": "b" * 40, "name": "lr-high", "data": _data(0.01, 0.12)}]},
                     {"name": "lr-low", "revs": [{"rev": "c" * 40, "name": "lr-low", "data": _data(0.0001, None)}]}]},
]


def test_rows_keep_the_changed_params_and_the_models_within_user_metrics() -> None:
    rows = parse_exp_show(SHOWN)
    assert [r.name for r in rows] == ["workspace", "main", "lr-high", "lr-low"]
    assert changed_params(rows) == ["train.paper_cnn.lr"]
    lines = table(rows, ["paper_cnn", "pretrained", "ridge_head"])  # a model with no metrics: no column
    assert lines[0].split() == ["experiment", "train.paper_cnn.lr", "paper_cnn", "ρ", "paper_cnn", "pw",
                                "pretrained", "ρ", "pretrained", "pw"]
    assert lines[4].split() == ["lr-high", "0.01", "0.120", "0.610", "0.120", "0.610"]
    assert lines[5].split()[:3] == ["lr-low", "0.0001", "-"]  # a metric DVC has no value for
    assert "user_mean" not in "\n".join(lines)  # baselines only when asked for
    assert max(len(line) for line in lines) < 120


def test_no_experiments_says_so() -> None:
    lines = table(parse_exp_show([{**rev, "experiments": None} for rev in SHOWN]), ["paper_cnn"])
    assert "(no param differs between these rows)" in lines
