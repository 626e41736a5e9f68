"""`imgrate rank FOLDER` and `imgrate predict IMAGE...` with every model of the registry."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import copy_world
from PIL import Image
from typer.testing import CliRunner

from imgrate.cli import app
from imgrate.errors import ExitCode
from imgrate.models import model_names
from imgrate.shards import iter_members

MODELS = model_names()


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory) -> Path:
    """A copy of the tiny world with a model file of every model of the registry (quick fits)."""
    import dataclasses

    from imgrate.train import run_stage

    params, paths = tiny_world
    local = copy_world(paths, tmp_path_factory.mktemp("trained"))
    quick = params.train
    for name in MODELS:
        if "epochs" in quick.models[name]:
            quick = quick.with_model(name, epochs=2)
    for name in MODELS:
        run_stage(name, dataclasses.replace(params, train=quick), local)
    return local.root


@pytest.fixture
def folder(trained: Path, tmp_path: Path) -> Path:
    """New photos in mixed formats and sizes, plus files that are not images."""
    shard = sorted((trained / "data" / "raw" / "shards").glob("*.tar"))[0]
    jpegs = [data for name, data in iter_members(shard) if name.endswith(".jpg")][:3]
    out = tmp_path / "new"
    out.mkdir()
    (out / "a.jpg").write_bytes(jpegs[0])
    Image.open(io.BytesIO(jpegs[1])).resize((300, 170)).save(out / "b.png")  # PNG, not square
    Image.open(io.BytesIO(jpegs[2])).convert("L").save(out / "c.webp")  # grayscale WebP
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128
    Image.fromarray(rgba, "RGBA").save(out / "d.png")  # alpha
    (out / "notes.txt").write_text("not an image\n")
    (out / "broken.jpg").write_bytes(jpegs[0][:100])  # truncated
    (out / ".hidden.jpg").write_bytes(jpegs[0])  # hidden files are not photos
    return out


IMAGES = {"a.jpg", "b.png", "c.webp", "d.png"}


@pytest.mark.parametrize("model", MODELS)
def test_rank_ranks_the_images_and_reports_the_rest(trained: Path, folder: Path, model: str) -> None:
    result = CliRunner().invoke(app, ["rank", str(folder), "--model", str(trained / "models" / f"{model}.pt"),
                                      "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["architecture"] == model
    ranked = out["scores"]
    assert {Path(r["file"]).name for r in ranked} == IMAGES
    assert [r["rank"] for r in ranked] == [1, 2, 3, 4]
    scores = [r["score"] for r in ranked]
    assert scores == sorted(scores, reverse=True) and all(np.isfinite(scores))
    errors = {Path(e["file"]).name: e["error"] for e in out["errors"]}
    assert set(errors) == {"notes.txt", "broken.jpg"}
    assert "not a readable image (no image format Pillow knows)" in errors["notes.txt"]
    assert "damaged or unsupported" in errors["broken.jpg"]


@pytest.mark.parametrize("model", MODELS)
def test_percentiles_against_the_training_photos_and_unusual_photos_flagged(
        trained: Path, folder: Path, model: str) -> None:
    """Photos the model never saw get a percentile in [0, 100] among its scores of the
    training photos (of one photographer with --user, else of all), and a black frame and a
    black-and-white checkerboard, unlike any crawled photo, are flagged unusual while the
    crawled photos are not."""
    from imgrate import reference
    from imgrate.models import read_model_file

    model_file = trained / "models" / f"{model}.pt"
    info, _ = read_model_file(model_file)
    ref = info.extra[reference.KEY]  # the model file's reference block
    users = sorted(ref["scores"]["by_user"])
    assert len(ref["scores"]["all"]) == sum(len(v) for v in ref["scores"]["by_user"].values()) > 0
    Image.new("RGB", (200, 200), (0, 0, 0)).save(folder / "black.webp")
    board = (np.indices((120, 120)).sum(axis=0) // 10 % 2 * 255).astype(np.uint8)
    Image.fromarray(board).convert("RGB").save(folder / "board.png")
    runner = CliRunner()
    outs = {}
    for who in (None, users[0], "nobody_we_know"):
        args = ["rank", str(folder), "--model", str(model_file), "--json"] + (["--user", who] if who else [])
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        outs[who] = json.loads(result.stdout)
    by_name = {Path(r["file"]).name: r for r in outs[None]["scores"]}
    assert set(by_name) == IMAGES | {"black.webp", "board.png"}
    for r in by_name.values():
        assert 0.0 <= r["percentile"] <= 100.0
        # the percentile is the share of training scores below the photo's score
        below = np.mean(np.array(ref["scores"]["all"]) < r["score"]) * 100
        assert below - 0.05 <= r["percentile"] <= below + 100.0 / len(ref["scores"]["all"]) + 0.05  # rounded to 0.1
    assert by_name["black.webp"]["unusual"] is True and by_name["board.png"]["unusual"] is True
    assert not any(by_name[n]["unusual"] for n in ("a.jpg", "b.png"))  # photos of the crawled world
    assert outs[None]["percentile_of"] == f"all {len(users)} photographers' training photos"
    assert outs[users[0]]["percentile_of"] == f"{users[0]}'s training photos"
    own = {Path(r["file"]).name: r["percentile"] for r in outs[users[0]]["scores"]}
    assert own["a.jpg"] == pytest.approx(reference.percentile(ref, by_name["a.jpg"]["score"], users[0]), abs=0.05)
    assert outs["nobody_we_know"]["percentile_of"] == outs[None]["percentile_of"]  # unknown: all users
    text = runner.invoke(app, ["rank", str(folder), "--model", str(model_file), "--user", "nobody_we_know"]).output
    assert "percentile" in text and "unusual photo" in text and "nobody_we_know is not among" in text


def test_rank_prints_a_table_and_the_skipped_files(trained: Path, folder: Path) -> None:
    result = CliRunner().invoke(app, ["rank", str(folder), "--model", str(trained / "models" / "pretrained.pt")])
    assert result.exit_code == 0, result.output
    text = result.output
    assert all(name in text for name in IMAGES)
    assert "not ranked" in text and "notes.txt" in text


def test_predict_scores_files_the_same_way_as_rank(trained: Path, folder: Path) -> None:
    model = str(trained / "models" / "pretrained.pt")
    files = [str(folder / n) for n in sorted(IMAGES)]
    result = CliRunner().invoke(app, ["predict", *files, "--model", model, "--json"])
    assert result.exit_code == 0, result.output
    by_predict = {r["file"]: r["score"] for r in json.loads(result.stdout)["scores"]}
    by_rank = {r["file"]: r["score"] for r in
               json.loads(CliRunner().invoke(app, ["rank", str(folder), "--model", model, "--json"]).stdout)["scores"]}
    assert by_predict == pytest.approx(by_rank)


def test_only_non_images_or_a_missing_model_fail_clearly(trained: Path, tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("hello")
    result = CliRunner().invoke(app, ["rank", str(tmp_path), "--model", str(trained / "models" / "paper_cnn.pt")])
    assert result.exit_code == ExitCode.ERROR
    result = CliRunner().invoke(app, ["rank", str(tmp_path), "--model", str(tmp_path / "nope.pt")])
    assert result.exit_code == ExitCode.ERROR and "model file not found" in result.output
    result = CliRunner().invoke(app, ["rank", str(tmp_path / "missing")])
    assert result.exit_code == ExitCode.ERROR and "not a folder" in result.output


def test_bracketed_file_names_print_as_they_are(trained: Path, folder: Path) -> None:
    """Rich markup in file names is text: `IMG_001 [edit].jpg` is not printed as `IMG_001 .jpg`."""
    for name in ("IMG_001 [edit].jpg", "IMG_001 [final].jpg"):
        (folder / name).write_bytes((folder / "a.jpg").read_bytes())
    (folder / "[bold]notes [red].txt").write_text("not an image\n")
    result = CliRunner().invoke(app, ["rank", str(folder), "--model", str(trained / "models" / "pretrained.pt")])
    assert result.exit_code == 0, result.output
    # the file column, whatever the width: cells fold over lines, so join its pieces
    column = "".join(line.split("│")[2] for line in result.output.splitlines() if line.count("│") >= 3)
    column = "".join(column.split())
    assert "IMG_001[edit].jpg" in column and "IMG_001[final].jpg" in column, result.output
    assert "[bold]notes [red].txt" in " ".join(result.output.split())
