"""Models, declared once: the registry :data:`MODELS` and the model-file schema.

A :class:`ModelSpec` says what a model reads (``pixels`` of ``data/dataset`` or
``features`` of ``data/features``), how its architecture config and its fit settings come
from its own params section (``train.<name>`` in params.yaml), and which module it builds.
``train``, ``predict`` and ``evaluate`` go through the registry and :func:`load_model`;
none of them names a model.

A model file (``models/<name>.pt``) is one :class:`ModelFile`: schema version, the
registry name, the architecture config, the :class:`InputSpec` it was trained on, the fit
settings and params, the training history and summary, and the weights, saved with
``torch.save`` and read back with ``weights_only=True``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from imgrate.errors import ModelError
from imgrate.params import TrainParams

if TYPE_CHECKING:
    from imgrate.dataset import Dataset
    from imgrate.paths import Paths

InputKind = Literal["pixels", "features"]


@dataclass(frozen=True)
class PaperCNNConfig:
    """The founding paper's CNN. Defaults are the paper's numbers."""

    size: int = 50  # input images are size x size RGB
    conv1_channels: int = 10
    conv1_kernel: int = 11
    conv2_channels: int = 5
    conv2_kernel: int = 5
    pool: int = 2
    dropout: float = 0.25
    hidden: int = 500
    leaky_slope: float = 0.1

    @property
    def flat_features(self) -> int:
        side = (self.size - self.conv1_kernel + 1 - self.conv2_kernel + 1) // self.pool
        return self.conv2_channels * side * side


class PaperCNN(nn.Module):
    """conv 11x11 -> 10 ch (50 -> 40), conv 5x5 -> 5 ch (40 -> 36), max-pool 2 (-> 18),
    dropout 0.25, flatten (5*18*18 = 1620), dense 1620 -> 500 -> 1, LeakyReLU(0.1) between
    layers. The paper's "three dense layers" are read as three layers of units —
    1620 (the flattened input), 500, 1 — i.e. two weight matrices (see README)."""

    def __init__(self, config: PaperCNNConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        # Per-channel input standardisation, set from the training split (see imgrate.train).
        # Not in the paper, which does not say how it scaled pixels; without it the network
        # fed raw [0, 1] pixels stays at the mean target (measured: README "Results").
        self.register_buffer("input_mean", torch.full((1, 3, 1, 1), 0.5))
        self.register_buffer("input_std", torch.full((1, 3, 1, 1), 0.25))
        self.features = nn.Sequential(
            nn.Conv2d(3, c.conv1_channels, c.conv1_kernel),  # B,3,50,50 -> B,10,40,40
            nn.LeakyReLU(c.leaky_slope),
            nn.Conv2d(c.conv1_channels, c.conv2_channels, c.conv2_kernel),  # -> B,5,36,36
            nn.LeakyReLU(c.leaky_slope),
            nn.MaxPool2d(c.pool),  # -> B,5,18,18
            nn.Dropout(c.dropout),
            nn.Flatten(),  # -> B,1620
        )
        self.head = nn.Sequential(
            nn.Linear(c.flat_features, c.hidden),  # -> B,500
            nn.LeakyReLU(c.leaky_slope),
            nn.Linear(c.hidden, 1),  # -> B,1
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B x 3 x S x S floats in [0, 1]; returns B scores."""
        x = (x - self.input_mean) / self.input_std
        return self.head(self.features(x)).squeeze(-1)

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Per-channel mean and standard deviation of the training images (in [0, 1])."""
        self.input_mean.copy_(mean.reshape(1, 3, 1, 1))
        self.input_std.copy_(std.clamp_min(1e-3).reshape(1, 3, 1, 1))


@dataclass(frozen=True)
class PretrainedConfig:
    """A small head on frozen pretrained image features (the featurize stage computes them)."""

    features: int = 1280  # the backbone's pooled feature width
    hidden: int = 0  # 0 = dropout + linear; else one hidden layer of this many units
    dropout: float = 0.5


class PretrainedHead(nn.Module):
    """Scores from backbone features: standardise, dropout, linear (or a 1-hidden-layer MLP).

    Its input is the B x 1280 feature matrix, not images: :class:`imgrate.predict.Scorer`
    puts the backbone named by the model file's :class:`InputSpec` in front of it for image files."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.register_buffer("input_mean", torch.zeros(1, c.features))
        self.register_buffer("input_std", torch.ones(1, c.features))
        # scale and shift of the output: a pairwise loss fixes only the order of the scores;
        # imgrate.train maps them onto the target's scale afterwards (order unchanged)
        self.register_buffer("output_affine", torch.tensor([1.0, 0.0]))
        if c.hidden:
            layers: list[nn.Module] = [nn.Dropout(c.dropout), nn.Linear(c.features, c.hidden), nn.ReLU(),
                                       nn.Dropout(c.dropout), nn.Linear(c.hidden, 1)]
        else:
            layers = [nn.Dropout(c.dropout), nn.Linear(c.features, 1)]
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B x F features; returns B scores."""
        score = self.head((x - self.input_mean) / self.input_std).squeeze(-1)
        return score * self.output_affine[0] + self.output_affine[1]

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Mean and standard deviation of each feature over the training images."""
        self.input_mean.copy_(mean.reshape(1, -1))
        self.input_std.copy_(std.clamp_min(1e-4).reshape(1, -1))

    def set_output_affine(self, scale: float, shift: float) -> None:
        """Scores become ``scale * score + shift`` (``scale`` > 0 keeps their order)."""
        self.output_affine.copy_(torch.tensor([scale, shift]))


