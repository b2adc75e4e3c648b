"""A stand-in for the published ImageNet weights in tests (nothing may be downloaded): an efficientnet-pytorch
state dict saved under the file name efficientnet-pytorch's URL map gives, in `<torch_home>/hub/checkpoints/`."""
from __future__ import annotations
from pathlib import Path

import torch
from efficientnet_pytorch import EfficientNet
from efficientnet_pytorch.utils import url_map


def write_standin(torch_home: Path, backbone: str = "efficientnet-b0", seed: int = 1) -> Path:
    "Write the stand-in weights file into the torch hub cache under `torch_home`; returns its path."
    path = Path(torch_home) / "hub" / "checkpoints" / url_map[backbone].rsplit("/", 1)[-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    torch.save(EfficientNet.from_name(backbone).state_dict(), path)
    return path
