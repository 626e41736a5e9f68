"""Benchmark: training against its in-memory ceiling (feature extraction: bench/featurize.py).

Training samples/s of the paper CNN through :func:`imgrate.train.fit`'s real data path
   (the memory-mapped uint8 dataset, a DistributedSampler, per-batch gather and conversion to
   float, input statistics, Adam) against the same model and optimizer stepping over float
   tensors already in memory (the faster of NCHW and channels-last) in batches of the same
sizes. Target: ratio >= 0.8.

Both run in this process, interleaved in rounds so machine noise hits both alike; the
best round of each counts. Data: ``--root`` (a project with data/dataset), else a small
simulated world crawled into a temporary folder.

    python bench/train.py [--root PATH] [--users 6] [--epochs 3] [--rounds 3]
    python bench/train.py --smoke                       # 2 users, 1 epoch, 1 round: seconds

It times :func:`imgrate.train.fit` itself, so it calls the training library, not the
``imgrate train`` command (whose wall time holds loading, validation and writing too).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from imgrate.dataset import load_dataset
from imgrate.models import model_spec
from imgrate.paths import Paths
from imgrate.train import fit, split_inputs

from _common import build_world, load, parser, record

NAME = "train"
CPU = torch.device("cpu")


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
    params = load()
    data = load_dataset(paths)
    spec = model_spec("paper_cnn")
    section = spec.params_of(params.train)
    input_specs, sources = spec.load_inputs(data, paths)
    config = spec.make_config(section, input_specs)
    train, _ = split_inputs(data, spec, sources)
    val = dataclasses.replace(train, rows=train.rows[:0])  # no validation: time training only
    cfg = dataclasses.replace(spec.fit.settings(section, params.train.seed), epochs=epochs)  # type: ignore[union-attr]
    # the ceiling in both memory layouts (fit's batches come out channels-last); the faster counts
    xs = {"in_memory_nchw": train.x(np.arange(len(train)), CPU)[0].contiguous(),
          "in_memory_channels_last": train.x(np.arange(len(train)), CPU)[0].contiguous(memory_format=torch.channels_last)}
    y = torch.from_numpy(train.y)
    order = np.random.default_rng(0).permutation(len(train))  # batches of fit's size, last one short
    batches = [np.sort(order[i : i + cfg.batch_size]) for i in range(0, len(order), cfg.batch_size)]
    n = len(train) * epochs
    rates: dict[str, list[float]] = {"fit": [], **{k: [] for k in xs}}
    # warm-up (oneDNN primitives, allocator): the first steps of a process are several times slower
    fit(spec.module(config), train, val, dataclasses.replace(cfg, epochs=1), CPU)
    for x in xs.values():
        bare_epochs(spec.module(config), x, y, batches, cfg.lr, 1)
    for _ in range(rounds):
        torch.manual_seed(0)
        model = spec.module(config)
        start = time.perf_counter()
        fit(model, train, val, cfg, CPU)
        rates["fit"].append(n / (time.perf_counter() - start))
        for name, x in xs.items():
            torch.manual_seed(0)
            model = spec.module(config)
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


def main() -> None:
    ap = parser(__doc__, NAME)
    ap.add_argument("--root", type=Path, help="a project with data/dataset")
    ap.add_argument("--users", type=int, default=6, help="users of the simulated world (without --root)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if args.smoke:
        args.users, args.epochs, args.rounds = 2, 1, 1

    with record(args, NAME, torch=torch.__version__, threads=torch.get_num_threads(), device="cpu") as r:
        tmp = None
        if args.root is None:
            tmp = Path(tempfile.mkdtemp(prefix="imgrate-bench-world-"))
            paths = build_world(tmp, args.users, image_size=64 if args.smoke else 320,
                                until="2025-04-30" if args.smoke else "2025-09-30")
        else:
            paths = Paths(args.root.resolve())
        try:
            r.step("world ready")
            r["training"] = bench_training(paths, args.epochs, args.rounds)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
