"""Restoration tasks: each degrades a clean image and intervenes on one block consistently with that degradation."""

from cemap.tasks.base import Degraded, Task, quantize_8bit
from cemap.tasks.denoise import Denoise

__all__ = ["Degraded", "Denoise", "Task", "quantize_8bit"]
