"""Lineage: dvc.yaml, generated from the stage declarations and the registries.

Each stage module declares its :class:`imgrate.entry.Stage` (``STAGE``): the data it reads,
its params, its outputs. This module lists the stages in pipeline order (:data:`STAGES`) and
renders dvc.yaml from them (:func:`render`; ``make lineage`` writes it, and
tests/test_dvc_yaml.py fails when the file differs). A stage depends on its script, the data
it reads, and every imgrate module the script imports (transitively, lazy imports included:
:func:`closure`), plus the modules it imports by name: ``train@<model>`` the model's own
module (so each model depends on exactly what it reads), evaluate every model's.

``train`` runs once per model of the registry (DVC's ``foreach``): the dependencies all
models share are written once, each model's own (its module, the code and data of its
inputs) in its item. DVC's foreach takes the same number of item dependencies from every
model: a shorter list repeats the model's module.
"""

from __future__ import annotations

import ast
import json
import re
import textwrap
from pathlib import Path

from imgrate import analyze, evaluate, export, featurize, preprocess, train
from imgrate.crawl import stage as crawl
from imgrate.entry import Output, Stage
from imgrate.paths import Paths

STAGES: list[Stage] = [crawl.STAGE, export.STAGE, preprocess.STAGE, featurize.STAGE, train.STAGE,
                       evaluate.STAGE, analyze.STAGE]

PACKAGE = "imgrate"


def _module_file(root: Path, module: str) -> Path | None:
    base = root / Path(*module.split("."))
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    return None


def _imports(root: Path, path: Path) -> set[str]:
    """Dotted imgrate modules imported anywhere in ``path`` (and their parent packages)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] != PACKAGE:
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                if _module_file(root, ".".join(parts[:i])):
                    found.add(".".join(parts[:i]))
    return found


def closure(root: Path, *files: str) -> set[str]:
    """Root-relative paths of ``files`` and of every imgrate module they import, transitively
    (lazy imports and TYPE_CHECKING ones included: a dependency in doubt is a dependency)."""
    seen: set[str] = set()
    todo = [m for f in files for m in _imports(root, root / f)]
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        path = _module_file(root, mod)
        assert path is not None
        todo.extend(_imports(root, path))
    found = set()
    for m in seen:
        path = _module_file(root, m)
        assert path is not None
        found.add(path.relative_to(root).as_posix())
    return found | set(files)


def module_file(root: Path, dotted: str) -> str:
    path = _module_file(root, dotted)
    if path is None:
        raise ValueError(f"no module {dotted}")
    return path.relative_to(root).as_posix()


def script(stage: Stage) -> str:
    return f"stages/{stage.name}.py"


def stage_deps(stage: Stage, paths: Paths, item: str = "") -> list[str]:
    """What ``stage`` (for ``item``) depends on: its script, the data it reads, then its code
    (every module the script and the modules it imports by name import), sorted."""
    imported = [module_file(paths.root, m) for m in stage.imports(item)]
    code = closure(paths.root, script(stage), *imported) - {script(stage)}
    data = [d.path for d in stage.reads(paths, item)]
    return [script(stage), *data, *sorted(code)]


def items(stage: Stage) -> list[str]:
    return stage.each() if stage.each is not None else [""]


def addresses() -> list[tuple[str, Stage, str]]:
    """Every DVC stage: (address, declaration, item): ``train@paper_cnn`` for train's items."""
    return [(f"{s.name}@{i}" if i else s.name, s, i) for s in STAGES for i in items(s)]


# --------------------------------------------------------------------------- rendering


