"""dvc.yaml agrees with the code: each stage lists its script, every imgrate module that
script imports (transitively, lazy imports included), its params section, and the paths
that imgrate.paths defines."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from imgrate.params import parse_params
from imgrate.paths import Paths

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("crawl", "export", "preprocess", "featurize", "train", "evaluate", "analyze")


def _module_file(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    return None


def _imports(path: Path) -> set[str]:
    """Dotted imgrate modules imported anywhere in ``path`` (and their parent packages)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name.split(".")[0] != "imgrate":
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                if _module_file(".".join(parts[:i])):
                    found.add(".".join(parts[:i]))
    return found


def imgrate_closure(script: Path) -> set[str]:
    """Repository-relative files of every imgrate module ``script`` imports, transitively."""
    todo, seen = list(_imports(script)), set()
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        todo.extend(_imports(_module_file(mod)))
    return {_module_file(m).relative_to(ROOT).as_posix() for m in seen}


def _stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _deps(stage: dict) -> set[str]:
    return {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}


def _outs(stage: dict, kind: str = "outs") -> set[str]:
    return {o if isinstance(o, str) else next(iter(o)) for o in stage.get(kind, [])}


def test_every_stage_exists_in_order() -> None:
    assert list(_stages()) == list(STAGES)


def test_deps_list_script_and_every_imported_module() -> None:
    for name, stage in _stages().items():
        script = re.search(r"(stages/\w+\.py)", stage["cmd"]).group(1)
        deps = _deps(stage)
        assert script in deps, f"{name}: script {script} not in deps"
        modules = imgrate_closure(ROOT / script)
        listed = {d for d in deps if d.startswith("imgrate/")}
        assert listed == modules, (
            f"stage {name}: missing {sorted(modules - listed)}, not imported {sorted(listed - modules)}"
        )


# evaluate's oracle recomputes the simulated world's true appeal: it reads these crawl keys
ORACLE_PARAMS = ["crawl.source", "crawl.demo.seed", "crawl.demo.start", "crawl.demo.until",
                 "crawl.demo.image_size", "crawl.demo.mean_interval_days"]


def test_each_stage_tracks_its_own_params_section() -> None:
    for name, stage in _stages().items():
        if name == "train":
            continue
        extra = ORACLE_PARAMS if name == "evaluate" else []
        assert stage.get("params") == [name, *extra], name


def test_each_model_tracks_only_the_shared_train_keys_and_its_own_section() -> None:
    """train@paper_cnn does not rerun when a train.pretrained key changes (and back)."""
    import dataclasses

    from imgrate.models import MODELS
    from imgrate.params import TrainParams

    train = _stages()["train"]
    assert train["matrix"]["model"] == list(MODELS)
    shared = [f"train.{f.name}" for f in dataclasses.fields(TrainParams) if f.name not in MODELS]
    assert train["params"] == [*shared, "train.${item.model}"]


def test_training_and_evaluation_read_features_not_shards() -> None:
    """The pretrained model's inputs come from data/features (a DVC output), never from the
    raw shards or the tables: a fresh clone's `dvc pull` brings them."""
    p = Paths(ROOT)
    rel = lambda path: path.relative_to(ROOT).as_posix()  # noqa: E731
    s = _stages()
    for name in ("train", "evaluate"):
        data = {d for d in _deps(s[name]) if d.startswith("data/")}
        assert data == {rel(p.dataset), rel(p.features)}, name
    assert _outs(s["featurize"]) == {rel(p.features)}
    assert s["featurize"]["outs"][0][rel(p.features)]["persist"] is True
    assert {rel(p.raw), rel(p.tables)} <= _deps(s["featurize"])


def test_oracle_params_exist_and_match_what_the_oracle_reads() -> None:
    """The oracle builds the world from crawl.demo: evaluate tracks exactly the keys of it
    that the world reads (imgrate/demo/world.py; fault injection is the server's)."""
    import re

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in ORACLE_PARAMS:
        section = params
        for part in key.split("."):
            section = section[part]  # KeyError: a tracked key that params.yaml lacks
    source = (ROOT / "imgrate" / "demo" / "world.py").read_text()
    read = set(re.findall(r"\b(?:self\.params|params|cfg)\.([a-z_]+)\b", source)) - {"yaml"}
    assert {f"crawl.demo.{k}" for k in read} == {k for k in ORACLE_PARAMS if k.startswith("crawl.demo.")}


