"""CEM loop throughput against the model's pure forward throughput, at the same batch and input shape.

    python benchmarks/bench_cem.py [--size 64] [--batch 16] [--depth 17] [--features 64] [--device auto]

Prints one JSON line per measurement and the ratio (CEM interventions/s divided by forward images/s) from one run.
The CEM side includes everything the engine does per sample: drawing patches, building interventions, the forward
pass, the ROI metric and the bookkeeping. The DnCNN defaults are the "DnCNN-sized" model of the engine issue.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from demo_setup import pure_forward_rate

from cemap import ROI, CausalEffectMap, Fixed
from cemap.data import center_crop, default_patch_bank, embedded_image
from cemap.engine import resolve_device
from cemap.locality import LocalitySettings
from cemap.models import DnCNN
from cemap.tasks import Denoise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--depth", type=int, default=17)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="interventions per block")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = DnCNN(features=args.features, depth=args.depth).to(device).eval()
    image = center_crop(embedded_image("chelsea"), args.size)
    bank = default_patch_bank(8)
    n_blocks = (args.size // 8) ** 2
    total = n_blocks * args.samples
    repeats = max(3, total // args.batch)

    fwd = pure_forward_rate(model, (args.size, args.size), args.batch, device, repeats)

    # locality off: the comparison is at the same input shape (the locality benchmark measures the crop's gain)
    cem = CausalEffectMap(model, Denoise(), device=device, batch_size=args.batch, locality=LocalitySettings(mode="off"))
    cem.attribute(image, ROI(0, 0, 8), 8, Fixed(n_samples=1), patches=bank, blocks=range(args.batch))  # warm-up
    start = time.perf_counter()
    result = cem.attribute(image, ROI(args.size // 2 - 8, args.size // 2 - 8, 16), 8, Fixed(n_samples=args.samples), patches=bank)
    seconds = time.perf_counter() - start
    cem_rate = (result.total_forwards) / seconds
    print(json.dumps({"device": str(device), "model": f"DnCNN-{args.depth}x{args.features}", "input": [args.size, args.size],
                      "batch": args.batch, "forward_img_per_s": round(fwd, 2), "cem_interventions_per_s": round(cem_rate, 2),
                      "forwards": result.total_forwards, "seconds": round(seconds, 2), "torch_threads": torch.get_num_threads()}))
    print(f"ratio CEM / pure forward = {cem_rate / fwd:.3f}")


if __name__ == "__main__":
    main()
