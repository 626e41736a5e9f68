"""``ridge_head``: ridge regression on the featurize stage's features, solved in closed form.

The worked example of adding a model (README "Adding a model"): this module, its section in
params.yaml and a docs row are the whole change; ``make lineage`` then regenerates dvc.yaml.
tests/test_lineage.py copies it to ``imgrate/models/ridge_head.py`` of a copy of the project
and runs it through train, evaluate and ``imgrate rank``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from imgrate.features import FEATURES
from imgrate.models import ClosedForm, ModelSpec, Split
from imgrate.params import param


@dataclass(frozen=True)
class Params:
    """train.ridge_head: the ridge penalty on standardised features."""

    alpha: float = param(100.0, gt=0)


@dataclass(frozen=True)
class RidgeConfig:
    features: int = 1280  # the feature width (the featurize stage's meta)


class RidgeHead(nn.Module):
    """score = w . (x - mean) / std + b: a linear head whose weights come from one solve."""

    def __init__(self, config: RidgeConfig) -> None:
        super().__init__()
        self.input_mean: torch.Tensor
        self.input_std: torch.Tensor
        self.register_buffer("input_mean", torch.zeros(1, config.features))
        self.register_buffer("input_std", torch.ones(1, config.features))
        self.linear = nn.Linear(config.features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: B x F features; returns B scores."""
        scores: torch.Tensor = self.linear((x - self.input_mean) / self.input_std).squeeze(-1)
        return scores


def solve(p: Params, module: nn.Module, train: Split, val: Split) -> None:
    """Ridge on the training split's standardised features: w = (Z'Z + alpha I)^-1 Z'(y - mean y)."""
    head = cast(RidgeHead, module)
    x, y = train.array(0), train.y.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / std
    w = np.linalg.solve(z.T @ z + p.alpha * np.eye(z.shape[1]), z.T @ (y - y.mean()))
    with torch.no_grad():
        head.input_mean.copy_(torch.from_numpy(mean).float().reshape(1, -1))
        head.input_std.copy_(torch.from_numpy(std).float().reshape(1, -1))
        head.linear.weight.copy_(torch.from_numpy(w).float().reshape(1, -1))
        head.linear.bias.fill_(float(y.mean()))


SPEC = ModelSpec(
    name="ridge_head",
    about="ridge regression on the frozen backbone features, solved in closed form",
    params=Params,
    reads=(FEATURES,),
    config=RidgeConfig,
    make_config=lambda p, inputs: RidgeConfig(features=inputs[0].width or 0),
    module=RidgeHead,
    fit=ClosedForm(solve),
)
