"""``paper_cnn``: the founding paper's CNN on the dataset's 50x50 pixels, exactly, fitted as the
paper did (Adam on MSE, batch 50, 50 epochs, the last epoch kept)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from imgrate.models import FitConfig, Gradient, ModelSpec
from imgrate.params import param
from imgrate.pixels import PIXELS


@dataclass(frozen=True)
class Params:
    """train.paper_cnn: the paper's fit settings."""

    epochs: int = param(50, ge=1)  # as in the paper
    batch_size: int = param(50, ge=1)  # as in the paper
    lr: float = param(0.001, gt=0)  # Adam


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
    1620 (the flattened input), 500, 1 — i.e. two weight matrices (see docs/models.md)."""

    def __init__(self, config: PaperCNNConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.input_mean: torch.Tensor
        self.input_std: torch.Tensor
        # Per-channel input standardisation, set from the training split (see imgrate.train).
        # Not in the paper, which does not say how it scaled pixels; without it the network
        # fed raw [0, 1] pixels stays at the mean target (measured: docs/models.md, `paper_cnn`).
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
        scores: torch.Tensor = self.head(self.features(x)).squeeze(-1)
        return scores

    def set_input_stats(self, *stats: torch.Tensor) -> None:
        """Per-channel mean and standard deviation of the training images (in [0, 1])."""
        mean, std = stats
        self.input_mean.copy_(mean.reshape(1, 3, 1, 1))
        self.input_std.copy_(std.clamp_min(1e-3).reshape(1, 3, 1, 1))


SPEC = ModelSpec(
    name="paper_cnn",
    about="the founding paper's CNN on the dataset's 50x50 pixels, exactly",
    params=Params,
    reads=(PIXELS,),
    config=PaperCNNConfig,
    make_config=lambda p, inputs: PaperCNNConfig(size=inputs[0].size),
    module=PaperCNN,
    fit=Gradient(lambda p, seed: FitConfig(p.epochs, p.batch_size, p.lr, seed)),
)
