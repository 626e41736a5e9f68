"""Exact lineage with real DVC in a temporary copy of the project: a featurize param reruns
featurize, the models that read features and evaluate, never train@paper_cnn; a change in
one model's module retrains that model only; and a model is added in three files (its
module, its params.yaml section, a docs row; `make lineage` regenerates dvc.yaml) and runs
through train, evaluate and `imgrate rank`."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import BIN, ROOT, dvc, git, make_project, tiny_params, write_params

pytestmark = pytest.mark.slow


def ran(output: str) -> list[str]:
    return re.findall(r"Running stage '([^']+)'", output)


def repro(project: Path) -> list[str]:
    return ran(dvc(project, "repro").stdout)


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny project after a full `dvc repro`, committed (each test works on a copy)."""
    project = make_project(tmp_path_factory.mktemp("lineage") / "project")
    repro(project)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "first run")
    return project


def _copy(reproduced: Path, dest: Path) -> Path:
    shutil.copytree(reproduced, dest, symlinks=True)
    return dest


def _lock(project: Path) -> dict:
    return yaml.safe_load((project / "dvc.lock").read_text())["stages"]


def test_a_featurize_param_or_a_models_module_reruns_exactly_what_reads_it(reproduced: Path, tmp_path: Path) -> None:
    project = _copy(reproduced, tmp_path / "p")
    lock = _lock(project)
    cnn = {d["path"] for d in lock["train@paper_cnn"]["deps"]}
    assert not {p for p in cnn if p.startswith("data/features") or "featur" in p or "backbone" in p}, cnn
    assert "data/features" in {d["path"] for d in lock["train@pretrained"]["deps"]}

    # featurize.input_size: featurize, the model that reads features and evaluate; never the CNN
    params = tiny_params()
    params["featurize"]["input_size"] = 48
    write_params(project, params)
    dvc(project, "repro", "featurize")
    status = json.loads(dvc(project, "status", "--json").stdout or "{}")
    assert "train@pretrained" in status and "train@paper_cnn" not in status, status
    assert repro(project) == ["crawl", "train@pretrained", "evaluate"]

    # a change in one model's module retrains that model (and evaluate, which rebuilds it) only
    for name in ("pretrained", "paper_cnn"):
        module = project / "imgrate" / "models" / f"{name}.py"
        module.write_text(module.read_text() + "\n# a comment: the module changed\n")
        assert repro(project) == ["crawl", f"train@{name}", "evaluate"], name


def test_a_model_is_added_in_three_files_and_runs_through_train_evaluate_and_rank(reproduced: Path,
                                                                               tmp_path: Path) -> None:
    """The worked example (tests/examples/ridge_head.py): a closed-form ridge head on the
    features. The files a maintainer writes are its module, its params.yaml section and its
    docs row; `make lineage` regenerates dvc.yaml; nothing else changes. The new module runs
    from the project copy (PYTHONPATH), not from the installed package."""
    project = _copy(reproduced, tmp_path / "p")
    readme = project / "docs" / "models.md"  # the docs' table of models
    readme.parent.mkdir(exist_ok=True)
    shutil.copy(ROOT / "docs" / "models.md", readme)  # the docs and the tests, as in the repository
    shutil.copytree(ROOT / "tests", project / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "the docs and the tests")

    # the three files
    shutil.copy(ROOT / "tests" / "examples" / "ridge_head.py", project / "imgrate" / "models" / "ridge_head.py")
    params = tiny_params()
    params["train"]["ridge_head"] = {"alpha": 100.0}
    write_params(project, params)
    row = "| `pretrained` |"
    lines = readme.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(row))
    lines.insert(at + 1, "| `ridge_head` | features | closed form | ridge regression on the backbone features |")
    readme.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(project), "IMGRATE_QUIET": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    env.pop("IMGRATE_ROOT", None)

    def run(*cmd: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(cmd), cwd=project, env=env, text=True, capture_output=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
        return proc

    run(sys.executable, "-m", "imgrate.lineage")  # make lineage
    changed = {line[3:] for line in git(project, "status", "--porcelain").stdout.splitlines()}
    assert changed == {"imgrate/models/ridge_head.py", "params.yaml", "docs/models.md", "dvc.yaml"}, changed
    run(sys.executable, "-m", "imgrate.lineage", "--check")
    # the registry's lists follow: the tests' checks, the CLI's choices
    run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(project / "tests" / "test_dvc_yaml.py"),
        str(project / "tests" / "test_models.py"), "-k", "test_dvc_yaml or docs_row")
    assert "ridge_head" in run(sys.executable, "-m", "imgrate.cli", "train", "--help").stdout

    out = run(str(BIN / "dvc"), "repro").stdout
    assert ran(out) == ["crawl", "train@ridge_head", "evaluate"], out
    lock = _lock(project)
    assert "data/features" in {d["path"] for d in lock["train@ridge_head"]["deps"]}
    report = json.loads((project / "reports" / "evaluate.json").read_text())
    assert {"paper_cnn", "pretrained", "ridge_head"} <= set(report)
    assert (project / "metrics" / "evaluate" / "ridge_head.json").exists()
    history = (project / "dvclive" / "ridge_head" / "plots" / "metrics" / "val_loss.tsv").read_text().splitlines()
    assert len(history) == 2  # one solve, one entry

    photos = tmp_path / "photos"
    photos.mkdir()
    from imgrate.shards import iter_members

    shard = sorted((project / "data" / "raw" / "shards").glob("*.tar"))[0]
    for i, (_, data) in enumerate(x for x in iter_members(shard) if x[0].endswith(".jpg")):
        (photos / f"{i}.jpg").write_bytes(data)
        if i == 3:
            break
    ranked = json.loads(run(sys.executable, "-m", "imgrate.cli", "rank", str(photos), "--model",
                            "models/ridge_head.pt", "--json").stdout)
    assert ranked["architecture"] == "ridge_head" and len(ranked["scores"]) == 4
    scores = [r["score"] for r in ranked["scores"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1
