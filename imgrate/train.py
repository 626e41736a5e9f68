"""The train stage: dataset -> ``models/<model>.pt`` with per-epoch curves through DVCLive.

Models are declared in the registry (:mod:`imgrate.models`, one module per model); this
module never names one. A model's entry says what it reads (:mod:`imgrate.inputs`), how its
params section ``train.<name>`` gives its architecture config, and how it is fitted:
:class:`imgrate.models.Gradient` models go through :func:`fit` (Adam over epochs,
validation after each, early stopping when the entry's settings ask for it, a ranking
loss's scores calibrated afterwards), :class:`imgrate.models.ClosedForm` models through
their own solve (one history entry). The stage imports only the trained model's module.

Device: cuda, else mps, else cpu (``train.device`` can force one); bf16 autocast on cuda;
seeded and deterministic on the CPU. Every epoch draws its randomness from (seed, epoch,
rank) alone, so a resumed run continues exactly where the killed one stopped.

``train.nproc`` > 1 (or 0: one per GPU): :func:`main` launches the stage again under
torchrun with that many processes, so ``dvc repro`` trains on every GPU. Under torchrun
(WORLD_SIZE > 1): DistributedDataParallel with a DistributedSampler, gloo on
the CPU and nccl on CUDA; ``batch_size`` is the global batch (each rank takes its share);
rank 0 validates, writes DVCLive, the checkpoints and the model file.

Resume: after every epoch rank 0 writes ``.imgrate-cache/checkpoints/<model>-<key>.pt``,
where the key hashes the model config, the fit settings and the exact training inputs
(pixels or features, targets, users, splits), so a checkpoint of other params or data is
never resumed. It is deleted once the model file is written.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from imgrate import metrics, reference
from imgrate.dataset import Dataset, load_dataset
from imgrate.devices import pick_device
from imgrate.entry import Dep, Output, Stage, Summary, clean_outputs
from imgrate.errors import DataError, ImgrateError
from imgrate.io import atomic_path
from imgrate.models import (
    Calibrated,
    ClosedForm,
    FitConfig,
    Gradient,
    ModelFile,
    ModelSpec,
    Split,
    Standardised,
    check_sections,
    model_names,
    model_spec,
    save_model,
)
from imgrate.params import Params, TrainParams
from imgrate.paths import Paths

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- seeds


def seed_everything(seed: int, device: torch.device) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{epoch}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 2**63


def _autocast(device: torch.device) -> Any:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands under torchrun (world 1 without it)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def dist_from_env() -> DistInfo:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group torchrun set up: nccl on CUDA, gloo on the CPU."""
    import torch.distributed as dist

    if not info.active or dist.is_initialized():
        return
    if device.type == "mps":
        raise ImgrateError("distributed training on mps is not supported: use train.device cpu or cuda")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    log.info("rank %d of %d on %s (%s)", info.rank, info.world, device, dist.get_backend())


def _barrier(info: DistInfo) -> None:
    if info.active:
        import torch.distributed as dist

        dist.barrier()


def _broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# --------------------------------------------------------------------------- inputs


def user_weights(users: np.ndarray) -> np.ndarray:
    """Per-user balance by sample weights: each row weighs 1 / (its user's rows), scaled to a
    mean of 1, so every user's rows weigh the same in total (float32)."""
    _, codes, counts = np.unique(users, return_inverse=True, return_counts=True)
    w = 1.0 / counts[codes.reshape(-1)].astype(np.float64)
    return (w * len(w) / w.sum()).astype(np.float32) if len(w) else w.astype(np.float32)


def _split(data: Dataset, spec: ModelSpec[Any, Any], sources: tuple[np.ndarray, ...], split: str,
           weights: bool = False) -> Split:
    """One split as ``spec`` sees it; with ``weights`` it also holds the posts the per-user
    balance dropped from that split, and each row's :func:`user_weights`."""
    rows = data.split(split, dropped=weights)
    entries = [data.row(int(i)) for i in rows]  # kept posts, then (weights) the dropped ones
    codes = {u: i for i, u in enumerate(sorted({r["user"] for r in (*data.index, *data.dropped)}))}
    users = np.array([codes[r["user"]] for r in entries], dtype=np.int64)
    return Split(
        reads=spec.reads,
        sources=sources,
        rows=rows,
        y=np.array([r["target"] for r in entries], dtype=np.float32),
        users=users,
        days=np.array([float(r.get("timestamp", 0)) / 86400.0 for r in entries], dtype=np.float64),
        weights=user_weights(users) if weights else None,
    )


