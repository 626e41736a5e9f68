"""train: the paper's CNN exactly, the pretrained head, learning on a tiny world, determinism
on the CPU, DistributedDataParallel under torchrun, resuming a killed run."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, copy_world, tiny_params, write_params

from imgrate.dataset import load_dataset
from imgrate.devices import pick_device
from imgrate.models import FitConfig, load_model, model_spec
from imgrate.models.paper_cnn import PaperCNN, PaperCNNConfig
from imgrate.train import fit, pairwise_loss, run_key, run_stage, seed_everything, split_inputs

CPU = torch.device("cpu")


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


def _section(name: str, params):
    return model_spec(name).params_of(params.train)


def _fit_config(name: str, params) -> FitConfig:
    return model_spec(name).fit.settings(_section(name, params), params.train.seed)  # type: ignore[union-attr]


def _setup(name: str, params, paths):
    """(config, train inputs, val inputs, fit settings) of model ``name``, as run_stage builds them."""
    spec = model_spec(name)
    data = load_dataset(paths)
    input_specs, sources = spec.load_inputs(data, paths)
    train, val = split_inputs(data, spec, sources)
    return spec.make_config(_section(name, params), input_specs), train, val, _fit_config(name, params)


def test_paper_cnn_fit_config_is_the_papers(tiny_world) -> None:
    params, _ = tiny_world
    cfg = _fit_config("paper_cnn", params)
    p = _section("paper_cnn", params)
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.loss, cfg.patience) == (p.epochs, p.batch_size, p.lr, "mse", None)
    pre, q = _fit_config("pretrained", params), _section("pretrained", params)
    assert (pre.epochs, pre.loss, pre.patience) == (q.epochs, q.loss, q.patience)


def test_device_is_picked_automatically() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type in (expected, "mps")
    assert pick_device("cpu").type == "cpu"


def _fit_twice(name: str, params, paths, cfg: FitConfig, **config_changes):
    config, train, val, _ = _setup(name, params, paths)
    config = dataclasses.replace(config, **config_changes)
    runs = []
    for _ in range(2):
        seed_everything(cfg.seed, CPU)
        model = model_spec(name).module(config)
        history = fit(model, train, val, cfg, CPU)
        runs.append(({k: v.clone() for k, v in model.state_dict().items()}, history))
    return runs


def test_paper_cnn_lowers_validation_loss_and_is_deterministic(tiny_world) -> None:
    params, paths = tiny_world
    cfg = dataclasses.replace(_fit_config("paper_cnn", params), epochs=4)
    (w0, history), (w1, _) = _fit_twice("paper_cnn", params, paths, cfg)
    assert history[-1].val_loss < history[0].val_loss or history[-1].train_loss < history[0].train_loss
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k


@pytest.mark.parametrize("loss", ["mse", "pairwise"])
def test_pretrained_head_learns_and_is_deterministic(tiny_world, loss: str) -> None:
    params, paths = tiny_world
    cfg = dataclasses.replace(_fit_config("pretrained", params), epochs=3, patience=None, loss=loss)
    # without dropout: with it, the running training loss of 3 epochs on the tiny world's few
    # posts and 1,736 feature columns (pooled, grid, photo) is too noisy to fall every time
    # (mse: 0.60, 0.92, 0.69 with dropout 0.5; 0.48, 0.27, 0.23 without)
    (w0, history), (w1, _) = _fit_twice("pretrained", params, paths, cfg, dropout=0.0)
    assert history[-1].train_loss < history[0].train_loss
    # 3 validation images and 3 optimiser steps: their loss need not fall, but it stays on the
    # targets' scale. Before robust standardisation (imgrate.features.robust_spread) features
    # nearly constant on the training images gave them z-scores in the thousands: the first
    # validation MSE here was ~2e7 (falling to ~2e6 by the third epoch)
    assert all(math.isfinite(e.val_loss) and e.val_loss < 10 for e in history), [e.val_loss for e in history]
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    (d0, _), (d1, _) = _fit_twice("pretrained", params, paths, cfg)  # the default dropout
    for k in d0:
        assert torch.equal(d0[k], d1[k]), k


def test_pairwise_loss_is_ranknet_on_within_user_pairs() -> None:
    pred = torch.tensor([2.0, 0.0, 5.0, 1.0])
    y = torch.tensor([1.0, 0.0, 0.5, 0.5])
    users = torch.tensor([0, 0, 1, 2])
    days = torch.tensor([0.0, 30.0, 0.0, 0.0])
    # one valid pair: user 0, item 0 (y 1.0) above item 1 (y 0.0), score gap 2
    expected = torch.nn.functional.softplus(torch.tensor(-2.0))
    assert torch.isclose(pairwise_loss(pred, y, users, days), expected)
    assert pairwise_loss(pred, y, users, days, window=7.0).item() == 0.0  # 30 days apart
    no_pairs = pairwise_loss(pred.requires_grad_(), y, torch.arange(4), days)
    no_pairs.backward()  # still attached to the graph (DDP needs a backward on every rank)
    assert no_pairs.item() == 0.0


def test_weighted_losses_weigh_each_user_the_same() -> None:
    """Weights of 1 change nothing; with per-user weights 1 / n a user of many posts counts as
    much as a user of few, in both losses."""
    from imgrate.train import _loss, user_weights

    users = torch.tensor([0, 0, 0, 0, 1, 1])
    y = torch.tensor([0.0, 1.0, 2.0, 3.0, 0.0, 1.0])
    pred = torch.tensor([0.0, 1.0, 2.0, 3.0, 1.0, 0.0])  # user 0 ordered right, user 1 wrong
    days = torch.zeros(6)
    ones = torch.ones(6)
    for loss in ("mse", "pairwise"):
        cfg = FitConfig(1, 8, 0.1, loss=loss)  # type: ignore[arg-type]
        assert torch.isclose(_loss(cfg, pred, y, users, days, ones), _loss(cfg, pred, y, users, days))
    w = torch.from_numpy(user_weights(users.numpy()))
    assert torch.allclose(w, torch.tensor([0.75, 0.75, 0.75, 0.75, 1.5, 1.5])) and w.mean() == 1
    good, bad = torch.nn.functional.softplus(torch.tensor(-1.0)), torch.nn.functional.softplus(torch.tensor(1.0))
    # user 0: 6 pairs with gaps 1, 2, 3, 1, 2, 1; user 1: one wrong pair; each user half the weight
    sp = torch.nn.functional.softplus
    user0 = torch.stack([sp(torch.tensor(-g)) for g in (1.0, 2.0, 3.0, 1.0, 2.0, 1.0)]).mean()
    got = pairwise_loss(pred, y, users, days, weights=w)
    assert torch.isclose(got, (user0 * 6 * 0.75**2 + bad * 1.5**2) / (6 * 0.75**2 + 1.5**2))
    assert got > pairwise_loss(pred, y, users, days) and good < bad
    mse = _loss(FitConfig(1, 8, 0.1), pred, y, users, days, w)
    assert torch.isclose(mse, torch.tensor((0.0 + 2 * 1.5) / 6.0))  # user 1's errors of 1 weigh half


def test_balance_by_weights_trains_on_every_training_post_and_holds_out_the_rest() -> None:
    """split_inputs with balance weights: the paper's training posts and the dropped training
    posts, each user weighing the same; validation is the paper's; no held-out post trains."""
    from imgrate.dataset import Dataset

    index, dropped = [], []
    for u, n_kept, n_dropped in (("a", 10, 0), ("b", 10, 20)):
        for i in range(n_kept + n_dropped):
            row = {"shortcode": f"{u}{i}", "user": u, "target": float(i), "timestamp": i * 86400,
                   "split": ("train", "train", "train", "val", "test")[i % 5]}
            (index if i < n_kept else dropped).append(row)
    rows = [*index, *dropped]
    for i, r in enumerate(rows):
        r["row"] = i
    for r in dropped:
        r["balance"] = "dropped"
    data = Dataset(np.zeros((len(rows), 2, 2, 3), np.uint8), index, {"size": 2, "target": "max_ratio"}, dropped)
    spec = model_spec("pretrained")
    sources = (np.arange(len(rows), dtype=np.float32)[:, None],)
    train, val = split_inputs(data, spec, sources)
    assert train.weights is None and set(train.rows) == {r["row"] for r in index if r["split"] == "train"}
    wtrain, wval = split_inputs(data, spec, sources, "weights")
    assert set(wtrain.rows) == {r["row"] for r in rows if r["split"] == "train"}
    assert np.array_equal(wval.rows, val.rows) and wval.weights is None
    held = {r["row"] for r in rows if r["split"] != "train"}
    assert not held & set(wtrain.rows)
    assert wtrain.weights is not None
    per_user = {int(u): float(wtrain.weights[wtrain.users == u].sum()) for u in np.unique(wtrain.users)}
    assert per_user[0] == pytest.approx(per_user[1])  # 6 posts of a, 18 of b: the same total weight
    assert np.array_equal(wtrain.y, [rows[i]["target"] for i in wtrain.rows])
    assert _fit_config_default("pretrained").balance == "weights"
    assert _fit_config_default("paper_cnn").balance == "discard"  # the paper's protocol


