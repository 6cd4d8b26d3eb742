"""Train the bench zoo (``conf/zoo/bench.yaml``), ship it, or check a retraining against what ships.

    python experiments/train_zoo.py train                  # every job, committed steps, several at once
    python experiments/train_zoo.py train --calibrate 60 --budget-minutes 7 --device cuda --pack OUT
                                                           # GPU: measure each job's throughput with all jobs running,
                                                           # choose steps to fit the budget, train, pack the weights
    python experiments/train_zoo.py ship --from DIR        # CPU: evaluate exported weights against their floors,
                                                           # ship those that meet them, write results/zoo tables
    python experiments/train_zoo.py compare                # retrained (train's output) against the shipped records
    python experiments/train_zoo.py contrast --from DIR A B  # full-image PSNR of A - B paired over every trained
                                                           # seed and test image (shipped or not: no floor bias)
    python experiments/train_zoo.py stage KEY --from DIR --dest SCRATCH  # the package zoo + a model that missed
                                                           # its floor, for a labelled exploratory run
                                                           # (CEMAP_ZOO_DIR=SCRATCH python experiments/runner.py ...)
    python experiments/train_zoo.py train --device cuda --slice-minutes 7 --resume-from STATE --pack OUT
                                                           # GPU lease after lease: committed steps, train for the
                                                           # slice, pack finished weights and the unfinished jobs'
                                                           # last.pth; the next lease resumes from the unpacked STATE

``make train-zoo`` runs ``train`` then ``compare``. Training goes through ``python -m cemap.train`` (one process per
job, resumable, cached by config hash), so a killed run continues where it stopped.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from cemap import results
from cemap.config import compose_config
from cemap.train import BF16_CPU_FLAGS, EVAL, FINAL, LAST, METRICS, cpu_has_native_bf16, run_dir, training_key
from cemap.zoo import TRAINING_RUNS, WEIGHTS_DIR
from cemap.zoo.contrast import METRICS as CONTRAST_METRICS
from cemap.zoo.export import export_weights
from cemap.zoo.manifest import MANIFEST, Job, Manifest, load_manifest

REPO = Path(__file__).resolve().parents[1]
LEASES = "leases.json"
"""Per job, every time slice that trained it: machine, steps from and to, minutes (``<key>.leases.json``)."""
MIN_USEFUL_STEPS = 700
"""Fewest steps whose EMA (decay 0.99, the bench schedules') forgets the random init below 0.1%."""


def job_dir(job: Job, root: Path, steps: int | None = None) -> Path:
    """The training cache folder of ``job`` (what ``python -m cemap.train`` writes into)."""
    return run_dir(compose_config("training", job.train_overrides(root, steps=steps)))


def launch(job: Job, root: Path, device: str, steps: int | None, log_dir: Path,
           extra: tuple[str, ...] = ()) -> subprocess.Popen:
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "cemap.train", *job.train_overrides(root, device, steps), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    out = open(log_dir / f"{job.key}.log", "ab")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def step_rate(metrics: Path) -> float:
    """Training steps per second over the second half of a run's ``metrics.csv`` (after start-up)."""
    rows = [r for r in csv.DictReader(open(metrics)) if r["kind"] == "train"] if metrics.is_file() else []
    if len(rows) < 4:
        return 0.0
    a, b = rows[len(rows) // 2], rows[-1]
    dt = float(b["seconds"]) - float(a["seconds"])
    return (int(b["step"]) - int(a["step"])) / dt if dt > 0 else 0.0


def calibrate(jobs: list[Job], root: Path, device: str, seconds: float) -> dict[str, float]:
    """Every job's step rate with all jobs training at once, as they will in the real run."""
    probe_root = root / "calibration"
    big = 10**7
    procs = {j.key: launch(j, probe_root, device, big, root / "logs" / "calibration") for j in jobs}
    metrics = {j.key: job_dir(j, probe_root, big) / METRICS for j in jobs}
    started = time.time()
    while time.time() - started < 2 * seconds:  # start-up of many processes at once can be slow: wait for steps
        time.sleep(2.0)
        running = [k for k, p in procs.items() if p.poll() is None]
        if time.time() - started >= seconds and all(step_rate(metrics[k]) > 0 for k in running):
            break
    for p in procs.values():
        stop(p)
    return {k: step_rate(m) for k, m in metrics.items()}


def emulated_bf16_jobs(jobs: list[Job], device: str) -> list[str]:
    """Keys of the jobs whose recipe trains in bf16 on the CPU (``train.amp_on_cpu``) when ``device`` is this CPU and
    it has no native bf16: torch emulates it there, 7.4x slower than fp32 for x4 rcan_bench (results/zoo/cpu_runs.md)."""
    on_cpu = device.startswith("cpu") or (device == "auto" and not torch.cuda.is_available())
    if not on_cpu or cpu_has_native_bf16() is not False:
        return []
    return [j.key for j in jobs
            if (s := compose_config("training", j.train_overrides("unused", steps=1)).train).amp and s.amp_on_cpu]


def choose_steps(rates: dict[str, float], budget_s: float, safety: float = 0.8) -> dict[str, int]:
    """Steps that fit ``budget_s`` at the measured rate (rounded down to 100, at least 200)."""
    return {k: max(200, int(r * budget_s * safety) // 100 * 100) for k, r in rates.items()}


def train_all(plan: list[tuple[str, Job, Path]], device: str, steps: dict[str, int], parallel: int,
              deadline: float | None, extra: tuple[str, ...] = ()) -> dict[str, dict]:
    """Train every (label, job, output root) of ``plan`` with at most ``parallel`` processes; returns per-label status
    (finished or not, where, steps done). A label differs from the job's key for a repeated job (``.repro``)."""
    pending, running, done = list(plan), {}, {}
    while pending or running:
        while pending and len(running) < parallel:
            label, j, root = pending.pop(0)
            start = resume_step(job_dir(j, root, steps[j.key]))
            running[label] = (j, root, launch(j, root, device, steps[j.key], root / "logs", extra), time.time(), start)
        time.sleep(1.0)
        for label, (j, root, p, t0, start) in list(running.items()):
            late = deadline is not None and time.time() > deadline
            if p.poll() is None and not late:
                continue
            stop(p)
            done[label] = job_status(j, root, steps[j.key], p.returncode, start, t0)
            print(f"{label}: {'done' if done[label]['finished'] else 'NOT finished'} at step "
                  f"{done[label]['steps_done']} ({done[label]['wall_minutes']} min)", flush=True)
            del running[label]
    return done


def resume_step(directory: Path) -> int:
    """The step a job's training starts from: that of its ``last.pth`` (carried from an earlier lease), else 0."""
    last = directory / LAST
    return int(torch.load(last, map_location="cpu", weights_only=True)["iter"]) if last.is_file() else 0


def job_status(job: Job, root: Path, steps: int, returncode: int | None, start: int, t0: float) -> dict:
    final = job_dir(job, root, steps) / FINAL
    rows = list(csv.DictReader(open(final.parent / METRICS))) if (final.parent / METRICS).is_file() else []
    return {"finished": final.is_file(), "dir": str(final.parent), "steps": steps, "started_at": start,
            "steps_done": int(rows[-1]["step"]) if rows else start,
            "wall_minutes": round((time.time() - t0) / 60, 2), "returncode": returncode,
            "log": str(root / "logs" / f"{job.key}.log")}


def resume_from(jobs: list[Job], steps: dict[str, int], root: Path, state: Path) -> None:
    """Put every carried ``<key>.last.pth`` (with the metrics and leases so far) where its job resumes; a checkpoint
    of other settings (another step count, schedule, data) is refused rather than silently continued."""
    for j in jobs:
        carried = state / f"{j.key}.last.pth"
        d = job_dir(j, root, steps[j.key])
        if not carried.is_file() or (d / FINAL).is_file() or (d / LAST).is_file():
            continue
        config = torch.load(carried, map_location="cpu", weights_only=True)["config"]
        if not d.name.endswith(training_key(OmegaConf.create(config))):
            sys.exit(f"{carried}: trained with other settings than {j.key} at {steps[j.key]} steps; not resumed")
        d.mkdir(parents=True, exist_ok=True)
        for name, dest in ((f"{j.key}.last.pth", LAST), (f"{j.key}.{METRICS}", METRICS), (f"{j.key}.{LEASES}", LEASES)):
            if (state / name).is_file():
                results.atomic_write_bytes(d / dest, (state / name).read_bytes())
        print(f"{j.key}: resumes from step {resume_step(d)} ({carried})", flush=True)


def cpu_model() -> str:
    """The processor's name (``/proc/cpuinfo``'s model name where there is one)."""
    import platform

    info = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
             if line.startswith("model name")] if info.is_file() else []
    return (names[0] if names else platform.processor()) or "unknown"


def device_name(device: str) -> str:
    """The machine a training ran on, as provenance records it. On the CPU it names the processor and the instruction
    set torch's kernels use (AVX2, AVX512, ...): the same seed on another instruction set rounds differently, and a
    long training can end elsewhere (results/zoo/retrain_table.md), so "the same device" must be checkable."""
    import torch

    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name(0)
    return (f"CPU ({cpu_model()}, {torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, "
            f"{os.environ.get('OMP_NUM_THREADS', '1')} thread(s) per job)")


def export_all(runs: dict[str, dict], dest: Path) -> None:
    """Into ``dest``: the shipped-format weights (+ eval.json, metrics.csv, config, leases) of every finished job; the
    ``last.pth`` (+ metrics, leases) of every job stopped on the way, for the next lease to resume; logs of failures.
    The runs file keeps the records of other runs that export into the same folder."""
    dest.mkdir(parents=True, exist_ok=True)
    for key, info in runs.items():
        d = Path(info["dir"])
        record_lease(d, info)
        names: tuple[str, ...] = ()
        if info["finished"]:
            info["sha256"] = export_weights(d / FINAL, dest / f"{key}.safetensors")
            names = (EVAL, METRICS, "config.yaml", LEASES)
        elif (d / LAST).is_file():
            names = (LAST, METRICS, LEASES)
        for name in names:
            if (d / name).is_file():
                results.atomic_write_bytes(dest / f"{key}.{name}", (d / name).read_bytes())
        log = Path(info["log"])
        if not info["finished"] and log.is_file():
            results.atomic_write_bytes(dest / f"{key}.log", log.read_bytes()[-20000:])
    results.merge_json_records(dest / TRAINING_RUNS, runs)


def record_lease(directory: Path, info: dict) -> None:
    """Append this run (machine, steps from and to, minutes) to the job's lease history, carried between leases."""
    if not directory.is_dir():
        return
    path = directory / LEASES
    history = json.loads(path.read_text()) if path.is_file() else []
    history.append({"machine": info.get("machine", "unknown"), "from_step": info["started_at"],
                    "to_step": info["steps_done"], "minutes": info["wall_minutes"]})
    results.atomic_write_json(path, history)


def pack(src: Path, out: Path, limit: int = 15 * 2**20) -> None:
    """Tar ``src`` into ``out/zoo_<i>.tar`` parts of at most ``limit`` bytes (the device returns files <= 16 MiB)."""
    out.mkdir(parents=True, exist_ok=True)
    part, size, tar = 0, 0, None
    for f in sorted(src.iterdir()):
        n = f.stat().st_size
        if tar is None or size + n > limit:
            if tar:
                tar.close()
            part, size = part + 1, 0
            tar = tarfile.open(out / f"zoo_{part}.tar", "w")
        tar.add(f, arcname=f.name)
        size += n + 1024
    if tar:
        tar.close()


def calibrated_steps(jobs: list[Job], root: Path, args: argparse.Namespace, started: float,
                     manifest: Manifest) -> dict[str, int]:
    """Steps per job that fit what is left of the budget at the rates measured with all jobs running; jobs that
    made no step (crashed, never started) are reported and left out."""
    rates = calibrate(jobs, root, args.device, args.calibrate)
    for key in [k for k, r in rates.items() if r <= 0]:
        log = root / "logs" / "calibration" / f"{key}.log"
        print(f"{key}: no training steps while calibrating; log tail:", flush=True)
        print("\n".join(log.read_text(errors="replace").splitlines()[-6:]) if log.is_file() else "(no log)")
    rates = {k: r for k, r in rates.items() if r > 0}
    remaining = args.budget_minutes * 60 - (time.time() - started)
    steps = manifest.equalise(choose_steps(rates, remaining))
    for key in [k for k, n in steps.items() if n < MIN_USEFUL_STEPS]:
        print(f"{key}: only {steps[key]} steps fit; below {MIN_USEFUL_STEPS} the EMA still holds >0.1% of the init "
              "at ema_decay 0.99 and the zoo will refuse it (train fewer jobs per lease: --group)", flush=True)
    results.atomic_write_json(root / "calibration.json", {"rates": rates, "steps": steps, "budget_s": remaining})
    print(json.dumps({"rates": rates, "steps": steps}), flush=True)
    return steps


def manifest_steps(jobs: list[Job], override: int | None) -> dict[str, int]:
    """The committed steps of each job (``override`` for smoke runs); jobs without any are reported and left out."""
    steps = {j.key: override or j.steps for j in jobs}
    for key in [k for k, n in steps.items() if n is None]:
        print(f"{key}: skipped, no steps in the manifest yet (its first training calibrates them: --calibrate)")
    return {k: n for k, n in steps.items() if n is not None}


def cmd_train(args: argparse.Namespace) -> None:
    manifest = load_manifest(args.manifest)
    jobs = manifest.select(args.only, args.group)
    slow = [] if args.allow_emulated_bf16 else emulated_bf16_jobs(jobs, args.device)
    if slow:
        sys.exit(f"{', '.join(slow)}: bf16 recipes (train.amp_on_cpu), but this CPU has no "
                 f"{' or '.join(BF16_CPU_FLAGS)} and torch would emulate bf16, several times slower than fp32; train "
                 "them on a CPU that has it or a GPU (or pass --allow-emulated-bf16)")
    root = Path(args.output_root)
    started = time.time()
    steps = calibrated_steps(jobs, root, args, started, manifest) if args.calibrate else manifest_steps(jobs, args.steps)
    jobs = [j for j in jobs if j.key in steps]
    if args.resume_from:
        resume_from(jobs, steps, root, Path(args.resume_from))
    minutes = args.slice_minutes or (args.budget_minutes if args.calibrate else None)
    deadline = started + (minutes + args.grace_minutes) * 60 if minutes else None
    extra = (f"max_minutes_this_run={args.slice_minutes}",) if args.slice_minutes else ()
    plan = [(j.key, j, root) for j in jobs]
    plan += [(f"{j.key}.repro", j, root / "repro") for j in jobs if j.key in args.repro]
    runs = train_all(plan, args.device, steps, args.parallel or len(plan), deadline, extra)
    machine = device_name(args.device)
    for info in runs.values():
        info["machine"] = machine
    export_all(runs, root / "export")
    if args.pack:
        if (root / "calibration.json").is_file():
            results.atomic_write_bytes(root / "export" / "calibration.json", (root / "calibration.json").read_bytes())
        pack(root / "export", Path(args.pack))
    print(f"trained {sum(r['finished'] for r in runs.values())}/{len(runs)} in {(time.time() - started) / 60:.1f} min "
          f"on {machine}", flush=True)


def cmd_ship(args: argparse.Namespace) -> None:
    from cemap.zoo import quality

    quality.ship(load_manifest(args.manifest), Path(args.source), Path(args.dest), Path(args.results_dir))


def cmd_stage(args: argparse.Namespace) -> None:
    from cemap.zoo import quality

    staged = quality.stage_unshipped(args.keys, Path(args.source), Path(args.dest), Path(args.zoo_dir),
                                     Path(args.results_dir))
    print(f"staged {len(staged)} models in {args.dest} ({len(args.keys)} not shipped, exploratory): "
          f"CEMAP_ZOO_DIR={args.dest} python experiments/runner.py ...", flush=True)


def cmd_compare(args: argparse.Namespace) -> None:
    from cemap.zoo import quality

    ok = quality.compare(load_manifest(args.manifest), Path(args.output_root) / "export", Path(args.table),
                         Path(args.zoo_dir))
    if not ok:
        sys.exit(f"a retrained model differs from its shipped record by more than {quality.TOLERANCE_DB} dB")


def cmd_contrast(args: argparse.Namespace) -> None:
    from cemap.verdicts import VerdictSettings
    from cemap.zoo import contrast

    settings = VerdictSettings()
    rows = contrast.contrast(load_manifest(args.manifest), Path(args.source), args.a, args.b, settings, args.metric)
    text = contrast.render(rows, args.a, args.b, settings, args.metric)
    print(text, end="")
    if args.out:
        results.atomic_write_bytes(Path(args.out), text.encode())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", default=str(MANIFEST))
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the bench jobs (resumable) and export them in the shipped format")
    t.add_argument("--only", nargs="*", default=[], help="entry names or job keys (rcan_dn_bench-s1)")
    t.add_argument("--group", default=None, help="a group of conf/zoo/bench.yaml (dn, sr, mt)")
    t.add_argument("--output-root", default="outputs/zoo")
    t.add_argument("--device", default="auto")
    t.add_argument("--parallel", type=int, default=0, help="jobs at once (0: all)")
    t.add_argument("--steps", type=int, default=None,
                   help="override every job's steps (smoke tests; a lease that retrains shipped seeds on a new recipe)")
    t.add_argument("--calibrate", type=float, default=0.0, help="seconds of throughput probing; then steps fit the budget")
    t.add_argument("--budget-minutes", type=float, default=7.0)
    t.add_argument("--grace-minutes", type=float, default=1.0)
    t.add_argument("--repro", nargs="*", default=[], help="job keys trained twice (same seed, same device)")
    t.add_argument("--slice-minutes", type=float, default=None,
                   help="train every job for this long (committed steps), then stop with a checkpoint to resume")
    t.add_argument("--resume-from", default=None, help="folder of <key>.last.pth from an earlier slice (unpacked)")
    t.add_argument("--pack", default=None, help="folder for zoo_<i>.tar parts of the exported weights")
    t.add_argument("--allow-emulated-bf16", action="store_true",
                   help="train bf16-on-CPU recipes even on a CPU without native bf16 (slow)")
    t.set_defaults(func=cmd_train)
    s = sub.add_parser("ship", help="evaluate exported weights on the CPU; write the package zoo and results/zoo")
    s.add_argument("--from", dest="source", required=True, help="folder of exported weights (train's export/)")
    s.add_argument("--dest", default=str(WEIGHTS_DIR), help="package zoo folder (weights + provenance.json)")
    s.add_argument("--results-dir", default="results/zoo", help="zoo_table.md and not_shipped.json")
    s.set_defaults(func=cmd_ship)
    g = sub.add_parser("stage", help="a scratch zoo: the package zoo plus named models that missed their floor "
                                     "(exploratory runs only, via CEMAP_ZOO_DIR)")
    g.add_argument("keys", nargs="+", help="job keys of not-shipped models (srresnet_mix_bench-s0)")
    g.add_argument("--from", dest="source", required=True, help="folder of their exported weights")
    g.add_argument("--dest", required=True, help="scratch folder (never the package zoo)")
    g.add_argument("--zoo-dir", default=str(WEIGHTS_DIR))
    g.add_argument("--results-dir", default="results/zoo", help="where not_shipped.json is")
    g.set_defaults(func=cmd_stage)
    c = sub.add_parser("compare", help="retrained weights against the shipped records")
    c.add_argument("--output-root", default="outputs/zoo")
    c.add_argument("--table", default="results/zoo/retrain_table.md")
    c.add_argument("--zoo-dir", default=str(WEIGHTS_DIR), help="the shipped zoo to compare against")
    c.set_defaults(func=cmd_compare)
    d = sub.add_parser("contrast", help="full-image PSNR of entry A minus entry B, paired over seeds and images, "
                       "every trained seed (shipped or not)")
    d.add_argument("--from", dest="source", required=True,
                   help="folder of exported weights (train's export/) or a zoo folder (src/cemap/zoo/weights)")
    d.add_argument("--metric", choices=sorted(CONTRAST_METRICS), default="psnr",
                   help="offset_corrected_psnr: PSNR after removing each image's per-channel mean error")
    d.add_argument("a", help="entry name, e.g. rcan_dn_bench")
    d.add_argument("b", help="entry name, e.g. rcan_dn_bench_no_ca")
    d.add_argument("--out", default=None, help="also write the markdown table here")
    d.set_defaults(func=cmd_contrast)
    args = ap.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
