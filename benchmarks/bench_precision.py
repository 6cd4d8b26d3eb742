"""How far reduced precision and ``torch.compile`` move effects against fp32, and what they buy, on the DnCNN demo.

    python benchmarks/bench_precision.py [--image demo_2] [--samples 4] [--modes fp32,bf16,fp16,compile] [--device auto]

Every mode computes the same ``fixed`` map (same draws, locality on) and is compared with fp32: largest and mean
absolute effect change, rank correlation, blocks whose significance flips, seconds. fp16 on the CPU is skipped (no
fast kernels). Prints one JSON line per mode. Needs ../shared/reference.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from demo_setup import DEMO_ROI, author_bank, demo_image, real_dncnn

from cemap import CausalEffectMap, Fixed
from cemap.decomposition import spearman
from cemap.engine import resolve_device
from cemap.tasks import Denoise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="demo_2")
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--modes", default="fp32,bf16,fp16,compile")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    clean, bank = demo_image(args.image), author_bank()
    baseline = None
    for mode in args.modes.split(","):
        if mode == "fp16" and device.type == "cpu":
            print(json.dumps({"mode": mode, "skipped": "fp16 autocast has no fast CPU kernels"}))
            continue
        precision = mode if mode in ("fp32", "bf16", "fp16") else "fp32"
        cem = CausalEffectMap(real_dncnn(), Denoise(), device=device, batch_size=args.batch, precision=precision,
                              compile=mode == "compile")
        if mode == "compile":  # compilation happens on the first batch: time it apart
            start = time.perf_counter()
            cem.attribute(clean, DEMO_ROI, 8, Fixed(n_samples=1), patches=bank, blocks=[0])
            compile_seconds = time.perf_counter() - start
        start = time.perf_counter()
        result = cem.attribute(clean, DEMO_ROI, 8, Fixed(n_samples=args.samples), patches=bank)
        seconds = time.perf_counter() - start
        row = {"mode": mode, "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
               "seconds": round(seconds, 2), "forwards": result.meta["forwards"], "origin_db": result.origin}
        if mode == "compile":
            row["compile_seconds"] = round(compile_seconds, 1)
        if baseline is None:
            baseline = result
        else:
            sampled = baseline.n > 0
            delta = np.abs(result.effects - baseline.effects)[sampled]
            row.update(max_abs_effect_change_db=float(delta.max()), mean_abs_effect_change_db=float(delta.mean()),
                       origin_change_db=result.origin - baseline.origin,
                       rank_correlation=spearman(result.effects[sampled], baseline.effects[sampled]),
                       significance_flips=int(np.sum(result.significant != baseline.significant)),
                       speedup_vs_fp32=round(float(baseline.meta["seconds"]) / seconds, 2))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
