"""models and features: the pretrained head, the offline EfficientNet-Lite0 backbone, model files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imgrate.errors import ModelError
from imgrate.features import Backbone, load_backbone
from imgrate.models import PretrainedConfig, PretrainedHead, build_model, load_checkpoint, save_checkpoint


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


def test_backbone_and_package_print_nothing_on_stdout(capsys) -> None:
    load_backbone("efficientnet-lite0", 32)
    assert capsys.readouterr().out == ""  # --json output stays parseable


def test_unknown_backbone_and_model_are_named() -> None:
    with pytest.raises(ModelError, match="resnet"):
        load_backbone("resnet-50", 64)
    with pytest.raises(ModelError, match="transformer"):
        build_model("transformer")


def test_model_file_round_trip_keeps_config_and_extras(tmp_path) -> None:
    model = build_model("pretrained", {"input_size": 64, "hidden": 8})
    model.set_input_stats(torch.full((1280,), 2.0), torch.full((1280,), 3.0))
    save_checkpoint(tmp_path / "m.pt", "pretrained", model, {"train_params": {"seed": 0}})
    loaded, ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt["config"]["input_size"] == 64 and ckpt["config"]["hidden"] == 8
    assert ckpt["train_params"] == {"seed": 0}
    x = torch.randn(4, 1280)
    assert torch.allclose(loaded(x), model.eval()(x))


def test_a_file_that_is_not_a_model_is_reported(tmp_path) -> None:
    bad = tmp_path / "x.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a readable imgrate model"):
        load_checkpoint(bad)


def test_the_same_model_saved_under_two_names_has_the_same_bytes(tmp_path) -> None:
    """torch.save names the zip's folder after the file; the model file must not depend on
    the (random) temporary name it is written under, or dvc.lock changes on every run."""
    import torch

    torch.manual_seed(0)
    model = build_model("pretrained", {"input_size": 64, "hidden": 8})
    save_checkpoint(tmp_path / "a.pt", "pretrained", model, {"history": [{"epoch": 1, "train_loss": 0.5}]})
    save_checkpoint(tmp_path / "other_name.pt", "pretrained", model, {"history": [{"epoch": 1, "train_loss": 0.5}]})
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "other_name.pt").read_bytes()
