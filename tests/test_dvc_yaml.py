"""dvc.yaml agrees with the code: each stage lists its script, every imgrate module that
script imports (transitively, lazy imports included), its params section, and the paths
that imgrate.paths defines."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from imgrate import lineage
from imgrate.models import all_models, model_names
from imgrate.params import parse_params
from imgrate.paths import Paths

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("crawl", "export", "preprocess", "featurize", "train", "evaluate", "analyze")


def imgrate_closure(script: Path) -> set[str]:
    """Repository-relative files of every imgrate module ``script`` imports, transitively."""
    rel = script.relative_to(ROOT).as_posix()
    return lineage.closure(ROOT, rel) - {rel}


def resolved() -> dict[str, dict[str, list]]:
    """Every stage as DVC resolves dvc.yaml (foreach expanded, params.yaml interpolated):
    name -> {"deps": [...], "params": [...], "outs": [...]}."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            deps = [d.def_path for d in stage.deps if type(d).__name__ == "Dependency"]
            params = [p for d in stage.deps if type(d).__name__ == "ParamsDependency" for p in d.params]
            out[stage.addressing] = {"deps": deps, "params": params, "outs": [o.def_path for o in stage.outs]}
    return out


def _stages() -> dict:
    """dvc.yaml's stages as written; a foreach stage's template (``do``) stands for the stage."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: {**stage["do"], "foreach": stage["foreach"]} if "do" in stage else stage
            for name, stage in stages.items()}


def _deps(stage: dict) -> set[str]:
    return {d if isinstance(d, str) else next(iter(d)) for d in stage.get("deps", [])}


def _outs(stage: dict, kind: str = "outs") -> set[str]:
    return {o if isinstance(o, str) else next(iter(o)) for o in stage.get(kind, [])}


def test_every_stage_exists_in_order() -> None:
    assert list(_stages()) == list(STAGES)


def test_deps_list_script_and_every_imported_module() -> None:
    for name, stage in _stages().items():
        if name == "train":
            continue  # one stage per model: below
        script = re.search(r"(stages/\w+\.py)", stage["cmd"]).group(1)
        deps = _deps(stage)
        assert script in deps, f"{name}: script {script} not in deps"
        modules = imgrate_closure(ROOT / script)
        if name == "evaluate":  # it rebuilds every model file: every model's module
            modules = set(lineage.evaluate_deps(Paths(ROOT))) - {script}
        listed = {d for d in deps if d.startswith("imgrate/")}
        modules = {m for m in modules if m.startswith("imgrate/")}
        assert listed == modules, (
            f"stage {name}: missing {sorted(modules - listed)}, not imported {sorted(listed - modules)}"
        )


def _interpolated(deps: list[str]) -> set[str]:
    """``deps`` with ``${section.key}`` filled in from params.yaml, as DVC fills them in."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def value(m: re.Match) -> str:
        v = params
        for part in m.group(1).split("."):
            v = v[part]
        return str(v)

    return {re.sub(r"\$\{([\w.]+)\}", value, d) for d in deps}


def test_each_model_depends_on_exactly_what_it_reads() -> None:
    """train@<model> for every model of the registry, depending on the shared training code and
    data/dataset, then its own module, the code of what it reads and that data: paper_cnn never
    on data/features or featurize code, pretrained never on another model's module."""
    paths = Paths(ROOT)
    stages = resolved()
    assert sorted(n.removeprefix("train@") for n in stages if n.startswith("train@")) == model_names()
    shared = lineage.train_shared(paths)
    for spec in all_models():
        deps = stages[f"train@{spec.name}"]["deps"]
        wanted = _interpolated(shared + lineage.model_deps(spec, paths))
        assert set(deps) == wanted, (spec.name, sorted(set(deps) - wanted), sorted(wanted - set(deps)))
        others = {f"imgrate/models/{n}.py" for n in model_names()} - {f"imgrate/models/{spec.name}.py"}
        assert not others & set(deps), spec.name
    cnn = set(stages["train@paper_cnn"]["deps"])
    assert not {"data/features", "imgrate/features.py", "imgrate/featurize.py", "imgrate/backbones.py"} & cnn
    assert "data/features" in stages["train@pretrained"]["deps"]
    assert set(stages["evaluate"]["deps"]) == set(lineage.evaluate_deps(paths))
    assert stages["evaluate"]["params"] == lineage.evaluate_params()


