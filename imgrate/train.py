"""The train stage: dataset -> ``models/<model>.pt`` with per-epoch curves through DVCLive.

Adam on MSE, as the paper. Device: cuda, else mps, else cpu (``train.device`` can force
one); bf16 autocast on cuda; seeded and deterministic on the CPU.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from imgrate import metrics
from imgrate.dataset import Dataset, load_dataset, to_tensor_batch
from imgrate.errors import DataError, ImgrateError
from imgrate.models import build_model, save_checkpoint
from imgrate.params import Params, TrainParams
from imgrate.paths import Paths

log = logging.getLogger(__name__)


def pick_device(preference: str = "auto") -> torch.device:
    """cuda if available, else mps, else cpu; or the one asked for (which must exist)."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if preference == "cuda" and not torch.cuda.is_available():
        raise ImgrateError("train.device: cuda was asked for but torch sees no CUDA device")
    if preference == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ImgrateError("train.device: mps was asked for but is not available")
    return torch.device(preference)


def seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    val_spearman_within: float
    seconds: float


def _batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def predict_array(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Scores for a float tensor N x 3 x S x S, in eval mode, on ``device``."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, x.shape[0], batch_size):
            xb = x[i : i + batch_size].to(device)
            with _autocast(device):
                out.append(model(xb).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


def fit(
    model: nn.Module,
    data: Dataset,
    params: TrainParams,
    device: torch.device,
    on_epoch: Any = None,
) -> list[EpochLog]:
    """Train ``model`` in place on the train split; validate after every epoch."""
    train_rows, val_rows = data.split("train"), data.split("val")
    if len(train_rows) == 0:
        raise DataError("the train split is empty")
    x_train = torch.from_numpy(to_tensor_batch(data.images[train_rows]))
    y_train = torch.from_numpy(data.targets(train_rows))
    x_val = torch.from_numpy(to_tensor_batch(data.images[val_rows]))
    y_val = data.targets(val_rows)
    users_val = data.users(val_rows)

    if hasattr(model, "set_input_stats"):
        model.set_input_stats(x_train.mean(dim=(0, 2, 3)), x_train.std(dim=(0, 2, 3)))
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params.lr)
    loss_fn = nn.MSELoss()
    generator = torch.Generator().manual_seed(params.seed)
    history: list[EpochLog] = []
    for epoch in range(1, params.epochs + 1):
        start = time.monotonic()
        model.train()
        total, count = 0.0, 0
        for idx in _batches(len(train_rows), params.batch_size, generator):
            xb, yb = x_train[idx].to(device, non_blocking=True), y_train[idx].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device):
                pred = model(xb)
            loss = loss_fn(pred.float(), yb)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
            count += len(idx)
        train_loss = total / count
        if len(val_rows):
            pv = predict_array(model, x_val, device)
            val_loss = float(np.mean((pv - y_val) ** 2))
            rho = metrics.spearman_within(y_val, pv, users_val, min_items=3)
        else:
            val_loss, rho = math.nan, math.nan
        entry = EpochLog(epoch, train_loss, val_loss, rho, time.monotonic() - start)
        history.append(entry)
        log.info("epoch %d/%d train_loss %.5f val_loss %.5f val_spearman_within %.3f",
                 epoch, params.epochs, train_loss, val_loss, rho)
        if on_epoch is not None:
            on_epoch(entry)
    return history


def run_stage(model_name: str, params: Params, paths: Paths) -> dict[str, Any]:
    """The DVC stage ``train@<model>``: train, log curves with DVCLive, save the model."""
    from dvclive import Live

    data = load_dataset(paths)
    device = pick_device(params.train.device)
    seed_everything(params.train.seed, device)
    size = int(data.meta["size"])
    model = build_model(model_name, {"size": size})
    log.info("training %s on %s (%d parameters)", model_name, device,
             sum(p.numel() for p in model.parameters()))
    live_dir = paths.live_dir(model_name)
    with Live(dir=str(live_dir), dvcyaml=None, save_dvc_exp=False, report=None) as live:

        def on_epoch(e: EpochLog) -> None:
            for key in ("train_loss", "val_loss", "val_spearman_within"):
                value = getattr(e, key)
                if math.isfinite(value):  # an empty validation split gives nan: log nothing
                    live.log_metric(key, value)
            live.next_step()

        history = fit(model, data, params.train, device, on_epoch)
    last = history[-1]
    summary = {
        "model": model_name,
        "device": device.type,
        "epochs": len(history),
        "train_loss": last.train_loss,
        "val_loss": last.val_loss,
        "val_spearman_within": last.val_spearman_within,
        "seconds_per_epoch": float(np.mean([e.seconds for e in history])),
    }
    save_checkpoint(
        paths.model(model_name),
        model_name,
        model.cpu(),
        {
            "train_params": dataclasses.asdict(params.train),
            "preprocess": {"size": size, "target": data.meta["target"]},
            "history": [dataclasses.asdict(e) for e in history],
            "summary": summary,
        },
    )
    return summary
