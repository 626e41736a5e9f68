"""Model architectures, built from typed configs that the checkpoint stores."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgrate.errors import ModelError


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
    """A small head on frozen pretrained image features (imgrate.features computes them)."""

    backbone: str = "efficientnet-lite0"
    input_size: int = 128  # px the backbone sees
    features: int = 1280  # the backbone's pooled feature width
    hidden: int = 0  # 0 = dropout + linear; else one hidden layer of this many units
    dropout: float = 0.5


class PretrainedHead(nn.Module):
    """Scores from backbone features: standardise, dropout, linear (or a 1-hidden-layer MLP).

    Its input is the B x 1280 feature matrix, not images: :class:`imgrate.predict.Scorer`
    puts the backbone in front of it for image files."""

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


ARCHITECTURES: dict[str, tuple[type, type]] = {
    "paper_cnn": (PaperCNN, PaperCNNConfig),
    "pretrained": (PretrainedHead, PretrainedConfig),
}


def build_model(name: str, config: dict[str, Any] | None = None) -> nn.Module:
    """A fresh model of architecture ``name`` from a config dict (defaults when None)."""
    try:
        model_cls, config_cls = ARCHITECTURES[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(ARCHITECTURES)})") from None
    return model_cls(config_cls(**(config or {})))


def config_dict(model: nn.Module) -> dict[str, Any]:
    return dataclasses.asdict(model.config)  # type: ignore[arg-type]


def save_checkpoint(path: Path, name: str, model: nn.Module, extra: dict[str, Any]) -> None:
    """Save weights with everything needed to rebuild and use the model, atomically."""
    from imgrate.io import atomic_path

    import io

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    # through memory: torch.save names the zip's folder after the file it writes, and the
    # temporary file's name is random; from a buffer it is always "archive" (same bytes)
    buf = io.BytesIO()
    torch.save({"architecture": name, "config": config_dict(model), "state_dict": state, **extra}, buf)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getvalue())


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a saved model in eval mode; returns (model, checkpoint dict)."""
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        raise ModelError(f"{path}: not a readable imgrate model ({type(err).__name__})") from err
    if not isinstance(ckpt, dict) or "architecture" not in ckpt:
        raise ModelError(f"{path}: not an imgrate model file")
    model = build_model(ckpt["architecture"], ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    return model, ckpt
