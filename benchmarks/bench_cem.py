"""CEM loop throughput against the model's pure forward throughput, at the same batch and input shape.

    python benchmarks/bench_cem.py [--size 64] [--batch 16] [--depth 17] [--features 64] [--device auto]
    python benchmarks/bench_cem.py --task sr --size 256 --depth 16 --features 64   # x4 EDSR on a 64 px LR input

Prints one JSON line per measurement and the ratio (CEM interventions/s divided by forward images/s) from one run.
The CEM side includes everything the engine does per sample: drawing patches, building interventions, the forward
pass, the ROI metric and the bookkeeping. The DnCNN defaults are the "DnCNN-sized" model of the engine issue.
``--task sr`` maps an x4 EDSR (``--size`` is the HR size) twice: with the patch bank downscaled once and kept on the
device (the engine's way), and with the drawn patches downscaled by Pillow on the CPU for every batch (the way
before), and prints both ratios.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from demo_setup import pure_forward_rate

from cemap import ROI, CausalEffectMap, Fixed
from cemap.data import center_crop, default_patch_bank, embedded_image
from cemap.engine import resolve_device
from cemap.locality import LocalitySettings
from cemap.models import DnCNN
from cemap.models.edsr import EDSR
from cemap.tasks import Denoise, SuperResolution
from cemap.tasks.base import Task


class PerBatchSR(SuperResolution):
    """SR interventions as they were before the bank was downscaled once: Pillow on the CPU for every batch."""

    intervene_drawn = Task.intervene_drawn  # the base class's: resize the drawn patches in every batch


def cem_rate(model: torch.nn.Module, task: Task, image: np.ndarray, args: argparse.Namespace,
             device: torch.device) -> tuple[float, int, float]:
    """Interventions per second of one map (after a warm-up map), its forwards and its seconds."""
    # locality off: the comparison is at the same input shape (the locality benchmark measures the crop's gain)
    cem = CausalEffectMap(model, task, device=device, batch_size=args.batch, locality=LocalitySettings(mode="off"))
    bank = default_patch_bank(8)
    cem.attribute(image, ROI(0, 0, 8), 8, Fixed(n_samples=1), patches=bank)  # warm-up: every block once
    start = time.perf_counter()
    roi = ROI(args.size // 2 - 8, args.size // 2 - 8, 16)
    result = cem.attribute(image, roi, 8, Fixed(n_samples=args.samples), patches=bank)
    seconds = time.perf_counter() - start
    return result.total_forwards / seconds, result.total_forwards, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["dn", "sr"], default="dn")
    parser.add_argument("--size", type=int, default=64, help="output (HR) size of the square image")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--depth", type=int, default=17)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4, help="interventions per block")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    image = center_crop(embedded_image("chelsea"), args.size)
    repeats = max(3, (args.size // 8) ** 2 * args.samples // args.batch)
    if args.task == "dn":
        model = DnCNN(features=args.features, depth=args.depth).to(device).eval()
        name, in_size, tasks = f"DnCNN-{args.depth}x{args.features}", args.size, {"": Denoise()}
    else:
        model = EDSR(scale=4, width=args.features, depth=args.depth).to(device).eval()
        name, in_size = f"EDSR-x4-{args.depth}x{args.features}", args.size // 4
        tasks = {" (bank downscaled once)": SuperResolution(4), " (Pillow per batch)": PerBatchSR(4)}
    fwd = pure_forward_rate(model, (in_size, in_size), args.batch, device, repeats)
    for label, task in tasks.items():
        rate, forwards, seconds = cem_rate(model, task, image, args, device)
        print(json.dumps({"device": str(device), "model": name, "input": [in_size, in_size], "batch": args.batch,
                          "forward_img_per_s": round(fwd, 2), "cem_interventions_per_s": round(rate, 2),
                          "forwards": forwards, "seconds": round(seconds, 2), "torch_threads": torch.get_num_threads(),
                          "interventions": label.strip(" ()") or "default"}))
        print(f"ratio CEM / pure forward{label} = {rate / fwd:.3f}")


if __name__ == "__main__":
    main()
