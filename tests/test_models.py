"""models: the registry (one module per model), the pretrained head, the offline EfficientNet-Lite
backbones, model files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgrate.backbones import BACKBONES, Backbone, load_backbone
from imgrate.errors import ModelError, ParamsError
from imgrate.inputs import InputSpec
from imgrate.models import (
    ClosedForm,
    FitConfig,
    Gradient,
    ModelFile,
    all_models,
    build_model,
    check_sections,
    load_model,
    model_names,
    model_spec,
    save_model,
)
from imgrate.models.pretrained import PretrainedConfig, PretrainedHead
from imgrate.params import TrainParams, load_params


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    return load_backbone("efficientnet-lite0", 64)


def test_pretrained_head_shapes() -> None:
    linear = PretrainedHead(PretrainedConfig())
    assert sum(p.numel() for p in linear.parameters()) == 1280 + 1
    mlp = PretrainedHead(PretrainedConfig(hidden=64, dropout=0.5))
    assert sum(p.numel() for p in mlp.parameters()) == 1280 * 64 + 64 + 64 + 1
    assert [m.p for m in mlp.modules() if isinstance(m, torch.nn.Dropout)] == [0.5, 0.5]
    assert mlp.eval()(torch.randn(3, 1280)).shape == (3,)


def test_backbone_loads_offline_and_gives_1280_features(backbone: Backbone) -> None:
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with torch.inference_mode():
        f = backbone(torch.from_numpy(images))
    assert f.shape == (2, 1280) and torch.isfinite(f).all()
    assert not torch.allclose(f[0], f[1])
    assert not any(p.requires_grad for p in backbone.parameters())  # frozen
    assert not backbone.net.training


def test_backbone_normalises_tf_style(backbone: Backbone, monkeypatch) -> None:
    seen = {}

    def capture(x: torch.Tensor) -> torch.Tensor:
        seen["x"] = x
        return torch.zeros(x.shape[0], 1280, 2, 2)

    monkeypatch.setattr(backbone.net, "extract_features", capture)
    images = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    images[..., 1], images[..., 2] = 127, 255  # R 0, G 127, B 255
    backbone(images)
    x = seen["x"]
    assert x.shape == (1, 3, 64, 64)
    # (x*255 - 127) / 128 for x in [0, 1]: 0 -> -0.9921875, 127 -> 0, 255 -> 1 (per channel)
    assert [sorted(set(x[0, c].flatten().tolist())) for c in range(3)] == [[-0.9921875], [0.0], [1.0]]


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_loads_offline_and_prints_nothing_on_stdout(name: str, capsys) -> None:
    net = load_backbone(name, 32)
    assert capsys.readouterr().out == ""  # --json output stays parseable
    with torch.inference_mode():
        assert net(torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape == (1, BACKBONES[name].width)


def test_the_registry_is_the_model_modules_each_declaring_itself_once() -> None:
    """One module per model, each with SPEC named after it; its params dataclass is the
    section train.<name> of params.yaml, whose keys and defaults it owns."""
    import dataclasses

    import yaml
    from conftest import ROOT

    names = model_names()
    assert names == sorted(p.stem for p in (ROOT / "imgrate" / "models").glob("[!_]*.py"))
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())["train"]
    train = load_params(ROOT / "params.yaml", ["train"]).train
    check_sections(train)
    for spec in all_models():
        assert spec.reads and all(inp.kind in ("pixels", "features") for inp in spec.reads)
        assert isinstance(spec.fit, Gradient | ClosedForm)
        section = spec.params_of(train)
        assert set(shipped[spec.name]) == {f.name for f in dataclasses.fields(spec.params)}
        # params.yaml ships the dataclass's defaults: the one place they are written
        assert section == spec.params(), spec.name
        if isinstance(spec.fit, Gradient):
            cfg = spec.fit.settings(section, 7)
            assert cfg.seed == 7 and cfg.epochs == section.epochs and cfg.lr == section.lr


def test_every_model_has_a_docs_row() -> None:
    """The docs' table of models has one row per model of the registry: what it reads and how it
    is fitted, as its registry entry says."""
    from conftest import ROOT

    rows = {}
    for line in (ROOT / "docs" / "models.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`") and cells[2] in ("gradient", "closed form"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    assert set(rows) == set(model_names()), "add a row to the table of models in docs/models.md"
    for spec in all_models():
        assert rows[spec.name] == (" and ".join(i.kind for i in spec.reads), spec.fit.method.replace("_", " ")), spec.name


def test_a_models_params_are_checked_by_its_own_dataclass() -> None:
    train = TrainParams(models={"paper_cnn": {"epochs": 0, "batch_size": 50, "lr": 0.001}})
    with pytest.raises(ParamsError, match=r"train.paper_cnn.epochs: must be at least 1, got 0"):
        model_spec("paper_cnn").params_of(train)
    with pytest.raises(ParamsError, match="missing params key train.pretrained"):
        model_spec("pretrained").params_of(train)
    with pytest.raises(ParamsError, match=r"train.pretrained.dropout: must be in \[0, 1\), got 1.0"):
        model_spec("pretrained").params_of(TrainParams(models={"pretrained": {
            **dataclasses_asdict(model_spec("pretrained").params()), "dropout": 1.0}}))
    with pytest.raises(ParamsError, match="unknown params key train.paper_cn .*paper_cnn"):
        check_sections(TrainParams(models={"paper_cn": {}}))


def dataclasses_asdict(obj: object) -> dict:
    import dataclasses

    return dataclasses.asdict(obj)  # type: ignore[call-overload]


def test_unknown_backbone_and_model_are_named() -> None:
    with pytest.raises(ModelError, match="resnet"):
        load_backbone("resnet-50", 64)
    with pytest.raises(ModelError, match="transformer"):
        build_model("transformer")


def _info(**kw: object) -> ModelFile:
    fit = {"method": "gradient", **dataclasses_asdict(FitConfig(epochs=1, batch_size=2, lr=0.1))}
    return ModelFile(model="pretrained", config={"features": 1280, "hidden": 8, "dropout": 0.5},
                     inputs=(InputSpec("features", 64, "max_ratio", "efficientnet-lite0", 1280),),
                     fit=fit, params={"seed": 0}, **kw)  # type: ignore[arg-type]


def test_model_file_round_trip_keeps_config_input_and_extras(tmp_path) -> None:
    model = build_model("pretrained", {"hidden": 8})
    model.set_input_stats(torch.full((1280,), 2.0), torch.full((1280,), 3.0))
    save_model(tmp_path / "m.pt", model, _info(extra={"stats": {"mean": 0.5}}))
    loaded, info = load_model(tmp_path / "m.pt")
    assert info == _info(extra={"stats": {"mean": 0.5}})
    assert info.input.backbone == "efficientnet-lite0" and [i.kind for i in info.spec.reads] == ["features"]
    x = torch.randn(4, 1280)
    assert torch.allclose(loaded(x), model.eval()(x))
    # the same model and info give the same bytes
    save_model(tmp_path / "again.pt", model, _info(extra={"stats": {"mean": 0.5}}))
    assert (tmp_path / "m.pt").read_bytes() == (tmp_path / "again.pt").read_bytes()


def test_a_model_file_of_another_schema_is_named(tmp_path) -> None:
    raw = {**_info().to_dict(), "schema": 1, "state_dict": {}}
    torch.save(raw, tmp_path / "old.pt")
    with pytest.raises(ModelError, match="schema 1, this imgrate reads 2: train the model again"):
        load_model(tmp_path / "old.pt")


def test_a_file_that_is_not_a_model_is_reported(tmp_path) -> None:
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable imgrate model"):
        load_model(bad)


def test_a_config_that_asks_for_more_weights_than_the_file_holds_allocates_nothing(tmp_path) -> None:
    """Issue 20: a 65 KB model file whose config says `hidden: 500000` allocated 2.7 GB before
    "weights do not fit". Its config is now checked against its weights on the meta device
    (shapes only); the message names the first tensor that differs. The peak memory of the
    refused load is measured in a fresh process: it stays that of reading the file."""
    import subprocess
    import sys

    model = build_model("pretrained", {"hidden": 8})
    good = tmp_path / "good.pt"
    save_model(good, model, _info())
    raw = torch.load(good, weights_only=True)
    raw["config"]["hidden"] = 500_000
    torch.save(raw, tmp_path / "forged.pt")
    assert (tmp_path / "forged.pt").stat().st_size < 100_000
    with pytest.raises(ModelError, match=r"asks for 641,002,563 weights .* holds 12,819 "
                                         r"\(head\.1\.bias: \(500000,\) in the config"):
        load_model(tmp_path / "forged.pt")
    code = ("import resource, sys; from imgrate.models import load_model; from imgrate.errors import ModelError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "try:\n    load_model(__import__('pathlib').Path(sys.argv[1]))\nexcept ModelError:\n    pass\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    grew = [int(subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True,
                               check=True).stdout) for p in (good, tmp_path / "forged.pt")]
    assert grew[1] < 100, f"the refused load grew the peak memory by {grew[1]} MB (a good one: {grew[0]} MB)"
    raw["config"]["hidden"] = -3
    torch.save(raw, tmp_path / "negative.pt")
    with pytest.raises(ModelError, match="negative.pt"):
        load_model(tmp_path / "negative.pt")


def test_near_constant_features_never_explode() -> None:
    """Robust standardisation: a feature (nearly) constant on the training images gets a floored
    spread, so a test image where it fires gives a bounded z-score, in the pretrained head and
    in ridge_features' standardise (issue 18: z-scores of 1,000 to 22,000 before)."""
    from imgrate.features import SPREAD_FLOOR, Z_CLIP, robust_spread, standardise

    rng = np.random.default_rng(0)
    train = rng.normal(size=(200, 6))
    train[:, 0] = 0.5  # constant
    train[:, 1] = 0.5 + 1e-6 * rng.normal(size=200)  # near-constant
    spread = robust_spread(train.std(axis=0))
    median = float(np.median(train.std(axis=0)[train.std(axis=0) > 0]))
    assert spread[0] == spread[1] == pytest.approx(SPREAD_FLOOR * median)
    assert np.array_equal(spread[2:], train.std(axis=0)[2:])  # ordinary columns untouched
    test = rng.normal(size=(5, 6))
    test[:, :2] = 3.0
    z = standardise(test, train.mean(axis=0), spread)
    assert np.abs(z).max() <= Z_CLIP and np.all(np.abs(z[:, :2]) == Z_CLIP)
    assert np.allclose(z[:, 2:], (test[:, 2:] - train.mean(axis=0)[2:]) / train.std(axis=0)[2:])

    head = PretrainedHead(PretrainedConfig(features=6, hidden=0, dropout=0.0))
    x = torch.from_numpy(train).float()
    head.set_input_stats(x.mean(dim=0), x.std(dim=0))
    assert float(head.input_std.min()) >= SPREAD_FLOOR * median * 0.99
    seen = []
    head.head.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    head.eval()
    with torch.no_grad():
        head(torch.from_numpy(test).float())
    assert float(seen[0].abs().max()) <= Z_CLIP
