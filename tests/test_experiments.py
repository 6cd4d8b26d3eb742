"""Experiments: every config composes and runs end to end in smoke mode; sweeps are idempotent; W&B offline;
the notebook executes; the report renders."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf
from PIL import Image

from cemap.config import compose_config, experiment_variants
from tests.conftest import REPO, load_script

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
OUTPUT_FILES = ("summary.csv", "summary.md", "verdict.json", "report.html", "map_grid.png", "effect_vs_distance.png",
                "sign_shares.png", "radius_vs_psnr.png")


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_states_its_claim_and_composes_for_every_subject(experiment: str) -> None:
    text = (REPO / "conf" / "experiment" / f"{experiment}.yaml").read_text()
    assert text.startswith("# @package _global_") and "Command:" in text and "Expected run time" in text
    cfg = compose_config("run", [f"experiment={experiment}"])
    expected = cfg.experiment.expected
    assert expected.claim and (expected.tests or expected.contrasts)
    for test in expected.tests:
        assert (test.supported_below is None) != (test.supported_above is None), test.name
    assert len(cfg.experiment.images) >= 4 and len(cfg.rois) >= 3
    bench = cfg.experiment.bench
    variants = experiment_variants([f"experiment={experiment}"])
    for profile_subjects in (cfg.experiment.subjects, cfg.experiment.paper.subjects, bench.subjects):
        for subject in profile_subjects:
            sub = compose_config("run", [f"experiment={experiment}", f"subject={subject}", *variants[0]])
            named = {sub.subject.name} | {compose_config("run", [f"experiment={experiment}", f"subject={subject}",
                                                                *v]).subject.name for v in variants[1:]}
            assert named == {subject} if variants == [[]] else len(named) == len(variants), (subject, named)
            weights = sub.ckpt or sub.trained.schedule or sub.weights == "zoo" or sub.subject.group == "control"
            assert weights, f"{subject} has no checkpoint, training schedule or zoo weights and is not a control"
            assert subject in bench.subjects or sub.weights != "zoo", f"{subject}: zoo weights outside the bench"
    if bench.subjects:  # the bench geometry (issue "Insights decided with power")
        assert len(bench.images) >= 12 and len({i.split("@")[0] for i in bench.images}) >= 5
        assert bench.crop >= 128 and len(bench.rois) >= 3 and all(r[2] == 32 for r in bench.rois)
        assert all(s.startswith(("b_", "ctl_")) for s in bench.subjects)


def test_every_reproduce_target_defaults_to_bench_where_the_experiment_has_it() -> None:
    """Issue "Insights decided with power": bench is the default profile of every make reproduce-* target; an
    experiment without a bench block runs tiny unless PROFILE=paper."""
    runs = re.findall(r"^\t\$\(RUNNER\) (\w+) --profile (.+)$", (REPO / "Makefile").read_text(), re.MULTILINE)
    assert {name for name, _ in runs} == set(EXPERIMENTS)
    for name, profile in runs:
        has_bench = "bench" in OmegaConf.load(REPO / "conf" / "experiment" / f"{name}.yaml").experiment
        assert profile == ("$(or $(PROFILE),bench)" if has_bench else "$(AB_PROFILE)"), (name, profile)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_smoke_run_through_the_runner(experiment: str, tmp_path: Path) -> None:
    results_dir = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "experiments/runner.py", experiment, "--smoke", "--output-root", str(tmp_path / "out"),
         "--results-dir", str(results_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "$ python -m cemap.run -m experiment=" in proc.stdout
    assert re.search(r"^\[1/\d+\] \S+ \S+: .*min left$", proc.stdout, re.MULTILINE)  # one line per finished job
    for name in OUTPUT_FILES:
        assert (results_dir / name).is_file(), name
    verdict = json.loads((results_dir / "verdict.json").read_text())
    assert verdict["verdict"] in ("SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE", "NO POWER")
    assert f"{experiment} (tiny): {verdict['verdict']}" in proc.stdout
    page = (results_dir / "report.html").read_text()
    verdict_class = verdict["verdict"].lower().replace(" ", "-")
    assert f'<span class="verdict v-{verdict_class}">{verdict["verdict"]}</span>' in page
    assert "<h2>Glossary</h2>" in page and "nan [" not in page
    assert verdict["exploratory"] == {} and "EXPLORATORY" not in page + proc.stdout


def test_a_run_on_staged_weights_below_their_floor_is_labelled_exploratory(tmp_path: Path) -> None:
    """A verdict computed on a model that missed its zoo floor (staged from results/ into a scratch zoo) must not
    read like a bench result: the printed verdict, summary.md, report.html and verdict.json all say exploratory."""
    from cemap.zoo import quality

    folder = REPO / "results" / "zoo" / "exploratory_sr_ca"
    quality.stage_unshipped(["rcan_bench-s0", "rcan_bench_no_ca-s0"], folder / "export", tmp_path / "zoo",
                            results_dir=folder)
    results_dir = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "experiments/runner.py", "dn_channel_attention", "--profile", "bench", "--smoke",
         "--subjects", "b_sr_rcan_ca,b_sr_rcan_no_ca,ctl_sr_local,ctl_sr_reach",
         "--output-root", str(tmp_path / "out"), "--results-dir", str(results_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env={**os.environ, "CEMAP_ZOO_DIR": str(tmp_path / "zoo")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EXPLORATORY (models below their zoo floor: sr_rcan_ca, sr_rcan_no_ca)" in proc.stdout
    flagged = json.loads((results_dir / "verdict.json").read_text())["exploratory"]
    assert list(flagged) == ["sr_rcan_ca", "sr_rcan_no_ca"]
    assert flagged["sr_rcan_ca"].startswith("rcan_bench-s0 is not shipped: ")
    assert "over bicubic" in flagged["sr_rcan_ca"]  # the record's misses, as measured
    assert "(exploratory)** (" in (results_dir / "summary.md").read_text()
    assert '<p class="exploratory"><strong>EXPLORATORY:</strong> 2 of the 4 mapped models' in (
        results_dir / "report.html").read_text()


def run_sweep(out: Path, *extra: str) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "cemap.run", "-m", "model=dncnn_tiny", "image=embedded:coffee", "crop=32", "roi.x=8",
         "roi.y=8", "roi.size=8", "cem.estimator=fixed", "cem.n_samples=2", "device=cpu", "progress=false",
         f"output_root={out}", "seed=0,1", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *extra],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow  # the joblib launcher stays in the fast suite through test_cli_shards_with_joblib_then_merge
def test_joblib_multirun_is_idempotent(tmp_path: Path) -> None:
    first = run_sweep(tmp_path)
    assert len(first) == 2 and not any(s["cached"] for s in first)
    second = run_sweep(tmp_path)
    assert len(second) == 2 and all(s["cached"] for s in second)
    assert sorted(s["effect_max"] for s in first) == sorted(s["effect_max"] for s in second)


def test_wandb_offline_logs_metrics_image_and_table(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cemap.run", "model=dncnn_tiny", "image=embedded:coffee", "crop=32", "roi.x=8",
         "roi.y=8", "roi.size=8", "cem.estimator=fixed", "cem.n_samples=2", "device=cpu", "progress=false",
         f"output_root={tmp_path}", "logger=wandb"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "WANDB_MODE": "offline"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = Path(json.loads(proc.stdout.strip().splitlines()[-1])["result_dir"])
    offline = list(run_dir.glob("wandb/offline-run-*"))
    assert len(offline) == 1
    assert list(offline[0].glob("files/media/images/**/*.png"))
    tables = list(offline[0].glob("files/media/table/*.table.json"))
    assert tables and "significant" in json.loads(tables[0].read_text())["columns"]
    records = next(offline[0].glob("run-*.wandb")).read_bytes()
    assert b"roi0/origin_psnr" in records and b"roi0/n_negative" in records


def test_without_wandb_nothing_touches_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cemap.run", "model=dncnn_tiny", "image=embedded:coffee", "crop=32", "roi.x=8",
         "roi.y=8", "roi.size=8", "cem.estimator=fixed", "cem.n_samples=1", "device=cpu", "progress=false",
         f"output_root={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0
    assert not list(tmp_path.rglob("wandb"))


def test_notebook_executes() -> None:
    import nbclient
    import nbformat

    nb = nbformat.read(REPO / "notebooks" / "explore_cem.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit the notebook without outputs"
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    assert any(o.get("output_type") == "display_data" for c in nb.cells for o in c.get("outputs", []))


@pytest.mark.slow
def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    out = tmp_path / "results"
    subprocess.run([sys.executable, "experiments/runner.py", "ab_coarse_to_fine", "--smoke", "--output-root",
                    str(tmp_path / "o"), "--results-dir", str(out)], cwd=REPO, check=True, capture_output=True)
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2400",
                    (out / "report.html").as_uri()], check=True, capture_output=True, timeout=120)
    from PIL import Image

    img = Image.open(shot).convert("L")
    colours = len(set(img.resize((200, 400)).getdata()))
    assert colours > 50, "the screenshot looks blank: figures did not render"


def test_experiment_configs_are_flat_and_prefixed() -> None:
    assert all(name.split("_")[0] in {"dn", "sr", "mt", "dr", "ab"} for name in EXPERIMENTS)
    assert not [p for p in (REPO / "conf" / "experiment").iterdir() if p.is_dir()]
    for name in EXPERIMENTS:
        raw = OmegaConf.load(REPO / "conf" / "experiment" / f"{name}.yaml")
        assert set(raw) <= {"defaults", "experiment", "cem", "rois", "crop", "image", "hydra"}, set(raw)
        # an experiment's own hydra settings are its sweep parameters (an ablation's values), nothing else
        assert set(raw.get("hydra", {})) <= {"sweeper"} and set(raw.get("hydra", {}).get("sweeper", {})) <= {"params"}


def test_bench_profile_sets_the_geometry_and_skips_models_that_do_not_ship(tmp_path: Path) -> None:
    runner = load_script("runner")
    args = SimpleNamespace(experiment="dn_channel_attention", output_root=str(tmp_path), profile="bench", smoke=False,
                           images=None)
    overrides = runner.base_overrides(args)
    assert "profile=bench" in overrides  # conf/profile/bench.yaml copies the experiment's bench block
    assert any(o.startswith("experiment.subjects=[b_dn_dncnn,") for o in overrides)
    cfg = compose_config("run", [*overrides, "subject=ctl_dn_reach"], with_choices=True)
    assert cfg.crop == 128 and cfg.cem.block_size == 16  # dn trades 8 px blocks for the budget
    assert len(cfg.experiment.images) == 12 and runner.missing_input(cfg) is None
    missing = runner.missing_input(compose_config("run", [*overrides, "subject=b_dn_rcan_ca_s2"], with_choices=True))
    assert missing is None or "not in the shipped bench zoo" in missing  # skipped with its reason until it ships
    assert runner.canonical("b_dn_rcan_ca_s1", "bench") == "dn_rcan_ca_s1"
    assert runner.canonical("ctl_dn_local", "bench") == "ctl_dn_local"
    assert runner.sweep_folder(args, "dn_channel_attention").name == "dn_channel_attention-bench"
    with pytest.raises(SystemExit, match="does not define"):
        runner.base_overrides(SimpleNamespace(**{**vars(args), "experiment": "ab_samples"}))


def test_subjects_whose_every_pair_partner_is_missing_are_not_mapped(tmp_path: Path) -> None:
    runner = load_script("runner")
    args = SimpleNamespace(experiment="dn_channel_attention", output_root=str(tmp_path), profile="bench", smoke=False,
                           images=None)
    cfg = compose_config("run", runner.base_overrides(args), with_choices=True)
    subjects = list(cfg.experiment.subjects)
    assert runner.idle_subjects(cfg, "bench", subjects, {}) == {}
    skipped = {"b_dn_rcan_ca_s1": "not shipped", "b_dn_dncnn": "not shipped"}
    idle = runner.idle_subjects(cfg, "bench", [s for s in subjects if s not in skipped], skipped)
    assert list(idle) == ["b_dn_rcan_no_ca_s1"] and "dn_rcan_ca_s1" in idle["b_dn_rcan_no_ca_s1"]


def test_subjects_option_keeps_profile_order_and_names_the_rest() -> None:
    runner = load_script("runner")
    subjects = ["p_dn_dncnn", "p_dn_rcan_ca", "p_dn_swinir", "ctl_dn_local"]
    assert runner.selected(subjects, None) == (subjects, {})
    keep, rest = runner.selected(subjects, ["p_dn_swinir", "p_dn_rcan_ca"])
    assert keep == ["p_dn_rcan_ca", "p_dn_swinir"]
    assert rest == {"p_dn_dncnn": "not selected (--subjects)", "ctl_dn_local": "not selected (--subjects)"}
    with pytest.raises(SystemExit, match="p_dn_rcan_typo not among this profile's subjects"):
        runner.selected(subjects, ["p_dn_rcan_typo"])


def test_an_unknown_subject_stops_the_runner_before_any_job(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "experiments/runner.py", "dn_channel_attention", "--profile", "bench",
                          "--subjects", "b_dn_dncnn,b_dn_rcan_typo", "--output-root", str(tmp_path)], cwd=REPO, text=True,
                         capture_output=True, timeout=300)
    assert run.returncode != 0 and "b_dn_rcan_typo not among" in run.stderr
    assert not (tmp_path / "experiments").exists()


def test_bench_profile_maps_with_channels_last_convolutions(tmp_path: Path) -> None:
    runner = load_script("runner")
    args = SimpleNamespace(experiment="dn_channel_attention", output_root=str(tmp_path), profile="bench", smoke=False,
                           images=None)
    bench = compose_config("run", runner.base_overrides(args)).cem
    tiny = compose_config("run", runner.base_overrides(SimpleNamespace(**{**vars(args), "profile": "tiny"}))).cem
    assert (bench.channels_last, bench.batch_size, tiny.channels_last, tiny.batch_size) == (True, 8, False, 32)


def test_paper_profile_lists_every_missing_checkpoint_before_any_job(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (32, 32)).save(images / "a.png")
    proc = subprocess.run([sys.executable, "experiments/runner.py", "dn_channel_attention", "--profile", "paper",
                           "--images-dir", str(images), "--output-root", str(tmp_path / "out"), "--quiet"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CKPT_DIR": str(tmp_path / "ckpts")})
    assert proc.returncode != 0 and "nothing was run" in proc.stderr
    paper = OmegaConf.load(REPO / "conf" / "experiment" / "dn_channel_attention.yaml")
    with_ckpt = [s for s in paper.experiment.paper.subjects if s.startswith("p_")]
    assert all(f"{s}: checkpoint {tmp_path / 'ckpts'}" in proc.stderr for s in with_ckpt), proc.stderr
    assert not (tmp_path / "out" / "experiments").exists()


def test_the_paper_checkpoint_list_names_every_paper_subjects_file() -> None:
    listed = OmegaConf.load(REPO / "conf" / "paper_checkpoints.yaml").checkpoints
    for path in sorted((REPO / "conf" / "subject").glob("p_*.yaml")):
        ckpt = str(OmegaConf.load(path).get("ckpt", ""))
        name = ckpt.rsplit("/", 1)[-1]
        assert name in listed and path.stem in listed[name], f"{path.stem}: {name} not listed for it"


def test_command_line_choices_win_over_the_profile(tmp_path: Path) -> None:
    runner = load_script("runner")
    args = SimpleNamespace(experiment="dn_channel_attention", output_root=str(tmp_path), profile="bench", smoke=False,
                           images=None, patches=str(tmp_path / "pool.npz"), crop=96, rois="[[8,8,16]]", samples=3,
                           estimator="adaptive", device="cpu")
    cfg = compose_config("run", [*runner.base_overrides(args), "subject=ctl_dn_local"], with_choices=True)
    assert (cfg.patches.source, cfg.patches.path) == ("npz", str(tmp_path / "pool.npz"))
    assert (cfg.crop, list(map(list, cfg.rois)), cfg.cem.n_samples, cfg.cem.estimator, cfg.device) == \
        (96, [[8, 8, 16]], 3, "adaptive", "cpu")
    folder = runner.user_overrides(SimpleNamespace(patches=str(tmp_path)))
    assert folder == ["patches.source=folder", f"patches.path={tmp_path}"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_role_a_test_names_has_a_subject_or_a_reason_in_every_profile(experiment: str) -> None:
    """A bench or paper run can only say why a test is NOT TESTABLE if the profile maps each role the tests name to
    one of its subjects (by prefix, or by ``roles``) or states why it has none (``unavailable``)."""
    runner = load_script("runner")
    cfg = compose_config("run", [f"experiment={experiment}"]).experiment
    specs = [*cfg.expected.tests, *cfg.expected.contrasts]
    named = {s for t in specs for s in (t.subjects or [])} | {s for t in specs for p in (t.pairs or []) for s in p}
    named |= {s for t in specs for series in (t.series or []) for s in series}
    named |= {s for t in cfg.expected.tests for c in (t.controls or {}).values() for item in c
              for s in ([item] if isinstance(item, str) else item)}
    for profile in ("bench", "paper"):
        node = cfg[profile]
        if not node.subjects:
            continue
        assert set(node.roles.values()) <= set(node.subjects), (profile, node.roles)
        args = SimpleNamespace(experiment=experiment, output_root="unused", profile=profile, smoke=False,
                               images=["embedded:chelsea"])
        names = [n for ns in runner.map_names(args, list(node.subjects)).values() for n in ns]
        played = {runner.canonical(s, profile, dict(node.roles)) for s in names}
        assert not named - played - set(node.unavailable), (profile, sorted(named - played - set(node.unavailable)))
        assert not set(node.unavailable) & played, (profile, "a role both played and unavailable")


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["dn_channel_attention", "dr_channel_attention", "sr_receptive_field",
                                        "mt_multitask_locality"])
def test_paper_profile_gives_a_verdict_row_for_every_test(experiment: str, reference_dir: Path, tmp_path: Path) -> None:
    """The paper path on the authors' checkpoint layouts (synthesised, tests/paper_checkpoints.py) and their real
    DnCNN: every subject loads and maps, every test gets a verdict row (NOT TESTABLE ones say why), and the
    committed results are untouched."""
    import hashlib

    from tests.paper_checkpoints import synthesise

    def fingerprint() -> str:
        files = sorted(p for p in (REPO / "results").rglob("*") if p.is_file())
        return hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()

    before = fingerprint()
    subjects = set(compose_config("run", [f"experiment={experiment}"]).experiment.paper.subjects)
    synthesise(tmp_path / "ckpt", reference_dir, subjects)
    proc = subprocess.run(
        [sys.executable, "experiments/runner.py", experiment, "--profile", "paper", "--images-dir",
         str(reference_dir / "images"), "--crop", "48", "--rois", "[[16,16,16]]", "--samples", "2", "--estimator",
         "fixed", "--quiet", "--output-root", str(tmp_path / "out"), "--results-dir", str(tmp_path / "results")],
        cwd=REPO, capture_output=True, text=True, timeout=4800,  # mt_multitask_locality: ~55 min on one busy core
        env={**os.environ, "CKPT_DIR": str(tmp_path / "ckpt"), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "skipped" not in proc.stdout, "a paper subject could not run"
    verdict = json.loads((tmp_path / "results" / "verdict.json").read_text())
    assert verdict["maps"] == len(subjects) * len(list((reference_dir / "images").iterdir()))
    expected = compose_config("run", [f"experiment={experiment}"]).experiment.expected
    assert [t["name"] for t in verdict["tests"]] == [t.name for t in expected.tests]
    for t in verdict["tests"]:
        assert t["verdict"] in ("SUPPORTED", "NOT SUPPORTED", "INCONCLUSIVE", "NO POWER", "NOT TESTABLE"), t
        assert t["verdict"] != "NOT TESTABLE" or (t["missing"] and t["n"] == 0), t
    page = (tmp_path / "results" / "report.html").read_text()
    assert all(f"no maps here for {m}" in page.lower() for t in verdict["tests"] for m in t["missing"])
    assert fingerprint() == before, "a paper run changed the committed results"


def test_an_ablation_sweeps_its_values_as_hydra_parameters_and_names_each_map_by_them() -> None:
    """ab_samples sweeps cem.n_samples (hydra.sweeper.params) over one subject file; each map is named by its value
    (the roles the tests pair), and a subject that does not put the swept value in its name is refused."""
    runner = load_script("runner")
    args = SimpleNamespace(experiment="ab_samples", output_root="unused", profile="tiny", smoke=False, images=None)
    assert experiment_variants(["experiment=ab_samples"]) == [[f"cem.n_samples={n}"] for n in (2, 4, 8, 32)]
    assert runner.map_names(args, ["ab_dncnn_samples"]) == {
        "ab_dncnn_samples": ["ab_dncnn_n2", "ab_dncnn_n4", "ab_dncnn_n8", "ab_dncnn_n32"]}
    assert compose_config("run", ["experiment=ab_samples", "subject=ab_dncnn_samples", "cem.n_samples=4"]).cem.n_samples == 4
    with pytest.raises(SystemExit, match="must put the value in subject.name"):
        runner.map_names(args, ["ab_dncnn_blocks"])  # named by the block size, which ab_samples does not sweep
    assert runner.map_names(SimpleNamespace(**{**vars(args), "experiment": "dn_channel_attention"}),
                            ["dn_dncnn"]) == {"dn_dncnn": ["dn_dncnn"]}