def split_inputs(data: Dataset, spec: ModelSpec[Any, Any], sources: tuple[np.ndarray, ...],
                 balance: str = "discard") -> tuple[Split, Split]:
    """(train, val) rows of ``sources`` (one array per input of ``spec``, one row per dataset row).

    ``balance: weights``: the training split also holds the training posts the paper's per-user
    balance dropped, weighted so that every user weighs the same (:func:`user_weights`); the
    validation split stays the paper's (early stopping and the reported validation scores
    compare across balances), and no dropped post of val or test is ever read."""
    return _split(data, spec, sources, "train", weights=balance == "weights"), _split(data, spec, sources, "val")


# --------------------------------------------------------------------------- losses


def pairwise_loss(pred: torch.Tensor, y: torch.Tensor, users: torch.Tensor, days: torch.Tensor,
                  window: float | None = None, weights: torch.Tensor | None = None) -> torch.Tensor:
    """RankNet: mean of -log sigmoid(s_i - s_j) over pairs of the same user with y_i > y_j
    (posted at most ``window`` days apart when given); with ``weights`` (one per item) a
    pair weighs w_i * w_j (1 / pairs of its user when w = 1 / posts of the user). Zero,
    still attached to the graph, when the batch has no such pair."""
    mask = (users[:, None] == users[None, :]) & (y[:, None] > y[None, :])
    if window is not None:
        mask &= (days[:, None] - days[None, :]).abs() <= window
    if not bool(mask.any()):
        return pred.sum() * 0.0
    losses = F.softplus(-(pred[:, None] - pred[None, :])[mask])
    if weights is None:
        return losses.mean()
    w = (weights[:, None] * weights[None, :])[mask]
    return (losses * w).sum() / w.sum()


