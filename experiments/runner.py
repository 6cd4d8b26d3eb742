"""Run one of the paper's insights end to end: train what is missing, sweep the maps, analyse, report.

    python experiments/runner.py dn_channel_attention                 # PROFILE=tiny: trains tiny models, 64 px crops
    python experiments/runner.py dn_channel_attention --profile bench # the shipped bench zoo, 128 px crops, no training
    python experiments/runner.py dn_channel_attention --profile paper --images A.png B.png   # CKPT_DIR=... on a GPU
    python experiments/runner.py dn_channel_attention --profile paper --images-dir DIR      # every image in DIR
    python experiments/runner.py dn_channel_attention --profile paper --subjects p_dn_rcan_ca,p_dn_swinir  # only these
    python experiments/runner.py dn_channel_attention --smoke --output-root /tmp/x --results-dir /tmp/x/results

Every step is a visible command (printed with a leading ``$``): ``python -m cemap.train`` for each model not yet in
the training cache, ``python -m cemap.run -m experiment=<name>`` for the sweep (jobs that already finished are
answered from the map cache), then the analysis, which writes ``results/<name>/<profile>/`` (summary.csv,
summary.md, verdict.json, figures, report.html) and prints the verdict table with the controls' verdicts. Subjects
whose inputs are missing here (bench weights not shipped yet, files only ../shared has) are skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

from omegaconf import OmegaConf

from cemap.analysis import analyse as analyse_maps
from cemap.analysis import load_sweep
from cemap.config import compose_config, experiment_variants, training_overrides
from cemap.report import fmt_interval, fmt_value, missing_reason, write_report
from cemap.results import image_stem, sweep_dir
from cemap.stats import statistic_unit
from cemap.train import FINAL, run_dir

REPO = Path(__file__).resolve().parents[1]


def sh(cmd: list[str], lines: Callable[[str], str] | None = None) -> None:
    """Print and run a command, streaming its output (each stdout line through ``lines`` when given); stop the
    runner if it fails."""
    print("$", shlex.join(["python", *cmd[1:]] if cmd[0] == sys.executable else cmd), flush=True)
    if lines is None:
        code = subprocess.call(cmd, cwd=REPO)
    else:
        with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                print(lines(line.rstrip("\n")), flush=True)
        code = proc.returncode
    if code:
        raise SystemExit(f"command failed with exit code {code}")


class JobProgress:
    """A sweep's progress, one line per finished job in place of its JSON summary ("[17/120] b_dn_rcan_ca
    coffee@y128x0: 513 forwards in 84 s; about 12 min left"); every other line passes through unchanged."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.perf_counter()

    def __call__(self, line: str) -> str:
        try:
            summary = json.loads(line)
        except ValueError:
            return line
        if not isinstance(summary, dict) or "result_dir" not in summary:
            return line
        self.done += 1
        left = (time.perf_counter() - self.started) / self.done * max(self.total - self.done, 0)
        job = Path(summary["result_dir"]).name.replace("__", " ")
        how = ("from the cache" if summary.get("cached")
               else f"{summary.get('forwards', 0)} forwards in {summary.get('seconds', 0):.0f} s")
        return f"[{self.done}/{self.total}] {job}: {how}; about {left / 60:.0f} min left"


PROFILES = ("tiny", "bench", "paper")
SUBJECT_PREFIX = {"tiny": "", "bench": "b_", "paper": "p_"}
"""A profile's subjects are the tiny subjects' names with this prefix (b_dn_rcan_ca plays dn_rcan_ca), so one set of
tests serves every profile; controls (ctl_*) are the same everywhere."""
PROFILE_KEYS = ("images", "rois", "estimator", "n_samples", "block_size")
"""What a bench or paper block must set (``crop`` may be null: whole images); conf/profile/<profile>.yaml copies the
block over the experiment's sweep."""


@lru_cache(maxsize=None)
def composed(overrides: tuple[str, ...]):  # type: ignore[no-untyped-def]
    """The run config of ``overrides``, with the group choices; composed once per run (the runner asks for each
    subject's at every stage, and a composition takes a third of a second)."""
    return compose_config("run", list(overrides), with_choices=True)


def subject_config(args: argparse.Namespace, subject: str):  # type: ignore[no-untyped-def]
    return composed((*base_overrides(args), f"subject={subject}"))


