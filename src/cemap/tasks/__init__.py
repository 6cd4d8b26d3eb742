"""Restoration tasks: each degrades a clean image and intervenes on one block consistently with that degradation.

| task | module | how an intervention stays consistent with the degradation |
|---|---|---|
| ``Denoise`` | denoise.py | the patch gets fresh noise of the same sigma, quantised the same way |
| ``SuperResolution`` | sr.py | the patch is downscaled with the same bicubic kernel into the LR block |
| ``UpsampledSR`` | sr.py | as SR in the LR domain, then upsampled to HR size like the mix models' input |
| ``Derain`` | derain.py | the patch goes into the clean image and the same rain layer is added again |
| ``Deblur`` | deblur.py | the patch goes into the clean image; the same kernel and noise are applied again |
"""

from cemap.tasks.base import Degraded, Task, quantize_8bit
from cemap.tasks.deblur import Deblur
from cemap.tasks.denoise import Denoise
from cemap.tasks.derain import Derain
from cemap.tasks.sr import SuperResolution, UpsampledSR

__all__ = ["Deblur", "Degraded", "Denoise", "Derain", "SuperResolution", "Task", "UpsampledSR", "quantize_8bit"]
