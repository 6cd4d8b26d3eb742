"""Adaptive sampling against ``fixed`` at equal worst-case standard error, on the real DnCNN demo.

    python benchmarks/bench_adaptive.py [--image demo_2] [--samples 32] [--n-min 8] [--device auto]

``fixed`` with ``--samples`` draws per block sets the worst-case SE (the largest SE over the map); ``adaptive`` then
samples each block only until its SE reaches that same value (cap 4 x samples). Both use locality, so only blocks the
ROI can see cost forwards. Prints one JSON line and the saving from this run. Needs ../shared/reference.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from demo_setup import DEMO_ROI, author_bank, demo_image, real_dncnn

from cemap import CausalEffectMap, Fixed
from cemap.engine import resolve_device
from cemap.estimators import Adaptive
from cemap.tasks import Denoise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="demo_2")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--n-min", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, clean, bank = real_dncnn(), demo_image(args.image), author_bank()
    cem = CausalEffectMap(model, Denoise(), device=device, batch_size=args.batch)
    start = time.perf_counter()
    fixed = cem.attribute(clean, DEMO_ROI, 8, Fixed(n_samples=args.samples), patches=bank)
    fixed_seconds = time.perf_counter() - start
    worst = float(np.nanmax(fixed.se))
    estimator = Adaptive(target_se=worst, n_min=args.n_min, n_max=4 * args.samples)
    start = time.perf_counter()
    adaptive = cem.attribute(clean, DEMO_ROI, 8, estimator, patches=bank)
    adaptive_seconds = time.perf_counter() - start
    sampled = fixed.n > 0
    gap = np.abs(adaptive.effects - fixed.effects)[sampled]
    bound = 3 * np.sqrt(np.nan_to_num(adaptive.se) ** 2 + np.nan_to_num(fixed.se) ** 2)[sampled]
    report = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "image": args.image, "blocks_sampled": int(sampled.sum()), "fixed_samples": args.samples,
        "target_se_db": worst, "forwards_fixed": fixed.meta["forwards"], "forwards_adaptive": adaptive.meta["forwards"],
        "worst_se_fixed": worst, "worst_se_adaptive": float(np.nanmax(adaptive.se)),
        "blocks_capped": int(np.sum(adaptive.n >= estimator.n_max)),
        "seconds_fixed": round(fixed_seconds, 2), "seconds_adaptive": round(adaptive_seconds, 2),
        "blocks_beyond_3se": int(np.sum(gap > bound)),
    }
    print(json.dumps(report))
    print(f"forwards fixed / adaptive = {report['forwards_fixed'] / report['forwards_adaptive']:.2f} at worst-case SE "
          f"{worst:.4f} dB (adaptive reached {report['worst_se_adaptive']:.4f})")


if __name__ == "__main__":
    main()