def _fit_config_default(name: str) -> FitConfig:
    spec = model_spec(name)
    return spec.fit.settings(spec.params(), 0)  # type: ignore[union-attr]


def test_run_key_changes_with_params_and_data(tiny_world) -> None:
    params, paths = tiny_world
    config, train, val, cfg = _setup("paper_cnn", params, paths)
    config = dataclasses.asdict(config)
    key = run_key("paper_cnn", config, cfg, train, val)
    assert key == run_key("paper_cnn", config, cfg, train, val)
    assert key != run_key("paper_cnn", config, dataclasses.replace(cfg, lr=cfg.lr / 2), train, val)
    changed = dataclasses.replace(train, y=train.y + 0.01)
    assert key != run_key("paper_cnn", config, cfg, changed, val)


@pytest.mark.parametrize("name", ["paper_cnn", "pretrained"])
def test_stage_saves_model_with_config_params_and_curves(tiny_world, tmp_path: Path, name: str) -> None:
    params, paths = tiny_world
    local = copy_world(paths, tmp_path)
    summary = run_stage(name, params, local)
    model, info = load_model(local.model(name))
    assert info.model == name
    section = dataclasses.asdict(_section(name, params))
    assert info.params == {"seed": params.train.seed, "device": params.train.device, "nproc": params.train.nproc,
                           name: section}  # the shared keys and its own section, not the other model's
    assert len(info.history) == summary["epochs"]
    for curve in ("train_loss", "val_loss"):
        lines = (local.live_dir(name) / "plots" / "metrics" / f"{curve}.tsv").read_text().splitlines()
        assert len(lines) == 1 + summary["epochs"], curve
    assert not list((local.cache / "checkpoints").glob("*.pt")), "the checkpoint is removed once the model is saved"
    if name == "paper_cnn":
        assert info.config["hidden"] == 500 and summary["epochs"] == _section(name, params).epochs
        assert (info.input.kind, info.input.size) == ("pixels", params.preprocess.size)
        assert model(torch.zeros(2, 3, 50, 50)).shape == (2,)
    else:
        assert (info.input.kind, info.input.size, info.input.backbone) == (
            "features", params.featurize.input_size, params.featurize.backbone)
        assert summary["epochs"] <= _section(name, params).epochs
        assert model(torch.zeros(2, int(info.input.width or 0))).shape == (2,)


