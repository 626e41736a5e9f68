"""The docs are true: every shell block of README.md and docs/*.md is marked (tests/docs_blocks.py),
the runnable ones run on a tiny world, and the site builds with `mkdocs build --strict`.

A session runs its blocks in order, each in a fresh bash (`set -eo pipefail`) that starts in
the folder where the previous block ended, with the test's venv first on PATH and HOME a
temporary folder holding the reader's photos (``~/to_post/``: a.jpg, b.png, c.jpg). The
``repro`` base is made by ``make repro`` in a folder whose path has spaces, in a git copy of
the project with tiny params (its outputs not committed, as after a newcomer's first run);
its ``my_photos/`` holds the same photos. The test's venv stands in for ``make setup`` (a
symlink ``.venv``, in the base and in any git clone a block makes), so nothing is installed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import BIN, ROOT, make_project, run
from docs_blocks import Block, all_blocks, doc_files, sessions
from PIL import Image

BLOCKS = all_blocks()
SESSIONS = sessions(BLOCKS)
README_MAX_LINES = 300
WIDTH = 120  # `imgrate experiments` fits in it


def test_every_shell_block_is_run_or_marked_illustrative() -> None:
    unmarked = [f"{b.where}: {b.mark or 'no docs-test mark before it'}" for b in BLOCKS if not (b.session or b.reason)]
    assert not unmarked, "mark each block (tests/docs_blocks.py says how):\n" + "\n".join(unmarked)
    assert SESSIONS, "no runnable block at all"


def test_a_session_starts_from_one_base() -> None:
    mixed = {name: sorted({b.base or "" for b in found}) for name, found in SESSIONS.items()
             if len({b.base for b in found}) > 1}
    assert not mixed, f"sessions whose blocks name different bases: {mixed}"


def test_readme_is_short_and_keeps_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES
    for command in ("make repro", "make test"):
        assert f"\n{command}   " in readme or f"\n{command} " in readme, command
    linked = {p.name for p in doc_files()[1:]} - {"index.md"}
    missing = [name for name in sorted(linked) if f"docs/{name}" not in readme]
    assert not missing, f"pages the README does not link: {missing}"


def test_the_home_page_follows_the_readme() -> None:
    """docs/index.md is README.md up to its list of pages, with links relative to docs/ (and the
    README's runnable block marked illustrative there: it runs once, from the README)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Documentation")[0]
    home = (ROOT / "docs" / "index.md").read_text(encoding="utf-8").split("\n## Documentation")[0]
    expected = readme.replace("](docs/", "](").replace(
        "<!-- docs-test: session readme from repro -->",
        "<!-- docs-test: illustrative the README's own copy of this block is run (session readme) -->")
    assert home == expected, "copy README.md's changes into docs/index.md"


def test_site_builds_strict(tmp_path: Path) -> None:
    """A broken link or anchor, or a page missing from the nav, fails the build."""
    mkdocs = BIN / "mkdocs"
    assert mkdocs.exists(), "mkdocs is missing: `make setup` installs it (the test extra)"
    proc = subprocess.run([str(mkdocs), "build", "--strict", "--quiet", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").exists()


# --- the runnable sessions ----------------------------------------------------------------

def _photos(folder: Path) -> None:
    """Three photos a reader might rank: two JPEGs and a PNG of smooth random colour."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in ("a.jpg", "b.png", "c.jpg"):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((320, 240), Image.Resampling.BILINEAR).save(folder / name)


def _stand_in_venv(folder: Path) -> None:
    """The test's venv as ``folder/.venv`` (what `make setup` makes), unseen by git."""
    (folder / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    exclude = folder / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a") as out:
        out.write("/.venv\n")


@pytest.fixture(scope="session")
def bases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two starting points, made once; each session works in its own copy."""
    top = tmp_path_factory.mktemp("docs")
    clone = make_project(top / "clone" / "imgrate")
    _stand_in_venv(clone)
    return {"clone": clone, "top": top}


def _repro_base(bases: dict[str, Path]) -> Path:
    folder = bases["top"] / "a folder with spaces" / "imgrate"
    if folder.exists():
        return folder
    make_project(folder)
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, folder / name)
    os.utime(folder / "pyproject.toml", (0, 0))  # older than the venv's install stamp: no reinstall
    _stand_in_venv(folder)
    run(["git", "add", "Makefile", "pyproject.toml"], folder)
    run(["git", "commit", "-q", "-m", "Makefile"], folder)
    assert (BIN.parent / ".installed").exists(), "the test venv was not made by `make setup`"
    make = run(["make", "repro"], folder)
    assert "Running stage 'evaluate'" in make.stdout, make.stdout[-2000:]
    _photos(folder / "my_photos")
    return folder


def _env(home: Path, repo: Path) -> dict[str, str]:
    import matplotlib

    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "HOME": str(home),
           "REPO": str(repo), "DVC_NO_ANALYTICS": "1", "MPLCONFIGDIR": matplotlib.get_configdir(),
           "NO_MKDOCS_2_WARNING": "1", "GIT_AUTHOR_NAME": "imgrate-docs", "GIT_AUTHOR_EMAIL": "docs@example.invalid",
           "GIT_COMMITTER_NAME": "imgrate-docs", "GIT_COMMITTER_EMAIL": "docs@example.invalid"}
    for name in ("IMGRATE_ROOT", "VIRTUAL_ENV", "IMGRATE_MONGODB_URI"):
        env.pop(name, None)
    return env


def _run_block(block: Block, cwd: Path, env: dict[str, str], state: Path) -> Path:
    """Run one block from ``cwd``; return the folder it ended in."""
    script = f"set -eo pipefail\ncd {shlex.quote(str(cwd))}\n{block.script}\npwd > {shlex.quote(str(state))}\n"
    started = time.monotonic()
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=600)
    took = time.monotonic() - started
    assert proc.returncode == 0, (f"{block.where} failed (exit {proc.returncode}, {took:.0f} s):\n{block.script}\n"
                                  f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    if "imgrate experiments" in block.script:  # its table: from its header to its legend
        lines = proc.stdout.splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("experiment "))
        end = next(i for i in range(start, len(lines)) if lines[i].startswith("ρ: spearman_within"))
        wide = [line for line in lines[start:end + 1] if len(line) >= WIDTH]
        assert not wide, f"{block.where}: lines of {WIDTH} columns or more:\n" + "\n".join(wide)
    if "dvc exp show --md --drop" in block.script:  # the --keep regex matches the real column names
        assert "metrics/evaluate/paper_cnn.json:spearman_within" in proc.stdout, proc.stdout[-3000:]
    ended = Path(state.read_text().strip())
    if ended != cwd and (ended / ".git").exists() and not (ended / ".venv").exists():
        _stand_in_venv(ended)  # a clone the block made: `make setup` would install here
    return ended


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SESSIONS))
def test_session_runs(name: str, bases: dict[str, Path], tmp_path: Path) -> None:
    found = SESSIONS[name]
    base = _repro_base(bases) if found[0].base == "repro" else bases["clone"]
    work = tmp_path / "docs session" / "imgrate"
    shutil.copytree(base, work, symlinks=True)
    home = tmp_path / "home"
    _photos(home / "to_post")
    env = _env(home, work)
    state = tmp_path / "cwd"
    cwd = work
    for block in found:
        cwd = _run_block(block, cwd, env, state)
