"""How one bench-profile map is laid out on the CPU: ROIs sharing forwards or run apart, contiguous or channels-last.

    python benchmarks/bench_map_layout.py [--models dncnn_bench rcan_dn_bench_no_ca rcan_dn_bench] [--threads 2]
    python benchmarks/bench_map_layout.py --models rcan_dn_bench --compile   # + the default layout compiled

One 128 px crop of coffee (rows 128-255, columns 0-127), the bench geometry's three 32 px ROIs on the diagonal,
16 px blocks, ``fixed`` with 8 draws, sigma 50, the shipped weights. For each model it times four layouts and prints
one JSON line each plus the speed-up of each layout over "shared, contiguous" (all from this run) and the largest
difference of any effect from that layout's map (0 means bit-identical). ``apart_share`` 0 forces the ROIs to share
their forwards; the default lets a local model run them apart when that is cheaper. ``--compile`` adds the default
layout with ``torch.compile`` (``cem.compile``; its compile time is inside its seconds, as a map run pays it).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import skimage.data
import torch

from cemap import ROI, CausalEffectMap, Fixed, zoo
from cemap import engine as engine_module
from cemap.tasks import Denoise

ROIS = [ROI(16, 16, 32), ROI(48, 48, 32), ROI(80, 80, 32)]


def one_map(name: str, channels_last: bool, apart_share: float,
            compile: bool = False) -> tuple[float, list, list[int]]:
    engine_module.APART_SHARE = apart_share
    image = skimage.data.coffee()[128:256, 0:128]
    cem = CausalEffectMap(zoo.load(name), Denoise(sigma=50.0), device="cpu", batch_size=32, channels_last=channels_last,
                          compile=compile)
    started = time.perf_counter()
    maps = cem.attribute(image, ROIS, 16, Fixed(n_samples=8), seed=0)
    return time.perf_counter() - started, maps, [m.meta["rois_sharing_forwards"] for m in maps]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dncnn_bench", "rcan_dn_bench_no_ca", "rcan_dn_bench"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time the default layout with torch.compile")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    default_share = engine_module.APART_SHARE
    for name in args.models:
        base_seconds, base_maps = None, None
        layouts = [(cl, share, False) for cl in (False, True) for share in (0.0, default_share)]
        for channels_last, share, compiled in layouts + ([(True, default_share, True)] if args.compile else []):
            seconds, maps, sharing = one_map(name, channels_last, share, compiled)
            if base_maps is None:
                base_seconds, base_maps = seconds, maps
            diff = max(float(np.nanmax(np.abs(a.effects - b.effects))) for a, b in zip(maps, base_maps))
            print(json.dumps({"model": name, "channels_last": channels_last, "apart_share": share, "compile": compiled,
                              "rois_sharing_forwards": sharing, "seconds": round(seconds, 2),
                              "speedup_vs_shared_contiguous": round(base_seconds / seconds, 2),
                              "max_effect_diff_db": diff}), flush=True)
    engine_module.APART_SHARE = default_share


if __name__ == "__main__":
    main()
