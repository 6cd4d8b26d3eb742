"""Run one of the paper's insights end to end: train what is missing, sweep the maps, analyse, report.

    python experiments/runner.py dn_channel_attention                 # PROFILE=tiny: CPU, embedded data
    python experiments/runner.py dn_channel_attention --profile paper --images-dir DIR   # CKPT_DIR=... on a GPU
    python experiments/runner.py dn_channel_attention --smoke --output-root /tmp/x --results-dir /tmp/x/results

Every step is a visible command (printed with a leading ``$``): ``python -m cemap.train`` for each model not yet in
the training cache, ``python -m cemap.run -m experiment=<name>`` for the sweep (jobs that already finished are
answered from the map cache), then the analysis, which writes ``results/<name>/`` (summary.csv, summary.md,
verdict.json, figures, report.html) and prints the verdict table.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from cemap.analysis import load_sweep, write_report
from cemap.config import compose_config, training_overrides
from cemap.train import FINAL, run_dir

REPO = Path(__file__).resolve().parents[1]


def sh(cmd: list[str]) -> None:
    """Print and run a command, streaming its output; stop the runner if it fails."""
    print("$", shlex.join(["python", *cmd[1:]] if cmd[0] == sys.executable else cmd), flush=True)
    code = subprocess.call(cmd, cwd=REPO)
    if code:
        raise SystemExit(f"command failed with exit code {code}")


def base_overrides(args: argparse.Namespace, subjects: list[str] | None = None) -> list[str]:
    out = [f"experiment={args.experiment}", f"output_root={args.output_root}", f"profile={args.profile}"]
    if args.smoke:
        out.append("debug=smoke")
    if args.profile == "paper":
        out += ["experiment.subjects=${experiment.paper.subjects}", "crop=${experiment.paper.crop}",
                "rois=${experiment.paper.rois}", "cem.estimator=${experiment.paper.estimator}",
                "cem.n_samples=${experiment.paper.n_samples}"]
        if args.images:
            out.append("experiment.images=[" + ",".join(args.images) + "]")
    if subjects is not None:
        out.append("experiment.subjects=[" + ",".join(subjects) + "]")
    return out


def experiment_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return compose_config("run", base_overrides(args), with_choices=True)


def available(args: argparse.Namespace, subjects: list[str]) -> list[str]:
    """The subjects whose required inputs exist (e.g. the authors' DIV2K pool only where ../shared is present)."""
    keep = []
    for subject in subjects:
        cfg = compose_config("run", [*base_overrides(args), f"subject={subject}"], with_choices=True)
        needs = cfg.subject.get("requires") if cfg.subject else None
        if needs and not (REPO / str(needs)).exists() and not Path(str(needs)).exists():
            print(f"  {subject}: skipped, {needs} not found", flush=True)
            continue
        keep.append(subject)
    return keep


def train_missing(args: argparse.Namespace, subjects: list[str]) -> None:
    for subject in subjects:
        cfg = compose_config("run", [*base_overrides(args), f"subject={subject}"], with_choices=True)
        if not cfg.trained.schedule or cfg.ckpt:
            continue
        overrides = training_overrides(cfg._choices["model"], cfg._choices["task"], cfg.trained, args.output_root)
        if (run_dir(compose_config("training", overrides)) / FINAL).is_file():
            print(f"  {subject}: trained model found in the cache", flush=True)
            continue
        sh([sys.executable, "-m", "cemap.train", *overrides, "progress=false"])


def sweep(args: argparse.Namespace, subjects: list[str]) -> None:
    cmd = [sys.executable, "-m", "cemap.run", "-m", *base_overrides(args, subjects), f"logger={args.logger}"]
    if args.jobs > 1:
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"]
    sh(cmd)


def analyse(args: argparse.Namespace, cfg, subjects: list[str]) -> dict:  # type: ignore[no-untyped-def]
    experiment = OmegaConf.to_container(cfg.experiment, resolve=True)
    assert isinstance(experiment, dict)
    experiment["subjects"] = subjects
    sweep_dir = Path(args.output_root) / "experiments" / (experiment["name"] + ("-smoke" if args.smoke else ""))
    wanted_images = {Path(i.split("embedded:")[-1]).stem for i in experiment["images"]}
    records = [r for r in load_sweep(sweep_dir) if r.subject in experiment["subjects"] and r.image in wanted_images]
    if not records:
        raise SystemExit(f"no maps found under {sweep_dir}; run the sweep first")
    out = Path(args.results_dir or REPO / "results" / experiment["name"])
    verdict = write_report(out, experiment, records)
    print(f"\n{experiment['name']}: {verdict['verdict']}  ({verdict['maps']} maps)")
    for t in [*verdict["tests"], *verdict["contrasts"]]:
        print(f"  {t['verdict']:14s} {t['name']}: {t['statistic']} of {t['what']} = {t['mean']:.4g} "
              f"[{t['low']:.4g}, {t['high']:.4g}] (n={t['n']}), threshold {t['threshold']}")
    print(f"report: {out / 'report.html'}\nsummary: {out / 'summary.md'}")
    if args.logger == "wandb":
        log_summary_run(experiment, verdict, out)
    return verdict


def log_summary_run(experiment: dict, verdict: dict, out: Path) -> None:
    """One W&B run per analysis: the verdict table and the report's figures (offline unless WANDB_MODE=online)."""
    import wandb

    os.environ.setdefault("WANDB_MODE", "offline")
    run = wandb.init(project="cemap", group=experiment["name"], name=f"{experiment['name']}-summary",
                     dir=str(out), tags=["summary"], config={"expected": experiment["expected"]}, reinit=True)
    columns = ["name", "statistic", "what", "mean", "low", "high", "n", "threshold", "verdict"]
    rows = [[t[c] for c in columns] for t in [*verdict["tests"], *verdict["contrasts"]]]
    run.log({"verdicts": wandb.Table(columns=columns, data=rows),
             **{name: wandb.Image(str(out / name)) for name in ("map_grid.png", "effect_vs_distance.png", "sign_shares.png")}})
    run.summary["verdict"] = verdict["verdict"]
    run.finish()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment")
    parser.add_argument("--profile", choices=["tiny", "paper"], default=os.environ.get("PROFILE", "tiny"))
    parser.add_argument("--smoke", action="store_true", help="debug=smoke: a few steps and tiny images (tests)")
    parser.add_argument("--stage", choices=["all", "train", "maps", "analyse"], default="all")
    parser.add_argument("--jobs", type=int, default=1, help="parallel sweep jobs (joblib launcher)")
    parser.add_argument("--logger", choices=["none", "wandb"], default="none")
    parser.add_argument("--output-root", default=str(REPO / "outputs"))
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--images", nargs="*", default=None, help="image paths (paper profile)")
    args = parser.parse_args()
    started = time.perf_counter()
    cfg = experiment_config(args)
    subjects = available(args, list(cfg.experiment.subjects))
    if args.stage in ("all", "train"):
        train_missing(args, subjects)
    if args.stage in ("all", "maps"):
        sweep(args, subjects)
    if args.stage in ("all", "analyse"):
        analyse(args, cfg, subjects)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
