"""The imgrate command: one command per stage, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgrate.cli import app

runner = CliRunner()


def test_help_lists_one_command_per_stage_and_predict() -> None:
    out = runner.invoke(app, ["--help"]).output
    for command in ("crawl", "export", "preprocess", "train", "evaluate", "predict"):
        assert command in out


def test_stage_command_names_the_bad_params_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text("crawl: {}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export"])
    assert result.exit_code == 2
    assert "missing params key export" in result.output


def test_predict_scores_images_and_reports_non_images(tiny_world, tmp_path: Path) -> None:
    import shutil

    from PIL import Image

    from imgrate.paths import Paths
    from imgrate.train import run_stage

    params, paths = tiny_world
    local = Paths(tmp_path / "p")
    shutil.copytree(paths.dataset, local.dataset)
    run_stage("paper_cnn", params, local)
    Image.new("RGB", (300, 200), (200, 30, 30)).save(tmp_path / "red.jpg")
    Image.new("L", (64, 64), 128).save(tmp_path / "gray.png")
    (tmp_path / "notes.txt").write_text("not an image")
    result = runner.invoke(app, ["predict", str(tmp_path / "red.jpg"), str(tmp_path / "gray.png"),
                                 str(tmp_path / "notes.txt"), "--model", str(local.model("paper_cnn")), "--json"])
    assert result.exit_code == 0, result.output
    import json

    payload = json.loads(result.stdout)
    assert {s["file"] for s in payload["scores"]} == {str(tmp_path / "red.jpg"), str(tmp_path / "gray.png")}
    assert payload["errors"][0]["file"].endswith("notes.txt") and "not a readable image" in payload["errors"][0]["error"]
    missing = runner.invoke(app, ["predict", str(tmp_path / "red.jpg"), "--model", str(tmp_path / "none.pt")])
    assert missing.exit_code == 2 and "model file not found" in missing.output
