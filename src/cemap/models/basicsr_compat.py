"""The one place cemap imports basicsr.

basicsr 1.4.2 imports ``torchvision.transforms.functional_tensor``, which torchvision removed in 0.17; registering
that name as an alias of ``torchvision.transforms.functional`` before the import is enough for the architectures
used here. Importing ``basicsr`` loads all of its modules (about 3 s), so this module is imported lazily.
"""

from __future__ import annotations

import sys
import warnings


def _import_basicsr_archs():  # type: ignore[no-untyped-def]
    import torchvision.transforms.functional as tv_functional

    sys.modules.setdefault("torchvision.transforms.functional_tensor", tv_functional)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from basicsr.archs import swinir_arch

    return swinir_arch


swinir_arch = _import_basicsr_archs()

SwinIR = swinir_arch.SwinIR
Mlp = swinir_arch.Mlp
PatchEmbed = swinir_arch.PatchEmbed
PatchUnEmbed = swinir_arch.PatchUnEmbed
Upsample = swinir_arch.Upsample
window_partition = swinir_arch.window_partition
window_reverse = swinir_arch.window_reverse
to_2tuple = swinir_arch.to_2tuple

__all__ = ["Mlp", "PatchEmbed", "PatchUnEmbed", "SwinIR", "Upsample", "to_2tuple", "window_partition", "window_reverse"]