def base_overrides(args: argparse.Namespace, subjects: list[str] | None = None) -> list[str]:
    out = [f"experiment={args.experiment}", f"output_root={args.output_root}", f"profile={args.profile}"]
    if args.smoke:
        out.append("debug=smoke")
    if args.profile != "tiny":
        if args.images:
            out.append(f"experiment.images={json.dumps(list(args.images))}")
        node = composed(tuple(out)).experiment[args.profile]
        check_profile(node, images_given=bool(args.images))
        subjects = list(node.subjects) if subjects is None else subjects
    if subjects is not None:
        out.append("experiment.subjects=[" + ",".join(subjects) + "]")
    return out + user_overrides(args)


def user_overrides(args: argparse.Namespace) -> list[str]:
    """The command line's own choices, which win over the profile's: patch pool, crop, ROIs, draws, estimator,
    device (``--patches`` takes an npz bank or a folder of images or patch files to draw from)."""
    out = []
    if getattr(args, "patches", None):
        source = "npz" if Path(args.patches).suffix == ".npz" else "folder"
        out += [f"patches.source={source}", f"patches.path={args.patches}"]
    for option, key in (("crop", "crop"), ("samples", "cem.n_samples"), ("estimator", "cem.estimator"),
                        ("device", "device"), ("rois", "rois")):
        value = getattr(args, option, None)
        if value is not None:
            out.append(f"{key}={value}")
    return out