@dataclass(frozen=True)
class FitConfig:
    """How to fit one model: built by its :class:`ModelSpec` from its params section."""

    epochs: int
    batch_size: int  # global: under DDP each rank takes batch_size / world
    lr: float
    seed: int = 0
    weight_decay: float = 0.0
    loss: Literal["mse", "pairwise"] = "mse"
    pair_window_days: float | None = None
    patience: int | None = None  # None: train every epoch and keep the last one (the paper)


@dataclass(frozen=True)
class InputSpec:
    """What a model reads: the dataset's ``size`` px pixels, or ``width`` features of a
    ``backbone`` that saw ``size`` px images; and the target it learned."""

    kind: InputKind
    size: int
    target: str
    backbone: str | None = None  # features only
    width: int | None = None  # features only


@dataclass(frozen=True)
class ModelSpec:
    """One entry of the registry: a model's input, architecture and fit settings."""

    name: str
    input: InputKind
    module: type[nn.Module]
    config: type  # the architecture's config dataclass
    make_config: Callable[[Any, InputSpec], Any]  # (params section, input) -> config
    make_fit: Callable[[Any, int], FitConfig]  # (params section, seed) -> fit settings

    def params(self, train: TrainParams) -> Any:
        """This model's section of params.yaml (``train.<name>``)."""
        return getattr(train, self.name)

    def build(self, config: Any) -> nn.Module:
        return self.module(config)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "paper_cnn", "pixels", PaperCNN, PaperCNNConfig,
            make_config=lambda p, i: PaperCNNConfig(size=i.size),
            make_fit=lambda p, seed: FitConfig(p.epochs, p.batch_size, p.lr, seed),
        ),
        ModelSpec(
            "pretrained", "features", PretrainedHead, PretrainedConfig,
            make_config=lambda p, i: PretrainedConfig(features=i.width or 0, hidden=p.hidden, dropout=p.dropout),
            make_fit=lambda p, seed: FitConfig(p.epochs, p.batch_size, p.lr, seed, p.weight_decay, p.loss,
                                               p.pair_window_days, p.patience),
        ),
    )
}


def model_spec(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(MODELS)})") from None


def build_model(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """A fresh model ``name`` from a config dict (defaults when None)."""
    spec = model_spec(name)
    return spec.build(spec.config(**(config or {})))


def dataset_inputs(kind: InputKind, data: Dataset, paths: Paths) -> tuple[InputSpec, np.ndarray]:
    """The whole dataset as a model of input ``kind`` reads it, one row per dataset row:
    uint8 N x S x S x 3 pixels (memory-mapped), or float32 N x F features of the same posts
    from ``data/features`` (the featurize stage)."""
    target = str(data.meta["target"])
    if kind == "pixels":
        return InputSpec("pixels", int(data.meta["size"]), target), data.images
    from imgrate.featurize import load_features

    feats = load_features(paths, [(str(r["shard"]), str(r["member"])) for r in data.index])
    m = feats.meta
    return InputSpec("features", m.input_size, target, m.backbone, m.width), feats.x


# --------------------------------------------------------------------------- model files

SCHEMA = 1


@dataclass
class ModelFile:
    """Everything a model file holds besides the weights (see the module docstring)."""

    model: str  # the registry name
    config: dict[str, Any]  # the architecture config (``spec.config`` fields)
    input: InputSpec
    fit: FitConfig
    params: dict[str, Any]  # the train params the model was fitted with (shared keys + its section)
    history: list[dict[str, float]] = field(default_factory=list)  # one entry per epoch
    summary: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # further named blocks (e.g. prediction statistics)
    schema: int = SCHEMA

    @property
    def spec(self) -> ModelSpec:
        return model_spec(self.model)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": self.schema, "model": self.model, "config": self.config,
                "input": dataclasses.asdict(self.input), "fit": dataclasses.asdict(self.fit),
                "params": self.params, "history": self.history, "summary": self.summary, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> ModelFile:
        if d.get("schema") != SCHEMA:
            raise ModelError(f"{where}: model file schema {d.get('schema')!r}, this imgrate reads {SCHEMA}: "
                             f"train the model again")
        try:
            return cls(model=d["model"], config=dict(d["config"]), input=InputSpec(**d["input"]),
                       fit=FitConfig(**d["fit"]), params=dict(d["params"]), history=list(d["history"]),
                       summary=dict(d["summary"]), extra=dict(d.get("extra", {})), schema=d["schema"])
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{where}: not an imgrate model file ({type(err).__name__}: {err})") from None


def save_model(path: Path, model: nn.Module, info: ModelFile) -> None:
    """Save the weights and ``info`` atomically (the same inputs give the same bytes)."""
    import io

    from imgrate.io import atomic_path

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()  # torch.save names the archive after a file: a buffer keeps the temp name out
    torch.save({**info.to_dict(), "state_dict": state}, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def read_model_file(path: Path) -> tuple[ModelFile, dict[str, torch.Tensor]]:
    """(info, weights) of a model file; a missing or foreign file is a :class:`ModelError`."""
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ModelError(f"{path}: not a readable imgrate model ({type(err).__name__})") from err
    if not isinstance(raw, dict) or "state_dict" not in raw:
        raise ModelError(f"{path}: not an imgrate model file")
    return ModelFile.from_dict(raw, str(path)), raw["state_dict"]


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelFile]:
    """Rebuild a saved model in eval mode on ``device``; returns (model, info)."""
    info, state = read_model_file(path)
    try:
        model = build_model(info.model, info.config)
        model.load_state_dict(state)
    except (TypeError, RuntimeError) as err:
        raise ModelError(f"{path}: weights do not fit model {info.model} ({type(err).__name__})") from None
    model.to(device).eval()
    return model, info
