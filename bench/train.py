"""Benchmark: training and feature extraction against their in-memory ceilings.

1. Training samples/s of the paper CNN through :func:`imgrate.train.fit`'s real data path
   (the memory-mapped uint8 dataset, a DistributedSampler, per-batch gather and conversion to
   float, input statistics, Adam) against the same model and optimizer stepping over float
   tensors already in memory (the faster of NCHW and channels-last) in batches of the same
   sizes. Target: ratio >= 0.8.
2. Feature extraction images/s of the pretrained model through
   :class:`imgrate.features.FeatureCache` (tar shard -> JPEG decode at the input size in a
   prefetch thread -> EfficientNet-Lite0 -> cache file) against the backbone alone on uint8
   tensors already in memory. Target: ratio >= 0.8.

Both pairs run in this process, interleaved in rounds so machine noise hits both alike; the
best round of each counts. Data: ``--root`` (a project with data/raw, data/tables and
data/dataset), else a small simulated world crawled into a temporary folder.

    python bench/train.py [--root PATH] [--users 6] [--epochs 3] [--size 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgrate.dataset import load_dataset
from imgrate.features import FeatureCache, decoded_batches, embed, image_refs, load_backbone
from imgrate.models import build_model
from imgrate.params import load_params
from imgrate.paths import Paths
from imgrate.train import FitConfig, fit, model_config, prepare_inputs

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def build_world(dest: Path, users: int) -> Paths:
    """Crawl, export and preprocess a small simulated world under ``dest``."""
    from imgrate.crawl.stage import run_stage as crawl
    from imgrate.export import run_stage as export
    from imgrate.preprocess import run_stage as preprocess

    from imgrate.crawl.users import read_users

    names = read_users(ROOT / "users.txt")[:users]
    (dest / "users.txt").write_text("\n".join(names) + "\n")
    params = load_params(ROOT / "params.yaml")
    crawl_params = dataclasses.replace(params.crawl, demo=dataclasses.replace(params.crawl.demo, until="2025-09-30"))
    paths = Paths(dest)
    crawl(crawl_params, paths)
    export(dataclasses.replace(params.export, mongo_uri=None), paths)
    preprocess(params.preprocess, paths)
    return paths


def bare_epochs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batches: list[np.ndarray],
                lr: float, epochs: int) -> None:
    """The ceiling: the same steps on float tensors already in memory."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.MSELoss()
    model.train()
    for _ in range(epochs):
        for idx in batches:
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()


def bench_training(paths: Paths, epochs: int, rounds: int) -> dict[str, object]:
    params = load_params(ROOT / "params.yaml")
    data = load_dataset(paths)
    config = model_config("paper_cnn", params.train, data)
    train, _ = prepare_inputs("paper_cnn", config, data, paths, params.train, CPU)
    val = dataclasses.replace(train, rows=train.rows[:0])  # no validation: time training only
    cfg = dataclasses.replace(FitConfig.for_model("paper_cnn", params.train), epochs=epochs)
    # the ceiling in both memory layouts (fit's batches come out channels-last); the faster counts
    xs = {"in_memory_nchw": train.x(np.arange(len(train)), CPU).contiguous(),
          "in_memory_channels_last": train.x(np.arange(len(train)), CPU).contiguous(memory_format=torch.channels_last)}
    y = torch.from_numpy(train.y)
    order = np.random.default_rng(0).permutation(len(train))  # batches of fit's size, last one short
    batches = [np.sort(order[i : i + cfg.batch_size]) for i in range(0, len(order), cfg.batch_size)]
    n = len(train) * epochs
    rates: dict[str, list[float]] = {"fit": [], **{k: [] for k in xs}}
    # warm-up (oneDNN primitives, allocator): the first steps of a process are several times slower
    fit(build_model("paper_cnn", config), train, val, dataclasses.replace(cfg, epochs=1), CPU)
    for x in xs.values():
        bare_epochs(build_model("paper_cnn", config), x, y, batches, cfg.lr, 1)
    for _ in range(rounds):
        torch.manual_seed(0)
        model = build_model("paper_cnn", config)
        start = time.perf_counter()
        fit(model, train, val, cfg, CPU)
        rates["fit"].append(n / (time.perf_counter() - start))
        for name, x in xs.items():
            torch.manual_seed(0)
            model = build_model("paper_cnn", config)
            start = time.perf_counter()
            bare_epochs(model, x, y, batches, cfg.lr, epochs)
            rates[name].append(n / (time.perf_counter() - start))
    best = {k: max(v) for k, v in rates.items()}
    ceiling = max(v for k, v in best.items() if k != "fit")
    return {
        "model": "paper_cnn", "train_images": len(train), "epochs": epochs, "batch_size": cfg.batch_size,
        "samples_per_s": {k: round(v, 1) for k, v in best.items()},
        "ratio": round(best["fit"] / ceiling, 3),
    }


def bench_features(paths: Paths, size: int, batch: int, rounds: int, limit: int) -> dict[str, object]:
    data = load_dataset(paths)
    refs = image_refs(data, paths)[:limit]
    backbone = load_backbone("efficientnet-lite0", size)
    # the ceiling's input: the same images, decoded beforehand
    images = np.concatenate([imgs for shard in sorted({s for s, _ in refs})
                             for _, imgs in decoded_batches(paths.shards / shard, {m for s, m in refs if s == shard},
                                                            size, batch)])
    scratch = Path(tempfile.mkdtemp(prefix="imgrate-bench-"))
    rates: dict[str, list[float]] = {"feature_cache": [], "backbone_only": []}
    try:
        for r in range(rounds):
            cache_paths = Paths(scratch / str(r))
            cache_paths.raw.parent.mkdir(parents=True)
            cache_paths.raw.symlink_to(paths.raw)  # same shards, empty cache
            cache = FeatureCache(cache_paths, "efficientnet-lite0", size, backbone)  # weights loaded once
            start = time.perf_counter()
            cache.features(refs, CPU, batch)
            rates["feature_cache"].append(len(refs) / (time.perf_counter() - start))
            start = time.perf_counter()
            for i in range(0, len(images), batch):
                embed(backbone, images[i : i + batch], CPU)
            rates["backbone_only"].append(len(images) / (time.perf_counter() - start))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    best = {k: max(v) for k, v in rates.items()}
    return {
        "backbone": "efficientnet-lite0", "input_size": size, "images": len(refs), "batch_size": batch,
        "images_per_s": {k: round(v, 1) for k, v in best.items()},
        "ratio": round(best["feature_cache"] / best["backbone_only"], 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, help="a project with data/raw, data/tables, data/dataset")
    ap.add_argument("--users", type=int, default=6, help="users of the simulated world (without --root)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=128, help="the backbone's input size")
    ap.add_argument("--feature-images", type=int, default=256)
    ap.add_argument("--feature-batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    tmp = None
    if args.root is None:
        tmp = Path(tempfile.mkdtemp(prefix="imgrate-bench-world-"))
        paths = build_world(tmp, args.users)
    else:
        paths = Paths(args.root.resolve())
    try:
        result = {
            "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu",
            "training": bench_training(paths, args.epochs, args.rounds),
            "features": bench_features(paths, args.size, args.feature_batch, args.rounds, args.feature_images),
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