def _loss(cfg: FitConfig, pred: torch.Tensor, y: torch.Tensor, users: torch.Tensor,
          days: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    if cfg.loss == "pairwise":
        return pairwise_loss(pred, y, users, days, cfg.pair_window_days, weights)
    if weights is None:
        return F.mse_loss(pred, y)
    return (weights * (pred - y) ** 2).sum() / weights.sum()


def _val_loss(cfg: FitConfig, pred: np.ndarray, val: Split) -> float:
    """The training loss on the whole validation split (pairwise: over every within-user pair)."""
    if cfg.loss == "mse":
        return float(np.mean((pred - val.y) ** 2))
    total, pairs = 0.0, 0
    for u in np.unique(val.users):
        i = np.flatnonzero(val.users == u)
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
        mask = t(val.y[i])[:, None] > t(val.y[i])[None, :]
        if cfg.pair_window_days is not None:
            mask &= (t(val.days[i])[:, None] - t(val.days[i])[None, :]).abs() <= cfg.pair_window_days
        n = int(mask.sum())
        if n:
            p = t(pred[i])
            total += float(F.softplus(-(p[:, None] - p[None, :])[mask]).sum())
            pairs += n
    return total / pairs if pairs else math.nan


# --------------------------------------------------------------------------- fit


@dataclass
class EpochLog:
    epoch: int
    train_loss: float
    val_loss: float
    val_spearman_within: float
    seconds: float


def epoch_score(e: EpochLog) -> float:
    """What early stopping maximises: the validation within-user Spearman, or minus the
    validation loss where the split is too small for it (minus the train loss without one)."""
    if math.isfinite(e.val_spearman_within):
        return e.val_spearman_within
    return -e.val_loss if math.isfinite(e.val_loss) else -e.train_loss


def predict_inputs(model: nn.Module, inputs: Split, device: torch.device, batch_size: int = 512) -> np.ndarray:
    """Scores of every row of ``inputs``, in eval mode."""
    model.eval()
    out = []
    with torch.inference_mode():
        for i in range(0, len(inputs), batch_size):
            with _autocast(device):
                out.append(model(*inputs.x(np.arange(i, min(i + batch_size, len(inputs))), device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


class Checkpointer:
    """Per-epoch training state in the persistent cache, for resuming a killed run."""

    def __init__(self, path: Path | None) -> None:
        self.path = path  # None: no checkpoints (ranks other than 0, or disabled)

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        try:
            state: dict[str, Any] = torch.load(self.path, map_location="cpu", weights_only=True)
            return state
        except Exception as err:  # a damaged checkpoint only costs the epochs it held
            log.warning("ignoring unreadable checkpoint %s (%s)", self.path.name, type(err).__name__)
            return None

    def save(self, state: dict[str, Any]) -> None:
        if self.path is None:
            return
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: FitConfig,
    device: torch.device,
    *,
    info: DistInfo = DistInfo(),
    on_epoch: Callable[[EpochLog], None] | None = None,
    checkpoint: Checkpointer | None = None,
    standardise: bool = True,
) -> list[EpochLog]:
    """Train ``model`` in place; validate after every epoch; resume from ``checkpoint``.

    ``standardise``: the model's inputs are standardised with the training split's
    statistics first (:class:`imgrate.models.Standardised`). With ``cfg.patience`` the model
    ends at its best validation epoch (within-user Spearman, or the validation loss where the
    split is too small for it), else at the last epoch."""
    from torch.utils.data import DistributedSampler

    if len(train) == 0:
        raise DataError("the train split is empty")
    if standardise:
        cast(Standardised, model).set_input_stats(*(t for pair in train.stats() for t in pair))
    model.to(device)
    net: nn.Module = model
    if info.active:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler: DistributedSampler[int] = DistributedSampler(
        range(len(train)), num_replicas=info.world, rank=info.rank, shuffle=True, seed=cfg.seed)  # type: ignore[arg-type]
    per_rank = max(1, math.ceil(cfg.batch_size / info.world))
    y_all = torch.from_numpy(train.y)
    users_all, days_all = torch.from_numpy(train.users), torch.from_numpy(train.days)
    weights_all = None if train.weights is None else torch.from_numpy(train.weights)

    history: list[EpochLog] = []
    best: dict[str, Any] = {"score": -math.inf, "epoch": 0, "state": None, "bad": 0}
    state = _broadcast(checkpoint.load() if checkpoint and info.main else None, info)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history = [EpochLog(**e) for e in state["history"]]
        best = state["best"]
        log.info("resuming from the checkpoint of epoch %d/%d", len(history), cfg.epochs)
        if on_epoch is not None:
            for entry in history:
                on_epoch(entry)
    start_epoch = len(history) + 1

    for epoch in range(start_epoch, cfg.epochs + 1):
        if cfg.patience is not None and best["bad"] >= cfg.patience:
            break
        start = time.monotonic()
        torch.manual_seed(_epoch_seed(cfg.seed, epoch, info.rank))  # dropout of this epoch
        sampler.set_epoch(epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64)
        net.train()
        total = torch.zeros(2, dtype=torch.float64)
        for i in range(0, len(order), per_rank):
            idx = np.sort(order[i : i + per_rank])
            xb = train.x(idx, device)
            yb = y_all[idx].to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device):
                pred = net(*xb)
            wb = None if weights_all is None else weights_all[idx].to(device)
            loss = _loss(cfg, pred.float(), yb, users_all[idx].to(device), days_all[idx].to(device), wb)
            loss.backward()
            optimizer.step()
            total += torch.tensor([loss.item() * len(idx), len(idx)], dtype=torch.float64)
        if info.active:
            import torch.distributed as dist

            total = total.to(device)  # nccl reduces device tensors, gloo CPU ones
            dist.all_reduce(total)
            total = total.cpu()
        train_loss = float(total[0] / total[1])
        val_loss = rho = math.nan
        if info.main and len(val):
            pv = predict_inputs(model, val, device)
            val_loss = _val_loss(cfg, pv, val)
            rho = metrics.spearman_within(val.y, pv, val.users, min_items=3)
        val_loss, rho = _broadcast((val_loss, rho), info)
        entry = EpochLog(epoch, train_loss, val_loss, rho, time.monotonic() - start)
        history.append(entry)
        score = epoch_score(entry)
        if cfg.patience is not None:
            if score > best["score"]:
                best = {"score": score, "epoch": epoch, "state": _cpu_state(model), "bad": 0}
            else:
                best["bad"] += 1
        log.info("epoch %d/%d train_loss %.5f val_loss %.5f val_spearman_within %.3f (%.1f s)",
                 epoch, cfg.epochs, train_loss, val_loss, rho, entry.seconds)
        if checkpoint is not None and info.main:
            checkpoint.save({"model": _cpu_state(model), "optimizer": optimizer.state_dict(),
                             "history": [dataclasses.asdict(e) for e in history], "best": best})
        if on_epoch is not None:
            on_epoch(entry)
    if cfg.patience is not None and best["state"] is not None:
        model.load_state_dict(best["state"])
        log.info("keeping epoch %d (best validation score %.4f)", best["epoch"], best["score"])
    return history


def calibrate(model: nn.Module, train: Split, device: torch.device) -> None:
    """Put a ranking model's scores on the target's scale: a least-squares line from its
    training-split scores to the targets, with a positive slope so no order changes (MSE
    and the scores that ``imgrate rank`` prints then read as predicted targets)."""
    scores = predict_inputs(model, train, device).astype(np.float64)
    if len(scores) < 2 or np.ptp(scores) == 0:
        return
    slope, intercept = np.polyfit(scores, train.y.astype(np.float64), 1)
    cast(Calibrated, model).set_output_affine(max(float(slope), 1e-6), float(intercept))


def reference_block(model: nn.Module, train: Split, data: Dataset, device: torch.device) -> dict[str, Any]:
    """The model file's :mod:`imgrate.reference` block: the model's scores of the training
    photos (per photographer) and those photos' statistics, so that `imgrate rank` can say
    where a new photo's score falls and whether the photo is like the ones it learned from."""
    scores = predict_inputs(model, train, device)
    return reference.build(scores, data.users(train.rows), data.images[train.rows])


# --------------------------------------------------------------------------- the stage


def run_key(name: str, config: dict[str, Any], cfg: FitConfig, train: Split, val: Split) -> str:
    """A hash of everything that determines a training run (its checkpoint's name)."""
    h = hashlib.blake2b(digest_size=10)
    h.update(json.dumps({"model": name, "config": config, "fit": dataclasses.asdict(cfg)}, sort_keys=True).encode())
    train.fingerprint(h)
    val.fingerprint(h)
    return h.hexdigest()


def run_stage(model_name: str, params: Params, paths: Paths) -> Summary[None]:
    """The DVC stage ``train@<model>`` in this process (one rank under torchrun): train, log
    curves with DVCLive, save the model (rank 0)."""
    spec = model_spec(model_name)  # an unknown name fails before any process group exists
    section = spec.params_of(params.train)  # and so do its params
    info = dist_from_env()
    if not info.main:
        logging.getLogger("imgrate").setLevel(logging.WARNING)  # rank 0 speaks for all
    if info.main:  # left by a killed run
        clean_outputs(STAGE.outputs(paths, model_name))
    device = pick_device(params.train.device, info.local_rank)
    init_distributed(info, device)
    try:
        return _run(spec, section, params, paths, info, device)
    finally:
        if info.active:
            import torch.distributed as dist

            dist.destroy_process_group()


def _solve(spec: ModelSpec[Any, Any], section: Any, model: nn.Module, train: Split, val: Split,
           device: torch.device) -> list[EpochLog]:
    """A closed-form fit: the entry's solve, then one history entry (epoch 1) of its losses."""
    if len(train) == 0:
        raise DataError("the train split is empty")
    assert isinstance(spec.fit, ClosedForm)
    start = time.monotonic()
    spec.fit.solve(section, model, train, val)
    model.to(device)
    train_loss = float(np.mean((predict_inputs(model, train, device) - train.y) ** 2))
    val_loss = rho = math.nan
    if len(val):
        pv = predict_inputs(model, val, device)
        val_loss = float(np.mean((pv - val.y) ** 2))
        rho = metrics.spearman_within(val.y, pv, val.users, min_items=3)
    entry = EpochLog(1, train_loss, val_loss, rho, time.monotonic() - start)
    log.info("solved: train_loss %.5f val_loss %.5f val_spearman_within %.3f (%.1f s)", train_loss, val_loss, rho,
             entry.seconds)
    return [entry]


def _run(spec: ModelSpec[Any, Any], section: Any, params: Params, paths: Paths, info: DistInfo,
         device: torch.device) -> Summary[None]:
    model_name = spec.name
    data = load_dataset(paths)
    seed_everything(params.train.seed, device)
    input_specs, sources = spec.load_inputs(data, paths)
    config = spec.make_config(section, input_specs)
    model = spec.module(config)
    method = spec.fit
    cfg = method.settings(section, params.train.seed) if isinstance(method, Gradient) else None
    train, val = split_inputs(data, spec, sources, cfg.balance if cfg is not None else "discard")
    checkpoint = None
    if cfg is not None and info.main:
        key = run_key(model_name, dataclasses.asdict(config), cfg, train, val)
        checkpoint = Checkpointer(paths.cache / "checkpoints" / f"{model_name}-{key}.pt")
    log.info("training %s (%s) on %s x%d (%d parameters, %d train / %d val)", model_name, method.method, device,
             info.world, sum(p.numel() for p in model.parameters()), len(train), len(val))

    live = None
    staged: Path | None = None
    if info.main:
        from dvclive.live import Live

        # DVCLive empties its folder when it starts; the curves git tracks are replaced only by
        # those of a run that finishes (dvc.yaml keeps them with persist: true)
        staged = stage_live_dir(paths, model_name)
        live = Live(dir=str(staged), dvcyaml=None, save_dvc_exp=False, report=None)

    def on_epoch(e: EpochLog) -> None:
        if live is None:
            return
        for k in ("train_loss", "val_loss", "val_spearman_within"):
            value = getattr(e, k)
            if math.isfinite(value):  # an empty validation split gives nan: log nothing
                live.log_metric(k, value)
        live.next_step()

    trained = False
    try:
        if cfg is not None:
            history = fit(model, train, val, cfg, device, info=info, on_epoch=on_epoch, checkpoint=checkpoint,
                          standardise=isinstance(method, Gradient) and method.standardise)
        else:
            history = _solve(spec, section, model, train, val, device)
            on_epoch(history[0])
        # the epoch whose weights the model file holds (fit keeps the first best one)
        kept = history[-1] if cfg is None or cfg.patience is None else max(history, key=epoch_score)
        if live is not None:
            # metrics.json (`dvc metrics show`, `dvc exp show`): the kept epoch, not the last
            # epoch's losses (the curves are in plots/): one table of every stage's metrics
            # must fit a terminal
            live.summary = {"kept_epoch": kept.epoch}
        trained = True
    finally:
        if live is not None:
            live.end()
        if staged is not None and not trained:  # the tracked curves stay as they were
            shutil.rmtree(staged, ignore_errors=True)
    if isinstance(method, Gradient) and method.calibrate and cfg is not None and cfg.loss == "pairwise":
        calibrate(model, train, device)
    ref = reference_block(model, train, data, device) if info.main else None
    summary = {
        "model": model_name,
        "device": device.type,
        "world_size": info.world,
        "rank": info.rank,
        "epochs": len(history),
        "best_epoch": kept.epoch,
        "train_loss": kept.train_loss,
        "val_loss": kept.val_loss,
        "val_spearman_within": kept.val_spearman_within,
        "train_posts": len(train),
        "train_dropped_by_balance": int((train.rows >= len(data.index)).sum()),  # balance: weights
    }
    # wall-clock time goes to the log, never into the model file: the same inputs give the same bytes
    log.info("%s: %.2f s per epoch", model_name, float(np.mean([e.seconds for e in history])))
    if info.main:
        shared = {k: v for k, v in dataclasses.asdict(params.train).items() if k != "models"}
        fitted = {"method": method.method, **(dataclasses.asdict(cfg) if cfg is not None else {})}
        save_model(paths.model(model_name), model.cpu(), ModelFile(
            model=model_name,
            config=dataclasses.asdict(config),
            inputs=input_specs,
            fit=fitted,
            params={**shared, model_name: dataclasses.asdict(section)},
            # no wall-clock seconds: the same inputs give the same bytes (timings go to the log)
            history=[{k: v for k, v in dataclasses.asdict(e).items() if k != "seconds"} for e in history],
            summary=summary,
            extra={reference.KEY: ref},  # how to read its scores: imgrate/reference.py
        ))
        if checkpoint is not None:
            checkpoint.remove()
        if staged is not None:
            publish_live_dir(staged, paths.live_dir(model_name), paths.tmp)
    _barrier(info)
    line = (f"train {model_name}: {summary['epochs']} epochs on {summary['device']} x{summary['world_size']}, "
            f"val_loss {summary['val_loss']:.5f}, val_spearman_within {summary['val_spearman_within']:.3f}")
    return Summary("train", summary, line if info.main else None)  # under torchrun one line is enough


def stage_live_dir(paths: Paths, model_name: str) -> Path:
    """A new scratch folder for this run's DVCLive files (those of killed runs are removed)."""
    paths.tmp.mkdir(parents=True, exist_ok=True)
    for stale in paths.tmp.glob(f"live-{model_name}-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"live-{model_name}-", dir=paths.tmp))


def publish_live_dir(staged: Path, final: Path, tmp: Path) -> None:
    """Replace ``final``'s metrics.json and plots/ by those in ``staged`` (renames on one filesystem)."""
    final.mkdir(parents=True, exist_ok=True)
    old = Path(tempfile.mkdtemp(prefix=f"live-{final.name}-old-", dir=tmp))
    for name in ("plots", "metrics.json"):
        if (final / name).exists():
            os.replace(final / name, old / name)
        if (staged / name).exists():
            os.replace(staged / name, final / name)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(staged, ignore_errors=True)


# --------------------------------------------------------------------------- the entry


def nproc(params: Params) -> int:
    """Processes ``train.nproc`` asks for (0: one per visible CUDA device, at least one)."""
    if params.train.nproc:
        return params.train.nproc
    return max(1, torch.cuda.device_count()) if torch.cuda.is_available() else 1


def torchrun_command(model_name: str, processes: int) -> list[str]:
    """This stage under torchrun: ``processes`` ranks on this machine, each running :func:`train_model`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "imgrate.train", model_name]


def train_model(params: Params, paths: Paths, model_name: str) -> Summary[None]:
    """``train@<model>`` as its entry runs it: with ``train.nproc`` > 1 and outside torchrun, the
    stage runs itself under torchrun with that many processes and waits for them (rank 0
    prints the summary); else :func:`run_stage` in this process."""
    check_sections(params.train)
    model_spec(model_name).params_of(params.train)  # a bad name or section fails before torchrun starts
    processes = nproc(params)
    if processes > 1 and "WORLD_SIZE" not in os.environ:
        cmd = torchrun_command(model_name, processes)
        log.info("train %s: %d processes under torchrun", model_name, processes)
        env = {**os.environ, "IMGRATE_ROOT": str(paths.root)}
        code = subprocess.run(cmd, env=env, check=False).returncode
        if code != 0:
            raise ImgrateError(f"train {model_name}: torchrun with {processes} processes failed (exit code {code})")
        return Summary("train", {"model": model_name, "processes": processes})
    return run_stage(model_name, params, paths)


def _outputs(paths: Paths, model: str) -> list[Output]:
    live = paths.live_dir(model)
    return [
        Output(paths.model(model), persist=True,
               note="persist: DVC would delete it before the stage runs; a failed training keeps the previous "
                    "model (a finished one replaces it atomically)"),
        Output(live / "plots", folder=True, cache=False, persist=True,
               note="DVCLive's curves (TSV): drawn once each by the top-level plots. persist: train replaces them "
                    "only when it finishes, so a failed run keeps the tracked curves"),
        Output(live / "metrics.json", "metrics", cache=False, persist=True),
    ]


def _reads(paths: Paths, model: str) -> list[Dep]:
    """data/dataset (targets, splits, the reference block's photos) and what the model reads."""
    return [Dep(paths.rel(paths.dataset)), *(Dep(inp.data_dep(paths)) for inp in model_spec(model).reads)]


def learning_curves(paths: Paths, model: str) -> dict[str, dict[str, Any]]:
    """dvc.yaml's top-level plots of one model: train and validation loss on one plot, the
    validation within-user Spearman on another (DVCLive writes the TSVs; each curve once)."""
    curves = paths.rel(paths.live_dir(model) / "plots" / "metrics")
    return {
        f"learning_curves_{model}": {
            "template": "linear", "x": "step",
            "y": {f"{curves}/train_loss.tsv": "train_loss", f"{curves}/val_loss.tsv": "val_loss"},
            "title": f"{model}: train and validation loss (train.{model})",
            "x_label": "epoch (from 0)", "y_label": "loss"},
        f"validation_spearman_{model}": {
            "template": "linear", "x": "step",
            "y": {f"{curves}/val_spearman_within.tsv": "val_spearman_within"},
            "title": f"{model}: validation within-user Spearman", "x_label": "epoch (from 0)",
            "y_label": "Spearman within users"},
    }


def _params() -> list[str]:
    shared = [f"train.{f.name}" for f in dataclasses.fields(TrainParams) if f.name != "models"]
    return [*shared, "train.${key}"]  # the keys every model shares, and the model's own section only


STAGE = Stage(
    name="train",
    about="one train@<model> per model of the registry (imgrate/models/): data/dataset and what the model "
          "reads -> models/<model>.pt, curves in dvclive/<model>/; train.nproc > 1 runs it under torchrun",
    sections=("train",),
    reads=_reads,
    outputs=_outputs,
    run=train_model,
    params=_params,
    imports=lambda model: [f"imgrate.models.{model}"],
    each=model_names,
    top_plots=learning_curves,
)


if __name__ == "__main__":  # the torchrun ranks that train_model launches
    from imgrate.entry import script

    script(STAGE, sys.argv[1])
