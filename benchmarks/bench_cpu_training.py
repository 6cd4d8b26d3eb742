"""Which CPU training precision pays on this machine: seconds per training step of one bench job in fp32, fp32
channels-last and bf16 autocast (channels-last), and each one's ratio to fp32, measured in one run.

    python benchmarks/bench_cpu_training.py                                # x4 rcan_bench, the zoo's batch
    python benchmarks/bench_cpu_training.py --model rcan_dn_bench --task denoise --schedule bench_same_cpu_bf16
    python benchmarks/bench_cpu_training.py --batch 8 --steps 2            # quicker (emulated bf16 is slow)

Why: bf16 autocast on the CPU is 1.8x faster than fp32 where the CPU has AVX512-BF16 and several times slower where
torch emulates it (AVX2 only); ``train_zoo.py train`` refuses bf16-on-CPU recipes there. One thread (the zoo trains
one job per core). Prints one JSON line per mode, then the CPU's native-bf16 flag and capability.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cemap.config import compose_config
from cemap.data import embedded_image
from cemap.train import cpu_has_native_bf16, tasks_of, training_state, training_step
from cemap.training import PatchSampler

NO_CHECKPOINT = Path("/nonexistent/cemap-bench/last.pth")  # every mode starts from the same seeded init
MODES = {"fp32": ("false", "false"), "fp32_channels_last": ("false", "true"), "bf16_channels_last": ("true", "true")}


def seconds_per_step(overrides: list[str], steps: int) -> float:
    """Mean wall seconds of ``steps`` training steps after one warm-up step, on the CPU."""
    cfg = compose_config("training", overrides)
    device = torch.device("cpu")
    model, _, ema, optimizer, _ = training_state(cfg, device, NO_CHECKPOINT)
    image = embedded_image("astronaut")
    sampler = PatchSampler([image], tasks_of(cfg), cfg.train.patch_size, cfg.train.batch_size, cfg.seed)
    training_step(model, model, ema, optimizer, sampler, cfg.train, 0, device, 0, 1)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        training_step(model, model, ema, optimizer, sampler, cfg.train, step, device, 0, 1)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="rcan_bench")
    parser.add_argument("--task", default="sr_x4")
    parser.add_argument("--schedule", default="bench_sr_cpu_bf16")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the schedule's)")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    base = [f"model={args.model}", f"task={args.task}", f"train={args.schedule}", "device=cpu", "train.amp=true"]
    if args.batch:
        base.append(f"train.batch_size={args.batch}")
    rates = {}
    for mode, (bf16, channels_last) in MODES.items():
        rates[mode] = seconds_per_step([*base, f"train.amp_on_cpu={bf16}", f"train.channels_last={channels_last}"],
                                       args.steps)
        print(json.dumps({"mode": mode, "s_per_step": round(rates[mode], 3),
                          "ratio_to_fp32": round(rates[mode] / rates["fp32"], 3)}), flush=True)
    print(json.dumps({"native_bf16": cpu_has_native_bf16(), "capability": torch.backends.cpu.get_cpu_capability(),
                      "model": args.model, "task": args.task, "steps": args.steps}))


if __name__ == "__main__":
    main()
