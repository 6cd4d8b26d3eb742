"""Bench zoo sizes: per bench model, CPU forward throughput at the map geometry and the cost of one causal effect map.

    python benchmarks/bench_zoo.py                       # every bench preset: forwards/s, map forwards and estimate
    python benchmarks/bench_zoo.py --maps dncnn_bench rcan_dn_bench   # also time real maps of these presets

Geometry of the issue: a 128 px (HR) image, 8 px blocks, fixed estimator with 8 draws, 32 px ROI at the centre,
locality acceleration on (local models only pay for the blocks they can see, on a crop). The map estimate is
forwards / throughput (a global model's forwards are all full-image); ``--maps`` measures the real thing. Weights do
not change speed, so untrained presets are timed (the shipped ones where they exist).
"""

from __future__ import annotations

import argparse
import time

import torch
from demo_setup import pure_forward_rate

from cemap import ROI, CausalEffectMap, Fixed
from cemap.config import compose_config
from cemap.data import center_crop, default_patch_bank, embedded_image
from cemap.imageio import to_tensor
from cemap.models import build_model
from cemap.zoo.manifest import load_manifest
from cemap.zoo.quality import task_of

SIZE, BLOCK, DRAWS, ROI_SIZE = 128, 8, 8, 32


def preset(name: str) -> torch.nn.Module:
    return build_model(compose_config("run", [f"model={name}"]).model)[0].eval()


def timed_map(model: torch.nn.Module, task_name: str) -> tuple[int, float]:
    task = task_of(task_name)
    clean = to_tensor(center_crop(embedded_image("chelsea"), SIZE, multiple=4))
    cem = CausalEffectMap(model, task, device="cpu", batch_size=16)
    start = time.perf_counter()
    c = (SIZE - ROI_SIZE) // 2
    result = cem.attribute(clean, ROI(c, c, ROI_SIZE), block_size=BLOCK, estimator=Fixed(n_samples=DRAWS),
                           patches=default_patch_bank(BLOCK))
    return result.total_forwards, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--maps", nargs="*", default=[], help="bench presets whose map is timed for real")
    ap.add_argument("--only", nargs="*", default=[], help="bench presets to time (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seen: dict[str, str] = {}
    for job in load_manifest().jobs:
        if not args.only or job.model in args.only:
            seen.setdefault(job.model, job.tasks[0])
    print(f"CPU, {args.threads} threads; {SIZE} px image, {BLOCK} px blocks, fixed estimator x {DRAWS} draws")
    print("| model | params | radius | input px | forwards/s | blocks x draws | estimated map (s) | measured map |")
    print("|---|---|---|---|---|---|---|---|")
    for name, task_name in seen.items():
        model = preset(name)
        scale = model.info.scale
        side = SIZE // scale
        rate = pure_forward_rate(model, (side, side), 16, torch.device("cpu"), repeats=2)
        blocks = (side * scale // BLOCK) ** 2
        radius = "global" if model.info.receptive_radius is None else f"{model.info.receptive_radius} px"
        measured = ""
        if name in args.maps:
            forwards, seconds = timed_map(model, task_name)
            measured = f"{seconds:.0f} s ({forwards} forwards)"
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params / 1e3:.0f}k | {radius} | {side} | {rate:.1f} | {blocks} x {DRAWS} | "
              f"{blocks * DRAWS / rate:.0f} | {measured} |", flush=True)


if __name__ == "__main__":
    main()
