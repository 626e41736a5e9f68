"""models: the registry, the pretrained head, the offline EfficientNet-Lite backbones, model files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgrate.errors import ModelError
from imgrate.featurize import BACKBONES, Backbone, load_backbone
from imgrate.models import (
    MODELS,
    FitConfig,
    InputSpec,
    ModelFile,
    PretrainedConfig,
    PretrainedHead,
    build_model,
    load_model,
    save_model,
)
from imgrate.params import TrainParams


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


def test_every_model_has_its_own_params_section() -> None:
    """train@<model> tracks train.<model>: the registry's names are TrainParams' sections."""
    import dataclasses

    sections = {f.name for f in dataclasses.fields(TrainParams) if dataclasses.is_dataclass(f.default_factory)}
    assert set(MODELS) == sections
    for spec in MODELS.values():
        assert spec.input in ("pixels", "features")
        section = spec.params(TrainParams())
        cfg = spec.make_fit(section, 7)
        assert cfg.seed == 7 and cfg.epochs == section.epochs and cfg.lr == section.lr


def test_unknown_backbone_and_model_are_named() -> None:
    with pytest.raises(ModelError, match="resnet"):
        load_backbone("resnet-50", 64)
    with pytest.raises(ModelError, match="transformer"):
        build_model("transformer")


def _info(**kw: object) -> ModelFile:
    return ModelFile(model="pretrained", config={"features": 1280, "hidden": 8, "dropout": 0.5},
                     input=InputSpec("features", 64, "max_ratio", "efficientnet-lite0", 1280),
                     fit=FitConfig(epochs=1, batch_size=2, lr=0.1), params={"seed": 0}, **kw)  # type: ignore[arg-type]


def test_model_file_round_trip_keeps_config_input_and_extras(tmp_path) -> None:
    model = build_model("pretrained", {"hidden": 8})
    model.set_input_stats(torch.full((1280,), 2.0), torch.full((1280,), 3.0))
    save_model(tmp_path / "m.pt", model, _info(extra={"stats": {"mean": 0.5}}))
    loaded, info = load_model(tmp_path / "m.pt")
    assert info == _info(extra={"stats": {"mean": 0.5}})
    assert info.input.backbone == "efficientnet-lite0" and info.spec.input == "features"
    x = torch.randn(4, 1280)
    assert torch.allclose(loaded(x), model.eval()(x))
    # the same model and info give the same bytes
    save_model(tmp_path / "again.pt", model, _info(extra={"stats": {"mean": 0.5}}))
    assert (tmp_path / "m.pt").read_bytes() == (tmp_path / "again.pt").read_bytes()


def test_a_model_file_of_another_schema_is_named(tmp_path) -> None:
    raw = {**_info().to_dict(), "schema": 0, "state_dict": {}}
    torch.save(raw, tmp_path / "old.pt")
    with pytest.raises(ModelError, match="schema 0"):
        load_model(tmp_path / "old.pt")


def test_a_file_that_is_not_a_model_is_reported(tmp_path) -> None:
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable imgrate model"):
        load_model(bad)