# --------------------------------------------------------------------------- subprocesses


def _project(tiny_world, dest: Path, nproc: int = 1, **paper_cnn: object) -> Path:
    """A project folder (params.yaml + data) for running stages/train.py in a subprocess."""
    _, paths = tiny_world
    copy_world(paths, dest)
    params = tiny_params()
    params["train"]["nproc"] = nproc
    params["train"]["paper_cnn"].update(paper_cnn)
    write_params(dest, params)
    return dest


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return {**env, "IMGRATE_ROOT": str(root), "IMGRATE_QUIET": "1", "OMP_NUM_THREADS": "1",
            "COLUMNS": "200", "PYTHONPATH": str(ROOT)}


def test_torchrun_ddp_matches_a_single_process_run(tiny_world, tmp_path: Path) -> None:
    from imgrate.params import load_params
    from imgrate.paths import Paths

    # a small learning rate keeps 3 epochs on 43 images smooth enough to compare: the runs
    # differ only in dropout masks (drawn per rank) and the sampler's one padded duplicate
    # train.nproc: 2 -> the stage script launches itself under torchrun (as `dvc repro` runs it)
    ddp = _project(tiny_world, tmp_path / "ddp", nproc=2, epochs=3, batch_size=16, lr=1e-4)
    single = _project(tiny_world, tmp_path / "single", epochs=3, batch_size=16, lr=1e-4)
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / "train.py"), "paper_cnn"],
                          cwd=ddp, env=_env(ddp), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 processes under torchrun" in proc.stderr and "gloo" in proc.stderr
    assert proc.stderr.count("train paper_cnn: 3 epochs on cpu x2") == 1  # the summary, printed by rank 0 only
    assert sorted(p.name for p in (ddp / "models").iterdir()) == ["paper_cnn.pt"]  # rank 0 only
    _, info_ddp = load_model(ddp / "models" / "paper_cnn.pt")
    assert info_ddp.summary["world_size"] == 2 and len(info_ddp.history) == 3
    tsv = (ddp / "dvclive" / "paper_cnn" / "plots" / "metrics" / "val_loss.tsv").read_text().splitlines()
    assert len(tsv) == 1 + 3  # written once, not once per rank

    os.environ.pop("WORLD_SIZE", None)
    summary = run_stage("paper_cnn", load_params(single / "params.yaml"), Paths(single))
    ddp_loss = info_ddp.summary["val_loss"]
    assert abs(ddp_loss - summary["val_loss"]) <= 0.3 * summary["val_loss"], (ddp_loss, summary["val_loss"])
    _, info_single = load_model(single / "models" / "paper_cnn.pt")
    for a, b in zip(info_ddp.history, info_single.history):
        assert abs(a["train_loss"] - b["train_loss"]) <= 0.3 * b["train_loss"], (a, b)


