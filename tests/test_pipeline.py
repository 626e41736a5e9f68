"""End to end: real `dvc repro` in a temporary copy of the project on a tiny world."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import dvc, git, make_project, run, tiny_params, write_params

from imgrate import lineage

pytestmark = pytest.mark.slow
# every DVC stage in pipeline order (train@<model> for each model of the registry), but analyze:
# it runs on a branch of its own
ALL = [address for address, _, _ in lineage.addresses() if address != "analyze"]


def ran(output: str) -> list[str]:
    """Stages that `dvc repro` ran (not skipped), in order."""
    return re.findall(r"Running stage '([^']+)'", output)


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def repro(project: Path) -> list[str]:
    out = dvc(project, "repro").stdout
    return ran(out)


def repro_everything(project: Path) -> list[str]:
    """`dvc repro` when every stage must run: analyze (on a branch of its own, after
    preprocess) among them; returns the others in the order they ran."""
    stages = repro(project)
    assert "analyze" in stages and stages.index("analyze") > stages.index("preprocess"), stages
    return [s for s in stages if s != "analyze"]


def test_repro_lifecycle(project: Path) -> None:
    # 1. from scratch: every stage runs and writes its metrics
    assert repro_everything(project) == ALL
    for name in ("crawl", "export", "preprocess", "evaluate/paper_cnn"):
        assert (project / "metrics" / f"{name}.json").exists(), name
    evaluate = json.loads((project / "reports/evaluate.json").read_text())
    for model in ("paper_cnn", "pretrained", "linear_regression"):
        assert set(evaluate[model]["ranking_accuracy_mixed"]) == {"2", "5", "10"}
        assert evaluate[model]["mse"] >= 0
    assert (project / "models/paper_cnn.pt").exists() and (project / "models/pretrained.pt").exists()
    raw_before = digest(project / "data/raw")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "first run")

    # 2. nothing changed: crawl asks for new posts, finds none, everything else is skipped
    assert repro(project) == ["crawl"]
    assert digest(project / "data/raw") == raw_before
    status = dvc(project, "status", "--json").stdout
    assert json.loads(status or "{}").keys() <= {"crawl"}
    # and it leaves the working tree clean, twice: no timings in metrics/crawl.json (they go
    # to one log per run under .imgrate-cache/logs/crawl/), and a crawl that finds nothing
    # keeps the report of the crawl that last changed data/raw
    assert git(project, "status", "--porcelain").stdout == ""
    assert repro(project) == ["crawl"]
    assert git(project, "status", "--porcelain").stdout == ""
    logs = sorted((project / ".imgrate-cache/logs/crawl").glob("*.json"))
    assert len(logs) == 3 and json.loads(logs[-1].read_text())["totals"]["seconds"] >= 0

    # 3. a model's hyperparameter reruns that model and evaluate only (each train@<model>
    # tracks train.<model>): the other model, featurize and the data stages stay
    params = tiny_params()
    params["train"]["pretrained"]["dropout"] = 0.25
    write_params(project, params)
    assert repro(project) == ["crawl", "train@pretrained", "evaluate"]
    params["train"]["paper_cnn"]["epochs"] = 3
    write_params(project, params)
    assert repro(project) == ["crawl", "train@paper_cnn", "evaluate"]
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "three epochs")

    # 3b. a rate that cannot work fails at load naming the key; the git-tracked curves stay
    write_params(project, {**params, "train": {**params["train"], "paper_cnn": {**params["train"]["paper_cnn"],
                                                                              "lr": float("inf")}}})  # YAML .inf
    proc = dvc(project, "repro", "-s", "train@paper_cnn", check=False)
    assert proc.returncode != 0 and "train.paper_cnn.lr: must be a finite number" in proc.stdout + proc.stderr
    assert git(project, "status", "--porcelain", "dvclive").stdout == ""
    write_params(project, params)

    # 3c. issue 20: a features file with NaN (damaged or altered since featurize wrote it) made
    # train@pretrained end in a traceback and DVC delete models/pretrained.pt. Training alone
    # (`-s`) now fails in one line naming the file and keeps the model; the pipeline's featurize
    # checks the files it keeps and extracts the altered one again: DVC commits no tampered file
    model_before = (project / "models/pretrained.pt").read_bytes()
    features_ok = digest(project / "data/features")
    victim = sorted((project / "data/features").glob("*.npy"))[0]
    x = np.load(victim)
    x[0, 0] = np.nan
    with open(victim, "wb") as fh:
        np.save(fh, x)
    params["train"]["pretrained"]["dropout"] = 0.3  # train@pretrained must run
    write_params(project, params)
    proc = dvc(project, "repro", "-s", "train@pretrained", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"{victim.name} row 0" in out and "NaN or infinite values" in out, out
    assert "Traceback" not in out
    assert (project / "models/pretrained.pt").read_bytes() == model_before
    assert repro(project) == ["crawl", "featurize", "train@pretrained", "evaluate"]
    assert digest(project / "data/features") == features_ok
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "dropout 0.3")

    # 4. the world's clock moves: new shards, old shards untouched, everything downstream reruns
    features_before = digest(project / "data/features")
    params["crawl"]["demo"]["until"] = "2025-04-01"
    write_params(project, params)
    assert repro_everything(project) == ALL
    features_after = digest(project / "data/features")  # featurize extracted only the new shards
    assert {k: features_after[k] for k in features_before} == features_before
    assert len(features_after) > len(features_before)
    raw_after = digest(project / "data/raw")
    old_shards = {k: v for k, v in raw_before.items() if k.startswith("shards/")}
    assert {k: raw_after[k] for k in old_shards} == old_shards
    assert len([k for k in raw_after if k.startswith("shards/")]) > len(old_shards)
    crawl = json.loads((project / "metrics/crawl.json").read_text())
    assert crawl["new_posts"] > 0
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "later clock")

    # 5. dvc metrics diff compares two committed runs
    diff = json.loads(dvc(project, "metrics", "diff", "HEAD~1", "HEAD", "--json").stdout)
    assert "metrics/evaluate/paper_cnn.json" in diff and "metrics/preprocess.json" in diff
    changed = diff["metrics/preprocess.json"]
    assert changed["kept"]["new"] > changed["kept"]["old"]
    table = dvc(project, "metrics", "show").stdout
    assert "metrics/evaluate/paper_cnn.json" in table and "spearman_within" in table
    assert max(len(line) for line in table.splitlines()) < 200, table  # readable in a terminal


def test_two_clones_reproduce_the_same_bytes(tmp_path: Path) -> None:
    """Same inputs, same bytes: a fresh clone's `dvc repro` gives the dvc.lock the first run
    committed and leaves git clean (no wall-clock time, cache counter or threaded float noise
    in any output or metric). Then a bad param of one stage fails that stage only, and no
    tracked metric is deleted on the way."""
    first = make_project(tmp_path / "first")
    assert repro_everything(first) == ALL
    git(first, "add", "-A")
    git(first, "commit", "-q", "-m", "first run")
    second = tmp_path / "second"
    run(["git", "clone", "-q", str(first), str(second)], tmp_path)
    assert not (second / "data" / "raw").exists() and not (second / ".imgrate-cache").exists()
    # analyze does not rerun: the tables and the dataset it reads came out byte-identical
    assert repro(second) == ALL
    assert git(second, "status", "--porcelain").stdout == ""
    assert (second / "dvc.lock").read_bytes() == (first / "dvc.lock").read_bytes()

    params = tiny_params()
    params["train"]["paper_cnn"]["lr"] = "fast"
    write_params(second, params)
    proc = dvc(second, "repro", check=False)
    assert proc.returncode != 0
    assert "train.paper_cnn.lr: expected a number, got 'fast'" in proc.stdout + proc.stderr
    assert ran(proc.stdout)[0] == "crawl"  # the crawl does not read train: it ran and passed
    changed = git(second, "status", "--porcelain").stdout.splitlines()
    deleted = [line[3:] for line in changed if line.startswith(" D")]
    assert not [p for p in deleted if p.startswith(("metrics/", "reports/"))], changed


def test_bad_params_fail_the_stage_naming_the_key(project: Path) -> None:
    params = tiny_params()
    params["crawl"]["demo"]["seeed"] = 1
    write_params(project, params)
    proc = dvc(project, "repro", "crawl", check=False)
    assert proc.returncode != 0
    assert "crawl.demo.seeed" in proc.stdout + proc.stderr


def test_bad_users_file_fails_before_crawling(project: Path) -> None:
    (project / "users.txt").write_text("alpha_lens_demo\n\n# fine\n../etc\n")
    proc = dvc(project, "repro", "crawl", check=False)
    assert proc.returncode != 0
    assert "users.txt:4" in proc.stdout + proc.stderr
    assert not any((project / "data/raw/shards").glob("*.tar"))
