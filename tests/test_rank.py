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
    # the table is on stdout; a narrow terminal folds a cell over lines, so join the words
    words = " ".join(result.stdout.split())
    assert "IMG_001 [edit].jpg" in words and "IMG_001 [final].jpg" in words, result.stdout
    assert "[bold]notes [red].txt" in " ".join(result.stderr.split())


# --------------------------------------------------------------------------- outputs


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _sheet_order(rows: list[dict[str, str]]) -> list[tuple[int, str]]:
    """(rank, file) of the photos in the order the sheet draws them: each group's best photo
    in rank order, its near-duplicates (ranked lower) inside its card."""
    out = []
    for leader in (r for r in rows if r["group"] == r["rank"]):
        out += [(int(r["rank"]), r["file"]) for r in rows if r["group"] == leader["rank"]]
    return out


def _edit(src: Path, dest: Path, brightness: float) -> None:
    from PIL import ImageEnhance

    with Image.open(src) as im:
        ImageEnhance.Brightness(im.convert("RGB")).enhance(brightness).save(dest, quality=80)


def test_table_on_stdout_csv_and_sheet_agree(trained: Path, folder: Path, tmp_path: Path) -> None:
    """stdout holds the table and nothing else goes there; the CSV has one row per photo in
    rank order with the columns the README names; the sheet embeds every photo as a data: JPEG,
    in the CSV's order, lists the files not ranked with their reason, and fetches nothing."""
    import html as html_lib
    import re

    _edit(folder / "a.jpg", folder / "a_edit.jpg", 1.1)  # an edit of the same frame
    model = trained / "models" / "pretrained.pt"
    out_csv, out_html = tmp_path / "ranked.csv", tmp_path / "sheet.html"
    result = CliRunner().invoke(app, ["rank", str(folder), "--model", str(model), "--csv", str(out_csv),
                                      "--html", str(out_html)])
    assert result.exit_code == 0, result.output
    assert "not ranked" not in result.stdout and "not ranked" in result.stderr
    table = [line.split() for line in result.stdout.splitlines()]
    table_names = [cells[1] for cells in table if len(cells) > 2 and cells[0].isdigit()]
    rows = _csv(out_csv)
    assert list(rows[0]) == ["rank", "file", "score", "percentile", "unusual", "distance_percentile", "model", "group"]
    assert [int(r["rank"]) for r in rows] == list(range(1, len(rows) + 1))
    assert {Path(r["file"]).name for r in rows} == IMAGES | {"a_edit.jpg"}
    assert table_names == [Path(r["file"]).name for r in rows]  # the table and the CSV: one order
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {r["model"] for r in rows} == {"pretrained"}
    group = {Path(r["file"]).name: int(r["group"]) for r in rows}
    rank = {Path(r["file"]).name: int(r["rank"]) for r in rows}
    assert group["a.jpg"] == group["a_edit.jpg"] == min(rank["a.jpg"], rank["a_edit.jpg"])  # one group, led by its best
    assert all(group[n] == rank[n] for n in ("b.png", "c.webp", "d.png"))  # the others stand alone

    page = out_html.read_text(encoding="utf-8")
    assert "<script" not in page and not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing to fetch
    photos = re.findall(r'<img class="(photo|member)" src="data:image/jpeg;base64,[^"]+" alt="[^"]*" '
                        r'data-rank="(\d+)" data-file="([^"]*)"', page)
    assert [(int(r), html_lib.unescape(f)) for _, r, f in photos] == _sheet_order(rows)  # each once, CSV order
    assert [c for c, _, _ in photos].count("member") == 1  # the edit is shown inside its group's card
    tail = page[page.index("Not ranked"):]
    assert "notes.txt" in tail and "no image format Pillow knows" in tail and "broken.jpg" in tail
    assert "no evaluation of this model file" in page  # how far to trust it: not measured for this file