def test_paths_agree_with_paths_module() -> None:
    p = Paths(ROOT)
    rel = lambda path: path.relative_to(ROOT).as_posix()  # noqa: E731
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    s = _stages()
    assert _outs(s["crawl"]) == {rel(p.raw), rel(p.stage_report("crawl"))}
    assert s["crawl"]["always_changed"] is True
    assert s["crawl"]["outs"][0][rel(p.raw)]["persist"] is True
    assert _outs(s["export"]) == {rel(p.tables), rel(p.stage_report("export"))}
    assert _outs(s["preprocess"]) == {rel(p.dataset), rel(p.stage_report("preprocess"))}
    assert {rel(p.raw), rel(p.tables)} <= _deps(s["preprocess"])
    assert rel(p.dataset) in _deps(s["train"])
    models = s["train"]["matrix"]["model"]
    assert _outs(s["train"]) == {"models/${item.model}.pt", "dvclive/${item.model}/plots"}
    assert {rel(p.model(m)) for m in models} <= _deps(s["evaluate"])
    for stage in ("crawl", "export", "preprocess"):
        assert _outs(s[stage], "metrics") == {rel(p.stage_metrics(stage))}
    assert _outs(s["evaluate"], "metrics") == {rel(p.evaluate_metrics)}
    assert _outs(s["evaluate"]) == {rel(p.stage_report("evaluate")), rel(p.leak_metrics)}
    assert _outs(s["evaluate"], "plots") == {rel(p.figures), rel(p.plots / "predictions"),
                                             rel(p.plots / "spearman_per_user")}
    assert rel(p.images_array(params.preprocess.size)).startswith(rel(p.dataset))
    # analyze: figures of the data; reads tables, dataset and shards; nothing depends on it
    assert {rel(p.raw), rel(p.tables), rel(p.dataset)} <= _deps(s["analyze"])
    assert _outs(s["analyze"]) == {rel(p.data_report), rel(p.insights_page)}
    assert _outs(s["analyze"], "plots") == {rel(p.data_figures)}
    assert all(o["cache"] is False for o in s["analyze"]["outs"][0].values())
    analyze_outs = {rel(p.data_report), rel(p.data_figures)}
    assert not any(analyze_outs & _deps(stage) for stage in s.values())


def test_tracked_metrics_survive_a_failing_run() -> None:
    """DVC deletes a stage's outputs before running it, unless `persist`: git-tracked metrics
    (written atomically at the end of a run) persist, so a run that fails keeps the last ones."""
    for name, stage in _stages().items():
        for entry in stage.get("metrics", []):
            path, opts = next(iter(entry.items()))
            if not path.startswith("dvclive/"):  # DVCLive's own summary is rewritten by training
                assert opts.get("persist") is True, (name, path)


def test_metrics_and_plots_are_not_cached() -> None:
    """Git carries metrics and plot tables; the evaluate PNGs alone live in DVC's cache."""
    figures = Paths(ROOT).figures.relative_to(ROOT).as_posix()
    for name, stage in _stages().items():
        for kind in ("metrics", "plots"):
            for entry in stage.get(kind, []):
                if entry == figures:
                    continue
                assert isinstance(entry, dict) and next(iter(entry.values())).get("cache") is False, (name, entry)


def test_every_trained_model_has_a_learning_curve_plot() -> None:
    """Top-level plots: train and validation loss of each model of train's matrix, together."""
    p = Paths(ROOT)
    plots = {next(iter(e)): next(iter(e.values())) for e in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]}
    for model in _stages()["train"]["matrix"]["model"]:
        plot = plots.get(f"learning_curves_{model}")
        assert plot is not None, f"dvc.yaml: no top-level plot learning_curves_{model}"
        curves = (p.live_dir(model) / "plots" / "metrics").relative_to(ROOT).as_posix()
        assert plot["y"] == {f"{curves}/train_loss.tsv": "train_loss", f"{curves}/val_loss.tsv": "val_loss"}
        assert plot["x"] == "step"
        spearman = plots.get(f"validation_spearman_{model}")
        assert spearman is not None and spearman["y"] == {f"{curves}/val_spearman_within.tsv": "val_spearman_within"}
    # each curve once: DVCLive's TSVs are outputs, not plots of their own as well
    assert not any("dvclive" in next(iter(e)) if isinstance(e, dict) else "dvclive" in e
                   for e in _stages()["train"].get("plots", []))
