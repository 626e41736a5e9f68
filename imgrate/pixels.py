"""The dataset's pixels as a model input: ``data/dataset/images_<size>.npy``, uint8 N x S x S x 3,
fed to a model as float B x 3 x S x S in [0, 1]."""

from __future__ import annotations

import numpy as np
import torch

from imgrate.inputs import DatasetRows, InputSpec, ModelInput
from imgrate.paths import Paths


class Pixels(ModelInput):
    kind = "pixels"
    module = __name__

    def data_dep(self, paths: Paths) -> str:
        # the dataset's images array; DVC fills in its size from params.yaml
        return paths.rel(paths.images_array("${preprocess.size}"))

    def load(self, data: DatasetRows, paths: Paths) -> tuple[InputSpec, np.ndarray]:
        return InputSpec("pixels", int(data.meta["size"]), str(data.meta["target"])), data.images

    def batch(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(rows)).to(device, non_blocking=True)
        return x.permute(0, 3, 1, 2).float().div_(255.0)  # B,S,S,3 uint8 -> B,3,S,S in [0, 1]

    def from_images(self, spec: InputSpec, images: np.ndarray, device: torch.device) -> np.ndarray:
        return images


PIXELS = Pixels()
