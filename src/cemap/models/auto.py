"""``model=auto``: any checkpoint whose architecture spandrel recognises (HAT, NAFNet, SCUNet, DRUNet, SwinIR, ...).

The file is read by cemap's own safe loader (tensors only, never unpickled code) and only the resulting state dict is
handed to spandrel, which detects the architecture and its hyperparameters from the keys and shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cemap.checkpoint import CheckpointError, file_sha256, read_checkpoint
from cemap.models.base import ModelInfo, pad_to_multiple


class SpandrelModel(nn.Module):
    """A spandrel-built network behind cemap's model interface.

    The input is cloned before the call because some spandrel architectures (RCAN) modify it in place, and it is
    padded to the architecture's size multiple and cropped back.
    """

    def __init__(self, net: nn.Module, scale: int, multiple_of: int, architecture: str, checkpoint_sha256: str) -> None:
        super().__init__()
        self.net = net
        self.multiple_of = max(1, multiple_of)
        self.architecture = architecture
        self.checkpoint_sha256 = checkpoint_sha256
        self.info = ModelInfo(scale=scale, same_size=scale == 1, receptive_radius=None)

    @classmethod
    def from_checkpoint(cls, path: str | Path | None) -> SpandrelModel:
        if not path:
            raise CheckpointError("model=auto reads its architecture from a checkpoint: give ckpt=PATH")
        try:
            import spandrel
        except ImportError as exc:
            raise CheckpointError("model=auto needs spandrel: pip install 'cemap[auto]'") from exc
        state = read_checkpoint(path)
        try:
            descriptor = spandrel.ModelLoader().load_from_state_dict(state)
        except spandrel.UnsupportedModelError as exc:
            raise CheckpointError(f"spandrel does not recognise the architecture of {str(path)!r}") from exc
        if not isinstance(descriptor, spandrel.ImageModelDescriptor):
            raise CheckpointError(f"{str(path)!r} is a {type(descriptor).__name__}, not an image-to-image model")
        return cls(descriptor.model, descriptor.scale, descriptor.size_requirements.multiple_of,
                   descriptor.architecture.name, file_sha256(path))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, h, w = pad_to_multiple(x.clone(), self.multiple_of)
        return self.net(padded)[..., : h * self.info.scale, : w * self.info.scale]
