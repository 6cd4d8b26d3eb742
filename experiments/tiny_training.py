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

EXTRA_RUNS = [
    ("srresnet_same_tiny", "derain", "tiny_srresnet_same"),
    ("srresnet_same_tiny", "deblur", "tiny_srresnet_same"),
]
"""Tasks that no family's own tiny preset covers (a same-size variant trained for them)."""


def family_runs() -> list[tuple[str, str, str]]:
    """(model preset, task, schedule) of every registered family (``cemap.models.MODELS``, controls aside): its
    ``<family>_tiny`` preset with its ``tiny_<family>`` schedule, on x4 SR if the preset upscales by 4, else
    denoising. A new family joins the table by being registered, with no list to edit here."""
    from hydra import compose, initialize_config_dir

    from cemap.config import CONF_DIR, register_configs
    from cemap.models import CONTROL_FAMILIES, MODELS, build_model, model_info

    register_configs()
    runs = []
    with initialize_config_dir(config_dir=str(CONF_DIR / "model"), version_base="1.3"):
        for family in MODELS:
            if family in CONTROL_FAMILIES:
                continue
            model, _ = build_model(compose(f"{family}_tiny"))
            task = "sr_x4" if model_info(model).scale == 4 else "denoise"
            runs.append((f"{family}_tiny", task, f"tiny_{family}"))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help="comma-separated model presets")
    parser.add_argument("--output-root", default=str(REPO / "outputs"))
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    rows = []
    runs = family_runs() + EXTRA_RUNS
    for model, task, schedule in runs:
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
        order = {(m, t): i for i, (m, t, _) in enumerate(runs)}
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