def check_profile(sweep_node, images_given: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Stop before any job when the experiment does not define the profile (no subjects, or a key of PROFILE_KEYS
    unset; the paper profile takes its images from --images)."""
    node = OmegaConf.to_container(sweep_node, resolve=True)
    assert isinstance(node, dict)
    unset = [k for k in PROFILE_KEYS if node.get(k) is None and not (k == "images" and images_given)]
    missing = (["no subjects"] if not node["subjects"] else []) + ([f"no {', '.join(unset)}"] if unset else [])
    if missing:
        raise SystemExit(f"this experiment does not define that profile ({'; '.join(missing)}; the paper profile "
                         "takes its images from --images)")


def images_in(folder: Path) -> list[str]:
    """Every image file of ``folder``, sorted (the data module's own listing, with its messages)."""
    from cemap.data import FolderSet

    try:
        return [str(f) for f in FolderSet(gt=str(folder)).files()]
    except FileNotFoundError as exc:
        raise SystemExit(f"--images-dir: {exc}") from None


def experiment_config(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return composed(tuple(base_overrides(args)))


def zoo_task(cfg) -> str:  # type: ignore[no-untyped-def]
    """The task a zoo record is filed under: the task preset, or ``mix`` for a multi-task model."""
    return "mix" if cfg.trained.mix else cfg._choices["task"]


def zoo_record(cfg) -> dict | None:  # type: ignore[no-untyped-def]
    """The zoo record of a subject with ``weights: zoo`` (``cemap.zoo.ZooError`` when it is not there), else None."""
    if cfg.weights != "zoo":
        return None
    from cemap import zoo

    return zoo.find(cfg._choices["model"], cfg.zoo_seed, zoo_task(cfg))


def missing_input(cfg) -> str | None:  # type: ignore[no-untyped-def]
    """Why a subject cannot run here (a file only ../shared has, bench weights that do not ship yet), or None."""
    needs = cfg.subject.get("requires") if cfg.subject else None
    if needs and not (REPO / str(needs)).exists() and not Path(str(needs)).exists():
        return f"{needs} not found"
    from cemap import zoo

    try:
        zoo_record(cfg)
    except zoo.ZooError:
        return f"{cfg._choices['model']} ({zoo_task(cfg)}, seed {cfg.zoo_seed}) is not in the shipped bench zoo yet"
    return None


def exploratory_weights(args: argparse.Namespace, subjects: list[str]) -> dict[str, str]:
    """Subjects whose zoo weights missed their floor and were staged for an exploratory run (``train_zoo.py stage``
    into ``CEMAP_ZOO_DIR``), with the misses: the report labels the whole run exploratory, so that its verdict is
    never read as a bench result."""
    flagged = {}
    for subject in subjects:
        record = zoo_record(subject_config(args, subject))
        if record and record.get("exploratory"):
            misses = "; ".join(record["floor"].get("misses") or ["floor not met"])
            flagged[subject] = f"{record['key']} is not shipped: {misses}"
    return flagged


def selected(subjects: list[str], chosen: list[str] | None) -> tuple[list[str], dict[str, str]]:
    """``--subjects``: the profile's subjects to run now, and the others with the reason, so that the report names
    them (a GPU session can map the global models in one command and the rest in another). Unknown names stop the
    run before any job."""
    if not chosen:
        return subjects, {}
    unknown = [s for s in chosen if s not in subjects]
    if unknown:
        raise SystemExit(f"--subjects: {', '.join(unknown)} not among this profile's subjects ({', '.join(subjects)})")
    return [s for s in subjects if s in chosen], {s: "not selected (--subjects)" for s in subjects if s not in chosen}


def available(args: argparse.Namespace, subjects: list[str]) -> tuple[list[str], dict[str, str]]:
    """The subjects whose inputs exist here, and the others with the reason (printed, and shown in the report)."""
    keep, skipped = [], {}
    for subject in subjects:
        reason = missing_input(subject_config(args, subject))
        if reason:
            print(f"  {subject}: skipped, {reason}", flush=True)
            skipped[subject] = reason
            continue
        keep.append(subject)
    return keep, skipped


def map_names(args: argparse.Namespace, subjects: list[str]) -> dict[str, list[str]]:
    """The names each subject's maps carry: its own, or, where the experiment sweeps parameters of its own (an
    ablation's values in ``hydra.sweeper.params``), one per combination, which the subject puts in its name
    (``ab_dncnn_n${cem.n_samples}``): the roles the tests use. Names that would collide stop the run."""
    base = base_overrides(args)
    variants = experiment_variants(base)
    names = {s: [str(composed((*base, f"subject={s}", *v)).subject.name) for v in variants]
             if variants != [[]] else [s] for s in subjects}
    flat = [n for ns in names.values() for n in ns]
    if len(set(flat)) < len(flat):
        raise SystemExit(f"the sweep's maps would share names ({', '.join(flat)}): a subject swept over "
                         f"{', '.join(v.split('=')[0] for v in variants[0])} must put the value in subject.name")
    return names


def profile_block(experiment: dict, profile: str) -> dict:
    """The experiment's block for ``profile`` (``bench`` / ``paper``; empty for ``tiny``, the sweep itself)."""
    return (experiment.get(profile) or {}) if profile != "tiny" else {}


def idle_subjects(cfg, profile: str, subjects: list[str],  # type: ignore[no-untyped-def]
                  skipped: dict[str, str]) -> dict[str, str]:
    """Subjects no test can use here, with the reason: every test that names their role pairs it with a role that
    has no model in this profile (an untrained seed), so their maps would cost time and decide nothing. Subjects that
    no test names (descriptive ones, e.g. the local reference CNN) and controls are always kept."""
    node = OmegaConf.to_container(cfg.experiment, resolve=True)
    assert isinstance(node, dict)
    sweep_node = profile_block(node, profile)
    roles = sweep_node.get("roles") or {}
    missing = {*(sweep_node.get("unavailable") or {}), *(canonical(s, profile, roles) for s in skipped)}
    named, useful, partners = set(), set(), {}
    for test in [*node["expected"].get("tests", []), *node["expected"].get("contrasts", [])]:
        useful.update([*(test.get("subjects") or []), *(m for series in test.get("series") or [] for m in series)])
        for a, b in test.get("pairs") or []:
            named.update((a, b))
            partners.setdefault(a, []).append(b)
            partners.setdefault(b, []).append(a)
            useful.update(role for role, other in ((a, b), (b, a)) if other not in missing)
    idle = {}
    for subject in subjects:
        role = canonical(subject, profile, roles)
        if role in named and role not in useful:
            missing_partners = ", ".join(dict.fromkeys(partners[role]))
            idle[subject] = f"not mapped: every test that uses it pairs it with {missing_partners}, without a model here"
    return idle


def check_inputs(args: argparse.Namespace, subjects: list[str]) -> None:
    """Before any job: every image given exists and every subject's checkpoint exists and loads strictly (its
    sha256 printed); all problems are listed in one message, instead of a job failing hours into a sweep."""
    from cemap.checkpoint import CheckpointError, load_checkpoint
    from cemap.models import build_model

    problems = [f"image {p} does not exist" for p in args.images or [] if not Path(p).is_file()]
    for subject in subjects:
        cfg = subject_config(args, subject)
        if not cfg.ckpt:
            continue
        path = Path(str(cfg.ckpt))
        if not path.is_file():
            problems.append(f"{subject}: checkpoint {path} does not exist")
            continue
        try:
            sha = load_checkpoint(build_model(cfg.model)[0], path, strict=cfg.strict)
        except CheckpointError as exc:
            problems.append(f"{subject}: {exc}")
            continue
        print(f"  {subject}: {path} (sha256 {sha[:16]}) loads", flush=True)
    if problems:
        raise SystemExit("nothing was run; fix these inputs first (CKPT_DIR, --images):\n  " + "\n  ".join(problems))


def train_missing(args: argparse.Namespace, subjects: list[str]) -> None:
    for subject in subjects:
        cfg = subject_config(args, subject)
        if not cfg.trained.schedule or cfg.ckpt:
            continue
        overrides = training_overrides(cfg._choices["model"], cfg._choices["task"], cfg.trained, args.output_root)
        if (run_dir(compose_config("training", overrides)) / FINAL).is_file():
            print(f"  {subject}: trained model found in the cache", flush=True)
            continue
        sh([sys.executable, "-m", "cemap.train", *overrides, f"progress={str(not args.quiet).lower()}"])


def sweep(args: argparse.Namespace, subjects: list[str], n_jobs: int) -> None:
    cmd = [sys.executable, "-m", "cemap.run", "-m", *base_overrides(args, subjects), f"logger={args.logger}",
           f"hydra.sweep.dir={sweep_folder(args, args.experiment)}",
           f"progress={str(not args.quiet and args.jobs == 1).lower()}"]  # parallel jobs' bars would interleave
    if args.jobs > 1:
        cmd += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={args.jobs}"]
    sh(cmd, JobProgress(n_jobs))


def sweep_folder(args: argparse.Namespace, name: str) -> Path:
    """Where the sweep's maps go: one folder per experiment and profile (smoke runs apart)."""
    return sweep_dir(args.output_root, name, "smoke" if args.smoke else "" if args.profile == "tiny" else args.profile)


def canonical(subject: str, profile: str, roles: dict[str, str] | None = None) -> str:
    """The role a profile's subject plays in the tests: the tiny subject's name. By default the profile's prefix
    is dropped (b_dn_rcan_ca -> dn_rcan_ca); a profile's ``roles`` (role -> subject) names the others (the authors'
    p_sr_edsr_64_16 plays sr_edsr_d16, the deeper member of an EDSR depth pair)."""
    named = {v: k for k, v in (roles or {}).items()}
    if subject in named:
        return named[subject]
    prefix = SUBJECT_PREFIX[profile]
    return subject[len(prefix):] if prefix and subject.startswith(prefix) else subject


def analyse(args: argparse.Namespace, cfg, names: list[str],  # type: ignore[no-untyped-def]
            skipped: dict[str, str] | None = None, exploratory: dict[str, str] | None = None) -> dict:
    """Analyse the maps named ``names`` (``map_names``: the subjects, or their swept variants); ``skipped``: the
    names without maps here, with the reason; ``exploratory``: the names whose weights missed their floor."""
    experiment = OmegaConf.to_container(cfg.experiment, resolve=True, enum_to_str=True)
    assert isinstance(experiment, dict)
    node = profile_block(experiment, args.profile)
    roles = node.get("roles") or {}
    experiment["subjects"] = [canonical(s, args.profile, roles) for s in names]
    experiment["played_by"] = {role: s for role, s in roles.items() if s in names}  # named in the report's tables
    # why a test's model has no maps here: the profile has no such model (its ``unavailable``), or it was skipped
    experiment["unavailable"] = {**(node.get("unavailable") or {}),
                                 **{canonical(s, args.profile, roles): r for s, r in (skipped or {}).items()}}
    experiment["exploratory"] = {canonical(s, args.profile, roles): r for s, r in (exploratory or {}).items()}
    if args.profile != "tiny" and experiment[args.profile].get("local_radius_px") is not None:
        experiment["expected"]["local_radius_px"] = experiment[args.profile]["local_radius_px"]
    folder = sweep_folder(args, experiment["name"])
    wanted_images = {image_stem(i) for i in experiment["images"]}
    records = [r for r in load_sweep(folder) if r.subject in names and r.image in wanted_images]
    if not records:
        raise SystemExit(f"no maps found under {folder}; run the sweep first")
    for r in records:
        r.subject = canonical(r.subject, args.profile, roles)
    out = Path(args.results_dir or REPO / "results" / experiment["name"] / args.profile)
    verdict = write_report(out, analyse_maps(experiment, records))
    below = ", ".join(verdict["exploratory"])
    label = f" EXPLORATORY (models below their zoo floor: {below})" if below else ""
    print(f"\n{experiment['name']} ({args.profile}): {verdict['verdict']}{label}  ({verdict['maps']} maps)")
    for name, reason in verdict["exploratory"].items():
        print(f"  {'':14s}   exploratory: {name}: {reason}")
    for t in [*verdict["tests"], *verdict["contrasts"]]:
        controls = ", ".join(f"{role} {c['verdict']}" for role, c in t["controls"].items()) or "no controls"
        unit = statistic_unit(t["statistic"])
        print(f"  {t['verdict']:14s} {t['name']}: {t['statistic']} of {t['what']} = {fmt_interval(t, t['statistic'])} "
              f"(n={t['n']} crops), threshold {t['threshold']}; {controls}; "
              f"resolves +/-{fmt_value(t['half_width'], unit)}")
        for name in t["missing"]:
            print(f"  {'':14s}   no maps here for {name}: {missing_reason(name, experiment['unavailable'])}")
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
    parser.add_argument("--profile", choices=PROFILES, default=os.environ.get("PROFILE", "tiny"))
    parser.add_argument("--smoke", action="store_true", help="debug=smoke: a few steps and tiny images (tests)")
    parser.add_argument("--stage", choices=["all", "train", "maps", "analyse"], default="all")
    parser.add_argument("--jobs", type=int, default=1, help="parallel sweep jobs (joblib launcher)")
    parser.add_argument("--logger", choices=["none", "wandb"], default="none")
    parser.add_argument("--quiet", action="store_true", help="no progress bars (training steps, map blocks)")
    parser.add_argument("--output-root", default=str(REPO / "outputs"))
    parser.add_argument("--results-dir", default=None)
    parser.add_argument("--images", nargs="*", default=None, help="image paths (paper profile)")
    parser.add_argument("--images-dir", default=None, help="a folder of test images (e.g. Set14, the demo images)")
    parser.add_argument("--patches", default=None, help="intervention pool: an npz bank, or a folder of images "
                        "(e.g. DIV2K_train_HR) or patch files to draw from")
    parser.add_argument("--crop", type=int, default=None, help="centre crop of every image (px)")
    parser.add_argument("--rois", default=None, help="ROIs as JSON, e.g. '[[96,152,32]]' (x, y, size)")
    parser.add_argument("--samples", type=int, default=None, help="draws per block (cem.n_samples)")
    parser.add_argument("--estimator", default=None, help="fixed, reference or adaptive")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, auto")
    parser.add_argument("--subjects", type=lambda text: [s for s in text.split(",") if s], default=None,
                        help="comma-separated: map only these of the profile's subjects (the report names the others)")
    args = parser.parse_args()
    if args.images_dir:
        args.images = [*(args.images or []), *images_in(Path(args.images_dir))]
    started = time.perf_counter()
    cfg = experiment_config(args)
    subjects, unselected = selected(list(cfg.experiment.subjects), args.subjects)
    if unselected:
        print(f"  not selected (--subjects): {', '.join(unselected)}", flush=True)
    subjects, skipped = available(args, subjects)
    skipped = {**unselected, **skipped}
    idle = idle_subjects(cfg, args.profile, subjects, skipped)
    for subject, reason in idle.items():
        print(f"  {subject}: {reason}", flush=True)
    subjects, skipped = [s for s in subjects if s not in idle], {**skipped, **idle}
    names = map_names(args, [*subjects, *skipped])
    if args.stage in ("all", "maps"):
        check_inputs(args, subjects)
    if args.stage in ("all", "train"):
        train_missing(args, subjects)
    if args.stage in ("all", "maps"):
        sweep(args, subjects, sum(len(names[s]) for s in subjects) * len(cfg.experiment.images))
    if args.stage in ("all", "analyse"):
        analyse(args, cfg, [n for s in subjects for n in names[s]],
                {n: reason for s, reason in skipped.items() for n in names[s]},
                {n: reason for s, reason in exploratory_weights(args, subjects).items() for n in names[s]})
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
