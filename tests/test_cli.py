"""The imgrate command: one command per stage, clear errors."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from typer.testing import CliRunner

from imgrate.cli import app
from imgrate.errors import ExitCode

runner = CliRunner()


def test_help_lists_one_command_per_stage_and_predict() -> None:
    out = runner.invoke(app, ["--help"]).output
    for command in ("crawl", "export", "preprocess", "train", "evaluate", "predict"):
        assert command in out


def test_stage_command_names_the_bad_params_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "params.yaml").write_text("crawl: {}\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export"])
    assert result.exit_code == ExitCode.ERROR
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
    assert missing.exit_code == ExitCode.ERROR and "model file not found" in missing.output


@pytest.mark.parametrize("width", [80, 100])
def test_db_tables_show_whole_numbers_and_names_at_80_columns(width: int) -> None:
    """`imgrate db top/bottom/users` on a terminal of 80 columns: every number and every
    name appears whole (issue 12.6: `1,153…`, `DGorw…`, `2025-…`, `239,8…` were cut)."""
    from rich.console import Console

    from imgrate.cli import posts_table, users_table

    posts = [{"user": "basalt_and_bloom_demo", "shortcode": f"DGorw{i}Xyz1A", "date": "2025-06-01T12:00:00",
              "likes": 1_153_234 + i, "comments": 12_345, "typename": "GraphSidecar"} for i in range(3)]
    users = [{"username": "basalt_and_bloom_demo", "followers": 239_811, "posts": 104,
              "likes_total": 12_345_678, "likes_mean": 118_708.4, "likes_std": 98_765.4, "likes_min": 1_234,
              "likes_max": 1_153_234, "likes_per_follower": 0.4950}]
    for table, cells in ((posts_table(posts, "top 3 liked posts"),
                          [v for p in posts for v in (p["user"], p["shortcode"], "2025-06-01", f"{p['likes']:,}",
                                                      "12,345", "sidecar")]),
                         (users_table(users, "users in imgrate"),
                          ["basalt_and_bloom_demo", "239,811", "12,345,678", "118,708", "1,153,234", "0.4950"])):
        console = Console(width=width, record=True, file=io.StringIO(), color_system=None)
        console.print(table)
        text = console.export_text()
        assert max(len(line) for line in text.splitlines()) <= width, text
        assert "…" not in text, text
        for cell in cells:
            assert cell in text, (cell, text)


def _stage_module(body: list) -> str | None:
    """The module whose ``STAGE`` a function body or a module imports."""
    import ast

    for node in body:
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and any(a.name == "STAGE" for a in sub.names):
                return sub.module
    return None


def test_stage_script_and_command_run_the_same_declaration() -> None:
    """stages/X.py and `imgrate X` both run X's STAGE through the one entry (imgrate.entry):
    one wiring, one summary, no copies of main()."""
    import ast

    from conftest import ROOT

    from imgrate import lineage

    cli = {n.name: n for n in ast.parse((ROOT / "imgrate" / "cli.py").read_text()).body
           if isinstance(n, ast.FunctionDef)}
    for stage in lineage.STAGES:
        text = (ROOT / "stages" / f"{stage.name}.py").read_text()
        module = _stage_module(ast.parse(text).body)
        assert module is not None and module.startswith("imgrate."), stage.name
        assert "from imgrate.entry import script" in text, stage.name
        assert _stage_module(cli[stage.name].body) == module, stage.name
        assert len(text.splitlines()) <= 15, f"stages/{stage.name}.py is not thin"
    mains = [p for p in (ROOT / "imgrate").rglob("*.py") if "\ndef main(" in p.read_text()]
    assert sorted(p.name for p in mains) == ["entry.py", "lineage.py"], mains  # one entry (and the generator's)


def test_a_usage_error_is_not_an_imgrate_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Click's usage error (2) and imgrate's error (4) are told apart by scripts."""
    monkeypatch.chdir(tmp_path)
    assert runner.invoke(app, ["train"]).exit_code == ExitCode.USAGE == 2  # a missing argument
    assert runner.invoke(app, ["rank", str(tmp_path / "nowhere")]).exit_code == ExitCode.ERROR != ExitCode.USAGE