def test_the_sheet_draws_every_photo_offline_in_the_csv_order(trained: Path, folder: Path, tmp_path: Path) -> None:
    """Headless Chromium with the network cut off draws every thumbnail of the sheet, the
    cards come in the CSV's order, and the page runs no script of its own."""
    import os

    import browser

    if browser.chromium() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed: CI needs it (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    _edit(folder / "b.png", folder / "b_edit.png", 0.9)
    out_csv, out_html = tmp_path / "ranked.csv", tmp_path / "sheet.html"
    result = CliRunner().invoke(app, ["rank", str(folder), "--model", "all", "--csv", str(out_csv),
                                      "--html", str(out_html)], env={"IMGRATE_ROOT": str(trained)})
    assert result.exit_code == 0, result.output
    rows = _csv(out_csv)
    report = browser.render(out_html)
    assert report["scripts"] == 0
    drawn = report["drawn"]
    assert len(drawn) == len(rows) and all(d["loaded"] and d["width"] > 0 for d in drawn), drawn
    assert [(int(d["rank"]), d["file"]) for d in drawn] == _sheet_order(rows)
    leaders = [r["rank"] for r in rows if r["group"] == r["rank"]]
    assert report["cards"] == leaders
    shot = browser.screenshot(out_html, tmp_path / "sheet.png", width=1200, height=1600)
    with Image.open(shot) as im:
        assert im.size == (1200, 1600) and len(np.unique(np.asarray(im.convert("L")))) > 50  # photos, not a blank page


def test_model_all_shows_every_model_and_their_agreement(trained: Path, folder: Path, tmp_path: Path) -> None:
    """--model all scores with every trained model of the registry, orders by the one whose
    model file holds the best validation within-user Spearman, and reports each model's
    percentile and their rank correlation over the folder."""
    from scipy.stats import spearmanr

    from imgrate.models import read_model_file

    validated = {name: read_model_file(trained / "models" / f"{name}.pt")[0].summary["val_spearman_within"]
                 for name in MODELS}
    best = max(sorted(validated), key=lambda n: validated[n])
    out_csv = tmp_path / "all.csv"
    runner = CliRunner(env={"IMGRATE_ROOT": str(trained)})
    result = runner.invoke(app, ["rank", str(folder), "--model", "all", "--csv", str(out_csv), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["architecture"] == best and [m["model"] for m in out["models"]][0] == best
    assert {m["model"] for m in out["models"]} == set(MODELS)
    rows = _csv(out_csv)
    assert {r["model"] for r in rows} == {best}
    for name in MODELS:
        assert all(0 <= float(r[f"percentile_{name}"]) <= 100 for r in rows)
    (pair, *_) = out["agreement"]
    a, b = pair["models"]
    want = spearmanr([float(r[f"score_{a}"]) for r in rows], [float(r[f"score_{b}"]) for r in rows]).statistic
    assert pair["spearman"] == pytest.approx(want, abs=1e-3)
    # without --model: the same best-validated model, alone
    alone = json.loads(runner.invoke(app, ["rank", str(folder), "--json"]).stdout)
    assert alone["architecture"] == best and len(alone["models"]) == 1
    by_name = json.loads(runner.invoke(app, ["rank", str(folder), "--json", "--model", best]).stdout)
    assert [r["file"] for r in by_name["scores"]] == [r["file"] for r in alone["scores"]]


def test_predict_writes_the_same_outputs(trained: Path, folder: Path, tmp_path: Path) -> None:
    model = str(trained / "models" / "paper_cnn.pt")
    files = [str(folder / n) for n in sorted(IMAGES)] + [str(folder / "notes.txt")]
    result = CliRunner().invoke(app, ["predict", *files, "--model", model, "--csv", str(tmp_path / "p.csv"),
                                      "--html", str(tmp_path / "p.html")])
    assert result.exit_code == 0, result.output
    assert [r["file"] for r in _csv(tmp_path / "p.csv")] == [
        r["file"] for r in json.loads(CliRunner().invoke(app, ["rank", str(folder), "--model", model, "--json"]).stdout)
        ["scores"]]
    assert "notes.txt" in (tmp_path / "p.html").read_text(encoding="utf-8").split("Not ranked")[1]


def test_files_that_are_not_photos_are_refused_unread(trained: Path, folder: Path, tmp_path: Path) -> None:
    """A FIFO, a link to /dev/zero and an 8 GB sparse file are refused by their type or size
    before anything is read: the ranking finishes (a FIFO would block an open or a read
    forever; /dev/zero and the sparse file would be read whole), the photos are ranked, and each
    refusal is listed with its reason. Run as a separate process, under a time limit."""
    import os
    import subprocess
    import sys

    os.mkfifo(folder / "pipe.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    with open(folder / "huge.jpg", "wb") as fh:
        fh.truncate(8 * 1024 ** 3)  # sparse: no disk used
    out_html = tmp_path / "sheet.html"
    cmd = [sys.executable, "-m", "imgrate.cli", "rank", str(folder), "--model", str(trained / "models" / "paper_cnn.pt"),
           "--json", "--html", str(out_html)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "IMGRATE_QUIET": "1"})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert {Path(r["file"]).name for r in out["scores"]} == IMAGES
    errors = {Path(e["file"]).name: e["error"] for e in out["errors"]}
    assert "a FIFO" in errors["pipe.jpg"] and "a character device" in errors["zero.jpg"]
    assert "8.0 GB, over the 64.0 MB limit" in errors["huge.jpg"]
    page = out_html.read_text(encoding="utf-8")
    assert all(name in page.split("Not ranked")[1] for name in ("pipe.jpg", "zero.jpg", "huge.jpg"))


def test_hostile_file_names_are_text_in_the_terminal_and_the_sheet(trained: Path, folder: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A file name holding an escape sequence, HTML or a formula is printed with the escape
    visible, written into the sheet as text (no tag, no script) and into the CSV so that a
    spreadsheet does not run it."""
    hostile = ["\x1b[31mred\x1b[0m.jpg", "<img src=x onerror=alert(1)>.jpg", "=HYPERLINK(1).jpg"]
    for name in hostile:
        (folder / name).write_bytes((folder / "b.png").read_bytes())
    (folder / "<script>x.txt").write_text("not an image")
    out_csv, out_html = tmp_path / "r.csv", tmp_path / "r.html"
    result = CliRunner().invoke(app, ["rank", str(folder), "--model", str(trained / "models" / "paper_cnn.pt"),
                                      "--csv", str(out_csv), "--html", str(out_html)])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output and "\\x1b[31mred\\x1b[0m.jpg" in result.stdout
    page = out_html.read_text(encoding="utf-8")
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;.jpg" in page
    assert "<script" not in page and "&lt;script&gt;x.txt" in page
    assert "\x1b" not in page and "\\x1b[31mred" in page
    # a file named in the current folder: its CSV cell is text a spreadsheet does not evaluate
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(app, ["predict", "=HYPERLINK(1).jpg", "--model", str(trained / "models" / "paper_cnn.pt"),
                                      "--csv", str(out_csv)])
    assert result.exit_code == 0, result.output
    assert [r["file"] for r in _csv(out_csv)] == ["'=HYPERLINK(1).jpg"]


def test_how_far_to_trust_the_order_comes_from_the_evaluation_of_that_file(trained: Path, folder: Path,
                                                                           tmp_path: Path) -> None:
    """In a project (a dvc.yaml above the model file) the sheet and the table say in words how
    well the model ordered test photos, from reports/evaluate.json; an interval that includes
    0 says not to rely on the order; a copy of the model file elsewhere has no evaluation."""
    import os
    import shutil

    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "reports").mkdir()
    (project / "dvc.yaml").write_text("stages: {}\n")
    model = project / "models" / "paper_cnn.pt"
    shutil.copy2(trained / "models" / "paper_cnn.pt", model)
    report = project / "reports" / "evaluate.json"

    def ranked(ci: list[float], spearman: float) -> str:
        report.write_text(json.dumps({"paper_cnn": {
            "spearman_within": spearman, "spearman_within_ci": ci, "pairwise_within": 0.66, "n_test": 180,
            "n_users": 26}}))
        os.utime(model, (1_000_000, 1_000_000))  # older than the report: not stale
        result = CliRunner().invoke(app, ["rank", str(folder), "--model", str(model), "--html", str(tmp_path / "s.html")])
        assert result.exit_code == 0, result.output
        words = " ".join(result.stdout.split())
        assert words.split("how far to trust the order: ")[1].split(". ")[0] in (tmp_path / "s.html").read_text()
        return words

    good = ranked([0.31, 0.55], 0.43)
    assert ("On 180 test photos of 26 photographers, paper_cnn was a moderate guide: within-photographer rank "
            "correlation 0.43 (95% interval 0.31 to 0.55)") in good
    assert "more-liked first 66% of the time" in good and "Do not rely" not in good
    chance = ranked([-0.1, 0.3], 0.1)
    assert "no better than chance could have" in chance and "Do not rely on this order." in chance
    report.write_text("{not json")
    broken = CliRunner().invoke(app, ["rank", str(folder), "--model", str(model)])
    assert broken.exit_code == 0 and "no evaluation of this model file" in broken.stdout
    elsewhere = CliRunner().invoke(app, ["rank", str(folder), "--model", str(trained / "models" / "paper_cnn.pt")])
    assert "no evaluation of this model file" in elsewhere.stdout
