"""What every model in the zoo declares about itself, so the engine and experiments need no per-model branches."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelInfo:
    """``scale``: output / input size. ``receptive_radius``: pixels of input a single output pixel can see on each
    side (None for global models: attention over the whole image, global pooling)."""

    scale: int = 1
    same_size: bool = True
    receptive_radius: int | None = None

    @property
    def is_local(self) -> bool:
        return self.receptive_radius is not None

    @property
    def receptive_field(self) -> int | None:
        """Side of the square receptive field in input pixels (41 for the 20-layer DnCNN)."""
        return None if self.receptive_radius is None else 2 * self.receptive_radius + 1
