"""train: the paper's CNN exactly, learning on a tiny world, determinism on the CPU."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from imgrate.dataset import load_dataset
from imgrate.models import PaperCNN, PaperCNNConfig, build_model, load_checkpoint
from imgrate.train import fit, pick_device, run_stage, seed_everything


def test_paper_cnn_shapes_match_the_paper() -> None:
    model = PaperCNN(PaperCNNConfig())
    x = torch.zeros(4, 3, 50, 50)
    shapes = []
    h = x
    h = (h - model.input_mean) / model.input_std
    for layer in model.features:
        h = layer(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes == [(10, 40, 40), (10, 40, 40), (5, 36, 36), (5, 36, 36), (5, 18, 18), (5, 18, 18), (1620,)]
    assert [m.out_features for m in model.head if isinstance(m, torch.nn.Linear)] == [500, 1]
    assert model(x).shape == (4,)
    # conv1 3*10*11*11+10, conv2 10*5*5*5+5, dense 1620*500+500, 500*1+1
    assert sum(p.numel() for p in model.parameters()) == 3640 + 1255 + 810500 + 501 == 815896
    slopes = {m.negative_slope for m in model.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.25]


def test_device_is_picked_automatically() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type in (expected, "mps")
    assert pick_device("cpu").type == "cpu"


def test_training_lowers_validation_loss_and_is_deterministic(tiny_world) -> None:
    params, paths = tiny_world
    data = load_dataset(paths)
    tp = dataclasses.replace(params.train, epochs=4, lr=1e-3)
    weights = []
    for _ in range(2):
        seed_everything(tp.seed, torch.device("cpu"))
        model = build_model("paper_cnn")
        history = fit(model, data, tp, torch.device("cpu"))
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert history[-1].val_loss < history[0].val_loss or history[-1].train_loss < history[0].train_loss
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_stage_saves_model_with_config_and_curves(tiny_world, tmp_path) -> None:
    import shutil

    from imgrate.paths import Paths

    params, paths = tiny_world
    local = Paths(tmp_path)
    shutil.copytree(paths.dataset, local.dataset)
    summary = run_stage("paper_cnn", params, local)
    model, ckpt = load_checkpoint(local.model("paper_cnn"))
    assert ckpt["architecture"] == "paper_cnn" and ckpt["config"]["hidden"] == 500
    assert ckpt["train_params"]["epochs"] == params.train.epochs == summary["epochs"]
    assert (local.live_dir("paper_cnn") / "plots" / "metrics" / "train_loss.tsv").exists()
    x = torch.from_numpy(np.zeros((2, 3, 50, 50), np.float32))
    assert model(x).shape == (2,)
