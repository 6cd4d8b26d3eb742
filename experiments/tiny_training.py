"""Train every family's tiny preset with its tiny schedule and tabulate quality against the classical baseline.

    python experiments/tiny_training.py [--only dncnn_tiny,...] [--output-root outputs]

Prints each training command before running it, then writes ``results/training/tiny_table.csv`` and ``.md`` with
model, task, steps, minutes, PSNR, baseline PSNR, the gain, the issue's quality floor and whether it is met.
Trained models stay in the checkpoint cache (``<output-root>/models``), where the experiments reuse them.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "training"

FLOORS = {"denoise": 1.5, "sr_x4": 0.5, "derain": 3.0, "deblur": 1.0}
"""dB above the classical baseline the tiny preset must reach (issue: training, quality floors)."""

RUNS = [
    ("dncnn_tiny", "denoise", "tiny_dncnn"),
    ("restormer_tiny", "denoise", "tiny_restormer"),
    ("srcnn_tiny", "sr_x4", "tiny_srcnn"),
    ("fsrcnn_tiny", "sr_x4", "tiny_fsrcnn"),
    ("edsr_tiny", "sr_x4", "tiny_edsr"),
    ("srresnet_tiny", "sr_x4", "tiny_srresnet"),
    ("rcan_tiny", "sr_x4", "tiny_rcan"),
    ("swinir_tiny", "sr_x4", "tiny_swinir"),
    ("hat_tiny", "sr_x4", "tiny_hat"),
    ("srresnet_same_tiny", "derain", "tiny_srresnet_same"),
    ("srresnet_same_tiny", "deblur", "tiny_srresnet_same"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated model presets")
    parser.add_argument("--output-root", default=str(REPO / "outputs"))
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    rows = []
    for model, task, schedule in RUNS:
        if only and model not in only:
            continue
        cmd = [sys.executable, "-m", "cemap.train", f"model={model}", f"task={task}", f"train={schedule}",
               f"output_root={args.output_root}", "progress=false"]
        print("$", shlex.join(cmd[1:]), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(proc.returncode)
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        for ev in summary["eval"]:
            gain = ev["psnr"] - ev["baseline_psnr"]
            floor = FLOORS[task]
            rows.append({"model": model, "task": task, "steps": summary["steps"], "minutes": summary["minutes"],
                         "psnr": round(ev["psnr"], 2), "baseline": ev["baseline"],
                         "baseline_psnr": round(ev["baseline_psnr"], 2), "gain_db": round(gain, 2), "floor_db": floor,
                         "floor_met": gain >= floor, "ssim": round(ev["ssim"], 4), "key": summary["key"]})
            print(f"  {model:20s} {task:8s} {ev['psnr']:.2f} dB vs {ev['baseline']} {ev['baseline_psnr']:.2f} dB "
                  f"(+{gain:.2f}, floor {floor}) in {summary['minutes']} min", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    if only and (OUT / "tiny_table.csv").is_file():  # keep the other models' rows from the previous run
        with open(OUT / "tiny_table.csv") as fh:
            kept = [r for r in csv.DictReader(fh) if r["model"] not in only]
        for r in kept:
            r.update(gain_db=float(r["gain_db"]), floor_met=r["floor_met"] == "True")
        order = {(m, t): i for i, (m, t, _) in enumerate(RUNS)}
        rows = sorted(kept + rows, key=lambda r: order.get((r["model"], r["task"]), 99))
    with open(OUT / "tiny_table.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| model | task | steps | minutes | PSNR (dB) | baseline | baseline PSNR (dB) | gain | floor | met |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['task']} | {r['steps']} | {r['minutes']} | {r['psnr']} | {r['baseline']} | "
              f"{r['baseline_psnr']} | {r['gain_db']:+.2f} | {r['floor_db']} | {'yes' if r['floor_met'] else 'NO'} |"
              for r in rows]
    (OUT / "tiny_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
