"""Exact locality acceleration on the real DnCNN demo geometry: forwards, per-forward cost and identical effects.

    python benchmarks/bench_locality.py [--image demo_2] [--samples 2] [--far 24] [--batch 16] [--device auto]

Runs the ``fixed`` estimator twice with the same draws: with locality (structural zeros + crop, every block) and on
the full image (every block the ROI can see plus ``--far`` blocks beyond the receptive field, to check that those are
exactly 0 there too). The full-image cost of *every* block is its forward count (blocks x samples + 1) times the
measured per-forward cost. Prints one JSON line and the ratios from this run. Needs ../shared/reference.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from demo_setup import (
    DEMO_ROI,
    author_bank,
    demo_image,
    max_abs_diff,
    pure_forward_rate,
    real_dncnn,
)

from cemap import CausalEffectMap, Fixed
from cemap.engine import resolve_device
from cemap.locality import LocalitySettings
from cemap.results import STATUS_STRUCTURAL_ZERO
from cemap.tasks import Denoise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="demo_2")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--far", type=int, default=24)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = resolve_device(args.device)
    model, clean, bank = real_dncnn(), demo_image(args.image), author_bank()
    estimator = Fixed(n_samples=args.samples)

    start = time.perf_counter()
    fast = CausalEffectMap(model, Denoise(), device=device, batch_size=args.batch).attribute(
        clean, DEMO_ROI, 8, estimator, patches=bank)
    fast_seconds = time.perf_counter() - start
    structural = fast.status == STATUS_STRUCTURAL_ZERO
    reachable = np.flatnonzero(~structural)
    far = np.flatnonzero(structural)[:: max(1, int(structural.sum()) // args.far)][: args.far]

    start = time.perf_counter()
    full = CausalEffectMap(model, Denoise(), device=device, batch_size=args.batch,
                           locality=LocalitySettings(mode="off")).attribute(
        clean, DEMO_ROI, 8, estimator, patches=bank, blocks=np.union1d(reachable, far))
    full_seconds = time.perf_counter() - start
    checked = np.zeros(fast.shape, dtype=bool)
    checked.ravel()[np.union1d(reachable, far)] = True

    window = fast.meta["locality"]["window"]
    crop_shape = (window[1] - window[0], window[3] - window[2])
    full_rate = pure_forward_rate(model, (256, 256), args.batch, device)
    crop_rate = pure_forward_rate(model, crop_shape, args.batch, device, repeats=8)
    n_blocks = fast.effects.size
    full_all_forwards = n_blocks * args.samples + 1
    report = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "image": args.image, "samples_per_block": args.samples, "blocks": n_blocks,
        "structural_zeros": int(structural.sum()), "crop": list(crop_shape),
        "forwards_locality": fast.meta["forwards"], "probe_forwards": fast.meta["locality"]["probe_forwards"],
        "forwards_full_image_every_block": full_all_forwards,
        "seconds_locality": round(fast_seconds, 2), "seconds_full_image_checked_blocks": round(full_seconds, 2),
        "full_image_blocks_checked": int(checked.sum()),
        "pure_forward_img_per_s_full": round(full_rate, 2), "pure_forward_img_per_s_crop": round(crop_rate, 2),
        "max_abs_diff_db": max_abs_diff(fast.effects, full.effects, checked),
        "far_blocks_nonzero_on_full_image": int(np.count_nonzero(full.effects.ravel()[far])),
    }
    print(json.dumps(report))
    full_all_seconds = full_all_forwards / full_rate
    print(f"forwards: full image every block / locality = {full_all_forwards / fast.meta['forwards']:.2f}")
    print(f"per-forward cost: full image / crop = {crop_rate / full_rate:.2f}")
    print(f"time: full image every block (forwards / pure forward rate, {full_all_seconds:.0f} s) / locality run "
          f"({fast_seconds:.1f} s) = {full_all_seconds / fast_seconds:.1f}")
    print(f"max |effect difference| over {int(checked.sum())} blocks = {report['max_abs_diff_db']:.3g} dB")


if __name__ == "__main__":
    main()
