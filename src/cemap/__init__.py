"""cemap: Causal Effect Maps for low-level vision models (Hu et al., TPAMI 2025, arXiv 2407.19789)."""

__version__ = "0.1.0"

from cemap.engine import CausalEffectMap, resolve_device  # noqa: E402
from cemap.estimators import Adaptive, Fixed, Reference  # noqa: E402
from cemap.grid import ROI, BlockGrid  # noqa: E402
from cemap.patches import PatchBank  # noqa: E402
from cemap.results import CEMResult  # noqa: E402

__all__ = ["Adaptive", "ROI", "BlockGrid", "CEMResult", "CausalEffectMap", "Fixed", "PatchBank", "Reference", "resolve_device"]
