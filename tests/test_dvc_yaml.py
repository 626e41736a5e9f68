"""dvc.yaml agrees with the code: it is generated from the stage declarations and the
registries (imgrate/lineage.py), and, as DVC resolves it, each stage depends on its script,
the data it reads and every imgrate module it imports (transitively, lazy imports
included): train@<model> on exactly what that model reads."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from imgrate import lineage
from imgrate.entry import Output
from imgrate.models import all_models, model_names
from imgrate.paths import Paths

ROOT = Path(__file__).resolve().parents[1]
PATHS = Paths(ROOT)


@pytest.fixture(scope="module")
def resolved() -> dict[str, dict[str, list]]:
    """Every stage as DVC resolves dvc.yaml (foreach expanded, params.yaml interpolated):
    name -> {"deps": [...], "params": [...], "outs": [...]}."""
    from dvc.repo import Repo

    out = {}
    with Repo(str(ROOT)) as repo:
        for stage in repo.index.stages:
            deps = [d.def_path for d in stage.deps if type(d).__name__ == "Dependency"]
            params = [p for d in stage.deps if type(d).__name__ == "ParamsDependency" for p in d.params]
            out[stage.addressing] = {"deps": deps, "params": params, "outs": [o.def_path for o in stage.outs],
                                     "options": {o.def_path: (o.use_cache, o.persist) for o in stage.outs}}
    return out


def _stages() -> dict:
    """dvc.yaml's stages as written; a foreach stage's template (``do``) stands for the stage."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: {**stage["do"], "foreach": stage["foreach"]} if "do" in stage else stage
            for name, stage in stages.items()}


def _interpolated(values: list[str]) -> list[str]:
    """``values`` with ``${section.key}`` filled in from params.yaml, as DVC fills them in."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def value(m: re.Match) -> str:
        v = params
        for part in m.group(1).split("."):
            v = v[part]
        return str(v)

    return [re.sub(r"\$\{([\w.]+)\}", value, d) for d in values]


def test_dvc_yaml_is_generated_from_the_declarations() -> None:
    """Edit a stage's STAGE or a registry, then `make lineage`: never dvc.yaml by hand."""
    assert (ROOT / "dvc.yaml").read_text() == lineage.render(ROOT), "dvc.yaml is out of date: run `make lineage`"


def test_every_stage_exists_in_order(resolved) -> None:
    expected = [a for a, _, _ in lineage.addresses()]
    assert list(resolved) == expected
    assert [s.name for s in lineage.STAGES] == ["crawl", "export", "preprocess", "featurize", "train", "evaluate",
                                                "analyze"]
    assert sorted(a.removeprefix("train@") for a in resolved if a.startswith("train@")) == model_names()


def test_each_stage_depends_on_its_script_data_and_every_imported_module(resolved) -> None:
    """What DVC reads from dvc.yaml is what the code imports, independently of how the file
    was written: the import closure is recomputed from the sources here."""
    for address, stage, item in lineage.addresses():
        deps = resolved[address]["deps"]
        script = f"stages/{stage.name}.py"
        assert deps[0] == script, address
        imported = [lineage.module_file(ROOT, m) for m in stage.imports(item)]
        code = lineage.closure(ROOT, script, *imported) - {script}
        data = _interpolated([d.path for d in stage.reads(PATHS, item)])
        assert set(deps) == {script, *code, *data}, (
            address, sorted(set(deps) - {script, *code, *data}), sorted({script, *code, *data} - set(deps)))


def test_each_model_depends_on_exactly_what_it_reads(resolved) -> None:
    """train@paper_cnn never on data/features or featurize code; each model on its own module
    and no other model's; evaluate on every model's file and module."""
    modules = {f"imgrate/models/{n}.py" for n in model_names()}
    for spec in all_models():
        deps = set(resolved[f"train@{spec.name}"]["deps"])
        assert modules & deps == {f"imgrate/models/{spec.name}.py"}, spec.name
        for inp in spec.reads:
            assert set(_interpolated([inp.data_dep(PATHS)])) <= deps and f"{inp.module.replace('.', '/')}.py" in deps
        if all(inp.kind == "pixels" for inp in spec.reads):
            assert not {"data/features", "imgrate/features.py", "imgrate/featurize.py", "imgrate/backbones.py"} & deps
    assert "data/features" not in resolved["train@paper_cnn"]["deps"]
    assert "data/features" in resolved["train@pretrained"]["deps"]
    evaluate = set(resolved["evaluate"]["deps"])
    assert modules <= evaluate and {PATHS.rel(PATHS.model(n)) for n in model_names()} <= evaluate


def test_each_model_tracks_only_the_shared_train_keys_and_its_own_section(resolved) -> None:
    """train@paper_cnn does not rerun when a train.pretrained key changes (and back)."""
    from imgrate.params import TrainParams

    shared = [f"train.{f.name}" for f in dataclasses.fields(TrainParams) if f.name != "models"]
    for name in model_names():
        assert resolved[f"train@{name}"]["params"] == [*shared, f"train.{name}"], name