def _str(value: object) -> str:
    """A YAML scalar: plain when safe, else double-quoted (JSON's quoting is YAML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if re.fullmatch(r"[A-Za-z0-9_./${}@-]+", text) and text not in ("true", "false", "null", "yes", "no"):
        return text
    return json.dumps(text)


def _comment(text: str, indent: int) -> list[str]:
    pad = " " * indent
    return [f"{pad}# {line}" for line in textwrap.wrap(text, width=100 - indent)] if text else []


def _output(out: Output, paths: Paths, indent: int) -> list[str]:
    pad = " " * indent
    opts: dict[str, object] = {}
    if not out.cache:
        opts["cache"] = False
    if out.persist:
        opts["persist"] = True
    opts.update(out.plot)
    lines = _comment(out.note, indent)
    if not opts:
        return [*lines, f"{pad}- {_str(paths.rel(out.path))}"]
    lines.append(f"{pad}- {_str(paths.rel(out.path))}:")
    lines += [f"{pad}    {k}: {_str(v)}" for k, v in opts.items()]
    return lines


def _body(stage: Stage, paths: Paths, deps: list[str], notes: dict[str, str], item: str, indent: int) -> list[str]:
    pad = " " * indent
    lines = [f"{pad}cmd: python {script(stage)}" + (f" {item}" if item else "")]
    if stage.always_changed:
        lines.append(f"{pad}always_changed: true  # every run asks the source for new posts")
    lines.append(f"{pad}deps:")
    lines += [f"{pad}  - {_str(d)}" + (f"  # {notes[d]}" if notes.get(d) else "") for d in deps]
    lines.append(f"{pad}params:")
    lines += [f"{pad}  - {_str(p)}" for p in stage.dvc_params()]
    outputs = stage.outputs(paths, item)
    for kind in ("outs", "metrics", "plots"):
        chosen = [o for o in outputs if o.kind == kind]
        if chosen:
            lines.append(f"{pad}{kind}:")
            for out in chosen:
                lines += _output(out, paths, indent + 2)
    return lines


def _stage(stage: Stage, paths: Paths) -> list[str]:
    lines = [*_comment(stage.about, 2), f"  {stage.name}:"]
    if stage.each is None:
        notes = {d.path: d.note for d in stage.reads(paths, "")}
        return lines + _body(stage, paths, stage_deps(stage, paths), notes, "", 4)
    per_item = {i: stage_deps(stage, paths, i) for i in stage.each()}
    shared = [d for d in next(iter(per_item.values())) if all(d in deps for deps in per_item.values())]
    # each item's own modules first (a shorter list repeats them), then its other code and data
    extras: dict[str, list[str]] = {}
    for i, deps in per_item.items():
        own = [module_file(paths.root, m) for m in stage.imports(i)]
        extras[i] = own + [d for d in deps if d not in shared and d not in own]
    width = max(len(e) for e in extras.values())
    lines += _comment(f"one {stage.name}@<item> per item; each item lists its own dependencies (the same "
                      "number for every item, as DVC's foreach takes them: a shorter list repeats its first)", 4)
    lines.append("    foreach:")
    for i, own in extras.items():
        lines.append(f"      {i}:")
        padded = own + [own[0]] * (width - len(own)) if own else []
        lines += [f"        d{n}: {_str(d)}" for n, d in enumerate(padded, start=1)]
    lines.append("    do:")
    notes = {}
    deps = shared + [f"${{item.d{n}}}" for n in range(1, width + 1)]
    return lines + _body(stage, paths, deps, notes, "${key}", 6)


def _plots(paths: Paths) -> list[str]:
    lines = []
    for stage in STAGES:
        if stage.top_plots is None:
            continue
        for i in items(stage):
            for name, plot in stage.top_plots(paths, i).items():
                lines.append(f"  - {name}:")
                for key, value in plot.items():
                    if isinstance(value, dict):
                        lines.append(f"      {key}:")
                        lines += [f"        {_str(k)}: {_str(v)}" for k, v in value.items()]
                    else:
                        lines.append(f"      {key}: {_str(value)}")
    return ["", *_comment("each model's learning curves (DVCLive's TSVs), each curve once", 0), "plots:", *lines] if lines else []


HEADER = """\
# imgrate pipeline: crawl -> export -> preprocess -> featurize -> train@<model> -> evaluate, and analyze.
# GENERATED by `make lineage` (imgrate/lineage.py) from each stage's declaration (STAGE in its
# imgrate module: what it reads, its params, its outputs) and the registries (imgrate/models/,
# imgrate/baselines.py): edit those, not this file; tests/test_dvc_yaml.py fails when it is out
# of date. Each stage depends on its script, the data it reads and every imgrate module it
# imports; train@<model> on exactly what that model reads. Metrics, reports and plot tables
# have cache: false so git carries them and `dvc metrics diff` works on a fresh clone.
"""


def render(root: Path) -> str:
    """dvc.yaml's text for the project at ``root``."""
    paths = Paths(root)
    lines = [HEADER.rstrip("\n"), "stages:"]
    for n, stage in enumerate(STAGES):
        if n:
            lines.append("")
        lines += _stage(stage, paths)
    lines += _plots(paths)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m imgrate.lineage [--check]``: write dvc.yaml (or only say whether it is current)."""
    import sys

    from imgrate.paths import find_project

    args = sys.argv[1:] if argv is None else argv
    root = find_project() or Path.cwd()
    text = render(root)
    target = root / "dvc.yaml"
    current = target.read_text(encoding="utf-8") if target.exists() else ""
    if "--check" in args:
        if current != text:
            print(f"{target} is out of date: run `make lineage`", file=sys.stderr)
            return 1
        return 0
    if current != text:
        from imgrate.io import atomic_open

        with atomic_open(target) as fh:
            fh.write(text)
        print(f"wrote {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