def test_each_stage_tracks_its_own_params_section() -> None:
    for name, stage in _stages().items():
        if name == "train":
            continue
        extra = lineage.evaluate_params()[1:] if name == "evaluate" else []
        assert stage.get("params") == [name, *extra], name


def test_each_model_tracks_only_the_shared_train_keys_and_its_own_section() -> None:
    """train@paper_cnn does not rerun when a train.pretrained key changes (and back)."""
    import dataclasses

    from imgrate.params import TrainParams

    shared = [f"train.{f.name}" for f in dataclasses.fields(TrainParams) if f.name != "models"]
    for name, stage in resolved().items():
        if name.startswith("train@"):
            assert stage["params"] == [*shared, f"train.{name.removeprefix('train@')}"], name


def test_training_and_evaluation_read_features_not_shards() -> None:
    """The features models' inputs come from data/features (a DVC output), never from the
    raw shards or the tables: a fresh clone's `dvc pull` brings them."""
    p = Paths(ROOT)
    rel = lambda path: path.relative_to(ROOT).as_posix()  # noqa: E731
    s = _stages()
    for name, stage in resolved().items():
        if name.startswith("train@") or name == "evaluate":
            assert not {rel(p.raw), rel(p.tables)} & set(stage["deps"]), name
    assert _outs(s["featurize"]) == {rel(p.features)}
    assert s["featurize"]["outs"][0][rel(p.features)]["persist"] is True
    assert {rel(p.raw), rel(p.tables)} <= _deps(s["featurize"])


def test_world_params_exist_and_match_what_the_world_reads() -> None:
    """The oracle builds the world from crawl.demo: evaluate tracks exactly the keys of it
    that the world reads (imgrate/demo/world.py; fault injection is the server's)."""
    from imgrate.demo.world import PARAMS_READ

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in lineage.evaluate_params()[1:]:
        section = params
        for part in key.split("."):
            section = section[part]  # KeyError: a tracked key that params.yaml lacks
    source = (ROOT / "imgrate" / "demo" / "world.py").read_text()
    read = set(re.findall(r"\b(?:self\.params|params|cfg)\.([a-z_]+)\b", source)) - {"yaml"}
    assert {f"crawl.demo.{k}" for k in read} == set(PARAMS_READ)


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
    stages = resolved()
    for m in model_names():
        assert rel(p.dataset) in stages[f"train@{m}"]["deps"] and rel(p.model(m)) in stages["evaluate"]["deps"]
        assert stages[f"train@{m}"]["outs"] == [rel(p.model(m)), rel(p.live_dir(m) / "plots"),
                                                 rel(p.live_dir(m) / "metrics.json")]
    for stage in ("crawl", "export", "preprocess"):
        assert _outs(s[stage], "metrics") == {rel(p.stage_metrics(stage))}
    assert _outs(s["evaluate"], "metrics") == {rel(p.evaluate_metrics)}
    assert _outs(s["evaluate"]) == {rel(p.stage_report("evaluate")), rel(p.leak_metrics)}
    assert _outs(s["evaluate"], "plots") == {rel(p.figures), rel(p.plots / "predictions"),
                                             rel(p.plots / "spearman_per_user")}
    assert rel(p.images_array(params.preprocess.size)).startswith(rel(p.dataset))
    # analyze: figures of the data; reads tables, dataset and shards; nothing depends on it
    assert {rel(p.raw), rel(p.tables), rel(p.dataset)} <= _deps(s["analyze"])
    assert _outs(s["analyze"]) == {rel(p.data_report)}
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
    """Top-level plots: train and validation loss of each model of the registry, together."""
    p = Paths(ROOT)
    plots = {next(iter(e)): next(iter(e.values())) for e in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]}
    for model in model_names():
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
