"""``pretrained``: a small head on the featurize stage's frozen backbone features, with an MSE or
a pairwise (RankNet on within-user pairs) loss, early stopping on the validation within-user
Spearman, the best epoch kept and, for the ranking loss, its scores mapped onto the target's
scale."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from imgrate.features import FEATURES, Z_CLIP, robust_spread
from imgrate.models import FitConfig, Gradient, ModelSpec
from imgrate.params import param


@dataclass(frozen=True)
class Params:
    """train.pretrained: the head and its fit."""

    hidden: int = param(0, ge=0)  # 0 = dropout + linear head; else one hidden layer of this many units
    dropout: float = param(0.5, ge=0, lt=1)
    loss: Literal["mse", "pairwise"] = "pairwise"  # pairwise = RankNet on within-user pairs
    pair_window_days: float | None = param(None, gt=0)  # pairwise: only pairs posted at most this many days apart
    epochs: int = param(200, ge=1)  # at most: early stopping on the validation within-user Spearman
    patience: int = param(20, ge=1)  # epochs without a better validation Spearman before stopping
    batch_size: int = param(256, ge=2)  # a pairwise batch needs two posts
    lr: float = param(0.001, gt=0)
    weight_decay: float = param(0.0001, ge=0)
    # weights: also the training posts the per-user balance dropped, each user weighing the same;
    # discard: only the paper's balanced posts (imgrate.train.split_inputs)
    balance: Literal["weights", "discard"] = "weights"


@dataclass(frozen=True)
class PretrainedConfig:
    """A small head on frozen pretrained image features."""

    features: int = 1280  # the backbone's feature width (the featurize stage's meta says which)
    hidden: int = Params.hidden  # 0 = dropout + linear; else one hidden layer of this many units
    dropout: float = Params.dropout


class PretrainedHead(nn.Module):
    """Scores from backbone features: standardise robustly (spreads floored, z-scores clipped),
    dropout, linear (or a 1-hidden-layer MLP).

    Its input is the B x 1280 feature matrix, not images: :class:`imgrate.predict.Scorer`
    puts the backbone named by the model file's input in front of it for image files."""

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.input_mean: torch.Tensor
        self.input_std: torch.Tensor
        self.output_affine: torch.Tensor
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
        z = ((x - self.input_mean) / self.input_std).clamp(-Z_CLIP, Z_CLIP)  # B x F, robust z-scores
        score: torch.Tensor = self.head(z).squeeze(-1)
        return score * self.output_affine[0] + self.output_affine[1]

    def set_input_stats(self, *stats: torch.Tensor) -> None:
        """Mean and standard deviation of each feature over the training images; the spread of
        a near-constant feature is floored (:func:`imgrate.features.robust_spread`)."""
        mean, std = stats
        self.input_mean.copy_(mean.reshape(1, -1))
        spread = torch.from_numpy(robust_spread(std.double().numpy())).to(self.input_std.dtype)
        self.input_std.copy_(spread.reshape(1, -1))

    def set_output_affine(self, scale: float, shift: float) -> None:
        """Scores become ``scale * score + shift`` (``scale`` > 0 keeps their order)."""
        self.output_affine.copy_(torch.tensor([scale, shift]))


SPEC = ModelSpec(
    name="pretrained",
    about="a small head on the frozen backbone features of the featurize stage",
    params=Params,
    reads=(FEATURES,),
    config=PretrainedConfig,
    make_config=lambda p, inputs: PretrainedConfig(features=inputs[0].width or 0, hidden=p.hidden,
                                                   dropout=p.dropout),
    module=PretrainedHead,
    fit=Gradient(lambda p, seed: FitConfig(p.epochs, p.batch_size, p.lr, seed, p.weight_decay, p.loss,
                                           p.pair_window_days, p.patience, p.balance), calibrate=True),
)