def test_each_stage_tracks_its_own_params_section(resolved) -> None:
    """A stage tracks the sections it loads; evaluate the world's keys its baselines read."""
    from imgrate.baselines import WORLD_PARAMS

    for address, stage, _ in lineage.addresses():
        if stage.name == "train":
            continue
        extra = list(WORLD_PARAMS) if stage.name == "evaluate" else []
        assert resolved[address]["params"] == [stage.name, *extra], address


def test_world_params_exist_and_match_what_the_world_reads() -> None:
    """The oracle builds the world from crawl.demo: evaluate tracks exactly the keys of it
    that the world reads (imgrate/demo/world.py; fault injection is the server's)."""
    from imgrate.baselines import WORLD_PARAMS
    from imgrate.demo.world import PARAMS_READ

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for key in WORLD_PARAMS:
        section = params
        for part in key.split("."):
            section = section[part]  # KeyError: a tracked key that params.yaml lacks
    source = (ROOT / "imgrate" / "demo" / "world.py").read_text()
    read = set(re.findall(r"\b(?:self\.params|params|cfg)\.([a-z_]+)\b", source)) - {"yaml"}
    assert {f"crawl.demo.{k}" for k in read} == set(PARAMS_READ)


def test_outputs_are_the_declared_ones_named_once(resolved) -> None:
    """Each stage's outputs in dvc.yaml are its declaration's (which its stale-file cleanup
    uses too), with their options; and no two stages write the same path."""
    seen: dict[str, str] = {}
    for address, stage, item in lineage.addresses():
        declared: list[Output] = stage.outputs(PATHS, item)
        assert resolved[address]["outs"] == [PATHS.rel(o.path) for o in sorted(
            declared, key=lambda o: ("outs", "metrics", "plots").index(o.kind))], address
        for out in declared:
            rel = PATHS.rel(out.path)
            assert resolved[address]["options"][rel] == (out.cache, out.persist), (address, rel)
            assert seen.setdefault(rel, address) == address, f"{rel}: written by {seen[rel]} and {address}"


def test_paths_agree_with_paths_module() -> None:
    p = PATHS
    rel = p.rel
    s = _stages()
    assert {rel(p.raw), rel(p.stage_report("crawl")), rel(p.stage_metrics("crawl"))} <= {
        next(iter(o)) if isinstance(o, dict) else o for k in ("outs", "metrics") for o in s["crawl"][k]}
    assert s["crawl"]["always_changed"] is True
    assert s["crawl"]["outs"][0][rel(p.raw)]["persist"] is True
    assert s["featurize"]["outs"][0][rel(p.features)]["persist"] is True
    # analyze: figures of the data; nothing depends on it
    analyze_outs = {rel(p.data_report), rel(p.data_figures)}
    deps = [d for stage in s.values() for d in stage["deps"]]
    assert not analyze_outs & set(deps)


def test_training_and_evaluation_read_features_not_shards(resolved) -> None:
    """The features models' inputs come from data/features (a DVC output), never from the
    raw shards or the tables: a fresh clone's `dvc pull` brings them."""
    for name, stage in resolved.items():
        if name.startswith("train@") or name == "evaluate":
            assert not {PATHS.rel(PATHS.raw), PATHS.rel(PATHS.tables)} & set(stage["deps"]), name


def test_tracked_metrics_survive_a_failing_run() -> None:
    """DVC deletes a stage's outputs before running it, unless `persist`: git-tracked metrics
    (written atomically at the end of a run) persist, so a run that fails keeps the last ones."""
    for name, stage in _stages().items():
        for entry in stage.get("metrics", []):
            path, opts = next(iter(entry.items()))
            assert opts.get("persist") is True, (name, path)


def test_metrics_and_plots_are_not_cached() -> None:
    """Git carries metrics and plot tables; the evaluate PNGs alone live in DVC's cache."""
    figures = PATHS.rel(PATHS.figures)
    for name, stage in _stages().items():
        for kind in ("metrics", "plots"):
            for entry in stage.get(kind, []):
                if entry == figures:
                    continue
                assert isinstance(entry, dict) and next(iter(entry.values())).get("cache") is False, (name, entry)


def test_every_trained_model_has_a_learning_curve_plot() -> None:
    """Top-level plots: train and validation loss of each model of the registry, together."""
    plots = {next(iter(e)): next(iter(e.values())) for e in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]}
    for model in model_names():
        plot = plots.get(f"learning_curves_{model}")
        assert plot is not None, f"dvc.yaml: no top-level plot learning_curves_{model}"
        curves = PATHS.rel(PATHS.live_dir(model) / "plots" / "metrics")
        assert plot["y"] == {f"{curves}/train_loss.tsv": "train_loss", f"{curves}/val_loss.tsv": "val_loss"}
        assert plot["x"] == "step"
        spearman = plots.get(f"validation_spearman_{model}")
        assert spearman is not None and spearman["y"] == {f"{curves}/val_spearman_within.tsv": "val_spearman_within"}
    # each curve once: DVCLive's TSVs are outputs, not plots of their own as well
    assert not any("dvclive" in next(iter(e)) if isinstance(e, dict) else "dvclive" in e
                   for e in _stages()["train"].get("plots", []))
