"""Which torch device a stage runs on: cuda, else mps, else cpu, or the one params.yaml names."""

from __future__ import annotations

import torch

from imgrate.errors import ImgrateError


def pick_device(preference: str = "auto", local_rank: int = 0) -> torch.device:
    """cuda if available, else mps, else cpu; or the one asked for (which must exist)."""
    has_mps = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
    if preference == "auto":
        preference = "cuda" if torch.cuda.is_available() else "mps" if has_mps else "cpu"
    if preference == "cuda":
        if not torch.cuda.is_available():
            raise ImgrateError("device: cuda was asked for but torch sees no CUDA device")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if preference == "mps" and not has_mps:
        raise ImgrateError("device: mps was asked for but is not available")
    return torch.device(preference)
