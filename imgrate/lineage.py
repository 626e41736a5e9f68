"""Lineage: what each DVC stage depends on, computed from the code and the registries.

A stage depends on its script, every imgrate module the script imports (transitively, lazy
imports included: :func:`closure`), the data it reads and its params. The train stage is one
``train@<model>`` per model of the registry (:mod:`imgrate.models`), and each depends on the
shared training code, ``data/dataset``, its own module and what it reads
(:func:`model_deps`); evaluate depends on every model's file and module and on what the
baselines read (:func:`evaluate_deps`). tests/test_dvc_yaml.py compares dvc.yaml, as DVC
resolves it, with these.
"""

from __future__ import annotations

import ast
from pathlib import Path

from imgrate.baselines import WORLD_PARAMS, reads_any
from imgrate.features import FEATURES
from imgrate.models import ModelSpec, all_models
from imgrate.paths import Paths

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


def model_module(spec: ModelSpec[object, object]) -> str:
    return f"{PACKAGE}/models/{spec.name}.py"


def train_shared(paths: Paths) -> list[str]:
    """What every ``train@<model>`` depends on: the script, data/dataset (targets, splits, the
    reference block's photos) and the training code, sorted."""
    code = closure(paths.root, "stages/train.py") - {"stages/train.py"}
    return ["stages/train.py", paths.rel(paths.dataset), *sorted(code)]


def model_deps(spec: ModelSpec[object, object], paths: Paths) -> list[str]:
    """What ``train@<model>`` depends on beyond :func:`train_shared`: its module, the code of
    what it reads (modules the shared code does not import) and that data."""
    shared = set(train_shared(paths))
    code = sorted(closure(paths.root, model_module(spec)) - shared - {model_module(spec)})
    data = [inp.data_dep(paths) for inp in spec.reads]
    return [model_module(spec), *code, *(d for d in data if d not in shared)]


def evaluate_deps(paths: Paths) -> list[str]:
    """What evaluate depends on: its script and code, every model's module (it rebuilds each
    model file) and file, data/dataset, and data/features when a model or baseline reads them."""
    models = all_models()
    reads_features = reads_any("features") or any(FEATURES in spec.reads for spec in models)
    data = [paths.rel(paths.dataset), *([paths.rel(paths.features)] if reads_features else [])]
    code = closure(paths.root, "stages/evaluate.py", *(model_module(s) for s in models)) - {"stages/evaluate.py"}
    return ["stages/evaluate.py", *data, *(paths.rel(paths.model(s.name)) for s in models), *sorted(code)]


def evaluate_params() -> list[str]:
    """evaluate's params: its section, and the simulated world's keys when a baseline reads it."""
    return ["evaluate", *(WORLD_PARAMS if reads_any("world") else ())]
