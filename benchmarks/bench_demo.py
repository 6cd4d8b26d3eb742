"""The paper's denoising demo, end to end: the issue's GPU target (<= 4 s on an H100 against the authors' 67 s).

    python benchmarks/bench_demo.py [--estimator fixed] [--samples 50] [--device auto] [--batch 0]

Both demo images (demo_2, demo_3), the real DnCNN, ROI 32 at x=96 y=152, 8 px blocks, the authors' DIV2K patches,
fp32 with TF32 off. ``fixed`` samples every block the ROI can see ``--samples`` times (the others are structural
zeros); ``reference`` runs the paper's coarse-to-fine rule. Batch 0 = automatic. Times include everything after the
model is loaded (degradation, locality probe, interventions, forwards, metric). Needs ../shared/reference.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from demo_setup import DEMO_ROI, author_bank, demo_image, real_dncnn

from cemap import CausalEffectMap
from cemap.engine import resolve_device
from cemap.estimators import make_estimator
from cemap.tasks import Denoise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--estimator", default="fixed", choices=["fixed", "reference"])
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--batch", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, bank = real_dncnn(), author_bank()
    images = {name: demo_image(name) for name in ("demo_2", "demo_3")}
    cem = CausalEffectMap(model, Denoise(), device=device, batch_size=args.batch)
    cem.attribute(images["demo_2"], DEMO_ROI, 8, make_estimator("fixed", n_samples=1), patches=bank, blocks=[0])  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    rows = []
    for name, clean in images.items():
        result = cem.attribute(clean, DEMO_ROI, 8, make_estimator(args.estimator, n_samples=args.samples), patches=bank)
        rows.append({"image": name, "origin_db": round(result.origin, 4), "forwards": result.meta["forwards"],
                     "seconds": result.meta["seconds"], "structural_zeros": result.meta["locality"]["n_structural_zero"]})
    if device.type == "cuda":
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"
    print(json.dumps({"device": card, "estimator": args.estimator, "samples": args.samples, "batch": cem.batch_size,
                      "images": rows, "total_seconds": round(total, 2),
                      "forwards": sum(r["forwards"] for r in rows)}))
    print(f"demo (2 images) in {total:.2f} s on {card}; the authors' code: 67 s on an H100")


if __name__ == "__main__":
    main()