def test_a_killed_training_resumes_from_its_last_checkpoint(tiny_world, tmp_path: Path) -> None:
    from imgrate.params import load_params
    from imgrate.paths import Paths

    epochs = 8
    project = _project(tiny_world, tmp_path / "killed", epochs=epochs)
    cmd = [sys.executable, str(ROOT / "stages" / "train.py"), "paper_cnn"]
    proc = subprocess.Popen(cmd, cwd=project, env=_env(project), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoints = project / ".imgrate-cache" / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("paper_cnn-*.pt")):
        assert proc.poll() is None, "training ended before its first checkpoint was seen"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (path,) = checkpoints.glob("paper_cnn-*.pt")
    saved = torch.load(path, weights_only=True)
    k = len(saved["history"])
    assert 1 <= k < epochs and not (project / "models" / "paper_cnn.pt").exists()

    done = subprocess.run(cmd, cwd=project, env=_env(project), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming from the checkpoint of epoch {k}/{epochs}" in done.stderr
    assert f"epoch {k}/{epochs} train_loss" not in done.stderr  # not trained again
    assert f"epoch {k + 1}/{epochs} train_loss" in done.stderr
    ref_model, info = load_model(project / "models" / "paper_cnn.pt")
    assert [e["epoch"] for e in info.history] == list(range(1, epochs + 1))
    carried = [(e["train_loss"], e["val_loss"]) for e in info.history[:k]]
    assert carried == [(e["train_loss"], e["val_loss"]) for e in saved["history"]]  # not recomputed
    assert all("seconds" not in e for e in info.history)  # no wall-clock time in the model file
    assert not path.exists()

    # the resumed model is exactly the one an uninterrupted run gives
    fresh = _project(tiny_world, tmp_path / "fresh", epochs=epochs)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocesses (OMP_NUM_THREADS=1): the same float sums
    try:
        run_stage("paper_cnn", load_params(fresh / "params.yaml"), Paths(fresh))
    finally:
        torch.set_num_threads(threads)
    fresh_model, ref = load_model(fresh / "models" / "paper_cnn.pt")
    resumed = ref_model.state_dict()
    for name, value in fresh_model.state_dict().items():
        assert torch.equal(value, resumed[name]), name
    assert np.allclose([e["val_loss"] for e in ref.history], [e["val_loss"] for e in info.history])


def test_a_checkpoint_of_other_params_or_data_is_never_resumed(tiny_world, tmp_path: Path) -> None:
    from imgrate.train import Checkpointer

    params, paths = tiny_world
    config_obj, train, val, cfg = _setup("paper_cnn", params, paths)
    config = dataclasses.asdict(config_obj)
    cfg = dataclasses.replace(cfg, epochs=3)

    def checkpoint(c: FitConfig, t=train) -> Checkpointer:  # named as run_stage names it
        return Checkpointer(tmp_path / f"paper_cnn-{run_key('paper_cnn', config, c, t, val)}.pt")

    class Killed(Exception):
        pass

    def kill_at_2(e) -> None:
        if e.epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        fit(model_spec("paper_cnn").module(config_obj), train, val, cfg, CPU, on_epoch=kill_at_2,
            checkpoint=checkpoint(cfg))
    assert len(checkpoint(cfg).load()["history"]) == 2
    assert checkpoint(dataclasses.replace(cfg, lr=cfg.lr * 2)).load() is None
    assert checkpoint(cfg, dataclasses.replace(train, y=train.y * 0.5)).load() is None

    seen: list[int] = []
    history = fit(model_spec("paper_cnn").module(config_obj), train, val, cfg, CPU, on_epoch=lambda e: seen.append(e.epoch),
                  checkpoint=checkpoint(cfg))
    assert [e.epoch for e in history] == [1, 2, 3] and seen == [1, 2, 3]  # 1-2 replayed to DVCLive, 3 trained


def test_a_failed_training_keeps_the_tracked_curves(tiny_world, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """DVCLive empties its folder when it starts: a run that then fails must not leave the
    git-tracked dvclive/<model>/ files deleted or half-written."""
    import imgrate.train as train_module

    params, paths = tiny_world
    local = copy_world(paths, tmp_path)
    run_stage("paper_cnn", params, local)
    live = local.live_dir("paper_cnn")
    before = {p.relative_to(live): p.read_bytes() for p in sorted(live.rglob("*")) if p.is_file()}
    assert any(p.suffix == ".tsv" for p in before) and Path("metrics.json") in before
    real_fit = train_module.fit

    def fit_that_fails_after_one_epoch(*args, on_epoch, **kwargs):
        def log_then_fail(e):
            on_epoch(e)  # DVCLive has written this epoch
            raise FloatingPointError("loss became nan")
        return real_fit(*args, on_epoch=log_then_fail, **kwargs)

    four_epochs = dataclasses.replace(params, train=params.train.with_model("paper_cnn", epochs=4))
    monkeypatch.setattr(train_module, "fit", fit_that_fails_after_one_epoch)
    with pytest.raises(FloatingPointError):
        run_stage("paper_cnn", four_epochs, local)
    after = {p.relative_to(live): p.read_bytes() for p in sorted(live.rglob("*")) if p.is_file()}
    assert after == before
    assert not list(local.tmp.glob("live-*")), "the failed run's scratch folder is removed"
    # and a run that finishes replaces them (4 epochs: 4 rows per curve)
    monkeypatch.setattr(train_module, "fit", real_fit)
    run_stage("paper_cnn", four_epochs, local)
    rows = (live / "plots" / "metrics" / "train_loss.tsv").read_text().splitlines()
    assert len(rows) == 1 + 4 and not list(local.tmp.glob("live-*"))
