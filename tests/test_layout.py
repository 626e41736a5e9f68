"""The house: every imgrate module on a floor, imports only going down (or along a floor
without a circle), no room much bigger than the others, and the walk of ``train.run_stage``
through the code never climbing back up."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from conftest import ROOT, copy_world

MODEL_MODULES = "imgrate.models.<model>"

# Ground first. A module imports modules of its own floor or of floors below.
FLOORS: list[list[str]] = [
    ["imgrate", "imgrate.errors", "imgrate.io", "imgrate.paths", "imgrate.devices", "imgrate.lifetime"],
    ["imgrate.progress", "imgrate.params", "imgrate.entry"],
    ["imgrate.shards", "imgrate.metadata", "imgrate.images", "imgrate.photo", "imgrate.duplicates", "imgrate.pages",
     "imgrate.metrics", "imgrate.figures", "imgrate.demo", "imgrate.demo.world", "imgrate.inputs", "imgrate.pixels",
     "imgrate.backbones", "imgrate.features"],
    ["imgrate.demo.server", "imgrate.crawl", "imgrate.crawl.users", "imgrate.crawl.stamps", "imgrate.crawl.session",
     "imgrate.crawl.observations", "imgrate.crawl.verify", "imgrate.crawl.instagram", "imgrate.dataset",
     "imgrate.mongo", "imgrate.reference", "imgrate.models"],
    ["imgrate.crawl.stage", "imgrate.export", "imgrate.preprocess", "imgrate.featurize", MODEL_MODULES],
    ["imgrate.train", "imgrate.predict", "imgrate.baselines"],
    ["imgrate.evaluate", "imgrate.analyze", "imgrate.insights", "imgrate.rank", "imgrate.sheet",
     "imgrate.experiments"],
    ["imgrate.cli", "imgrate.lineage"],
]
FLOOR = {m: i for i, floor in enumerate(FLOORS) for m in floor}


def floor(module: str) -> int | None:
    """The floor of ``module``: every model of the registry (imgrate/models/<name>.py) lives on
    the models' floor, so adding one needs no line here."""
    if module.startswith("imgrate.models.") and module.count(".") == 2:
        return FLOOR[MODEL_MODULES]
    return FLOOR.get(module)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "imgrate").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """imgrate modules ``path`` imports anywhere (lazy imports and TYPE_CHECKING ones too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        found |= {n for n in names if n in modules}
    return found


def test_every_module_has_a_floor() -> None:
    modules = set(_modules())
    assert not [m for m in modules if floor(m) is None], "place new modules on a floor"
    assert set(FLOOR) - {MODEL_MODULES} <= modules, "drop gone modules from the floors"


def test_imports_go_down_and_never_in_a_circle() -> None:
    modules = _modules()
    graph = {m: _imports(p, modules) - {m} for m, p in modules.items()}
    up = [(m, i) for m, deps in graph.items() for i in deps if floor(i) > floor(m)]  # type: ignore[operator]
    assert not up, f"imports that climb a floor: {sorted(up)}"
    seen: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        seen[m] = 1
        for i in sorted(graph[m]):
            assert seen.get(i) != 1, f"import circle: {' -> '.join([*stack, m, i])}"
            if i not in seen:
                visit(i, [*stack, m])
        seen[m] = 2

    for m in sorted(graph):
        if m not in seen:
            visit(m, [])


def test_no_room_holds_more_than_a_fifth_of_the_lines() -> None:
    lines = {m: len(p.read_text().splitlines()) for m, p in _modules().items()}
    total = sum(lines.values())
    biggest = max(lines, key=lines.__getitem__)
    assert lines[biggest] <= 0.2 * total, f"{biggest}: {lines[biggest]} of {total} lines"


def test_the_walk_of_train_run_stage_goes_down_the_floors(tiny_world, tmp_path: Path) -> None:
    """Every call from one imgrate module into another during train@pretrained goes to a
    floor at or below the caller's (callbacks into the caller's own code are returns, not
    climbs: generators resumed and functions defined inside another are left out)."""
    import dataclasses

    from imgrate.train import run_stage

    params, paths = tiny_world
    local = copy_world(paths, tmp_path)
    quick = params.train.with_model("pretrained", epochs=1)
    walk: list[str] = []
    climbs: list[tuple[str, str, str]] = []

    def profile(frame, event, arg):  # type: ignore[no-untyped-def]
        if event != "call":
            return
        callee = frame.f_globals.get("__name__", "")
        caller_frame = frame.f_back
        caller = caller_frame.f_globals.get("__name__", "") if caller_frame else ""
        if floor(callee) is None or floor(caller) is None or callee == caller:
            return
        code = frame.f_code
        if code.co_flags & 0x20 or "<locals>" in code.co_qualname or code.co_name == "<lambda>":
            return  # a generator resumed, or a callback handed down: control returning up
        if not walk or walk[-1] != callee:
            walk.append(callee)
        if floor(callee) > floor(caller):  # type: ignore[operator]
            climbs.append((caller, callee, code.co_qualname))

    sys.setprofile(profile)
    try:
        run_stage("pretrained", dataclasses.replace(params, train=quick), local)
    finally:
        sys.setprofile(None)
    assert {"imgrate.models", "imgrate.models.pretrained", "imgrate.dataset", "imgrate.features"} <= set(walk)
    assert "imgrate.featurize" not in walk  # a model reads the features' format, never the stage
    assert not climbs, f"calls that climb a floor: {sorted(set(climbs))}"