def test_stage_script_and_command_print_the_same_summary(tiny_world, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from conftest import ROOT, copy_world, tiny_params, write_params

    _, paths = tiny_world
    local = copy_world(paths, tmp_path)
    write_params(local.root, tiny_params())
    env = {"PATH": "/usr/bin:/bin", "IMGRATE_QUIET": "1", "IMGRATE_ROOT": str(local.root), "COLUMNS": "40"}
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "featurize.py")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    monkeypatch.setenv("IMGRATE_ROOT", str(local.root))
    monkeypatch.setenv("IMGRATE_QUIET", "1")
    result = runner.invoke(app, ["featurize"])
    assert result.exit_code == 0, result.output
    line = [x for x in proc.stderr.splitlines() if x.startswith("featurize:")]
    assert len(line) == 1 and "0 extracted from 0 new shards" in line[0]
    assert line[0] in result.output.splitlines()  # one line each, however narrow the terminal


def test_errors_exit_with_named_codes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imgrate.errors import ExitCode

    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["rank", str(tmp_path / "nowhere")])
    assert result.exit_code == ExitCode.ERROR == 4
    assert "nowhere: not a folder" in " ".join(result.output.split()) and "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["rank", str(tmp_path / "empty")])
    assert result.exit_code == ExitCode.ERROR and "no files to rank" in " ".join(result.output.split())
    import shutil

    from conftest import ROOT

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    result = runner.invoke(app, ["train", "transformer"])  # an unknown model, named
    assert result.exit_code == ExitCode.ERROR and "unknown model 'transformer'" in " ".join(result.output.split())


def test_user_text_in_errors_is_printed_as_it_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A users.txt line that looks like Rich markup gives a clear error (no MarkupError)."""
    import yaml
    from conftest import tiny_params

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    (tmp_path / "users.txt").write_text("alpha_lens_demo\n[/bold] x\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["crawl"])
    assert result.exit_code == ExitCode.ERROR, result.output
    assert "users.txt:2: invalid Instagram username '[/bold] x'" in " ".join(result.output.split())
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_huge_users_line_is_quoted_as_an_excerpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from conftest import tiny_params

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    (tmp_path / "users.txt").write_text("alpha_lens_demo\n" + "x" * 2_000_000 + "\n")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["crawl"])
    assert result.exit_code == ExitCode.ERROR
    assert "users.txt:2" in result.output and "2,000,000 characters" in " ".join(result.output.split())
    assert len(result.output) < 1000


def test_non_utf8_users_file_and_params_name_the_file_and_line(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    from conftest import tiny_params

    params = yaml.safe_dump(tiny_params()).encode()
    (tmp_path / "params.yaml").write_bytes(params)
    (tmp_path / "users.txt").write_bytes(b"alpha_lens_demo\nbr\xe9sil_photo\n")  # Latin-1
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["crawl"])
    assert result.exit_code == ExitCode.ERROR
    assert "users.txt:2: not UTF-8 text (byte 0xe9 at column 3)" in " ".join(result.output.split())
    (tmp_path / "params.yaml").write_bytes(b"# caf\xe9\n" + params)
    result = runner.invoke(app, ["crawl"])
    assert result.exit_code == ExitCode.ERROR
    assert "params.yaml:1: not UTF-8 text" in " ".join(result.output.split())


def test_a_cut_posts_table_names_the_file_and_line_in_one_line(tiny_world, tmp_path: Path) -> None:
    """A posts.jsonl cut in the middle of a line: one line naming the file and the line, no traceback."""
    import os
    import subprocess
    import sys

    import yaml
    from conftest import ROOT, copy_world, tiny_params

    _, paths = tiny_world
    local = copy_world(paths, tmp_path / "p")
    (local.root / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    data = local.posts_table.read_bytes()
    cut = data.index(b"\n", data.index(b"\n", data.index(b"\n") + 1) + 1) + 20  # inside line 4
    local.posts_table.write_bytes(data[:cut])
    env = {**os.environ, "IMGRATE_QUIET": "1", "IMGRATE_ROOT": str(local.root), "COLUMNS": "40"}
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "preprocess.py")], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == ExitCode.ERROR, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert f"{local.posts_table}:4: not a JSON line" in lines[0]
