"""The bench zoo: manifest, shipped files against their provenance, the train -> ship -> load -> compare machinery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch
import yaml

from cemap import zoo
from cemap.zoo import quality
from cemap.zoo.manifest import MANIFEST, load_manifest
from tests.conftest import REPO, load_script

SHIPPED = zoo.records()


def test_manifest_covers_the_families_and_seeds_the_insights_compare() -> None:
    manifest = load_manifest()
    names = {j.name for j in manifest.jobs}
    for needed in ("dncnn_bench", "srresnet_bench", "srresnet_dn_bench", "rcan_bench", "rcan_dn_bench", "swinir_bench",
                   "swinir_dn_bench", "restormer_bench", "hat_bench", "srresnet_mix_bench", "rcan_mix_bench",
                   "swinir_mix_bench"):
        assert needed in names
    for variant in ("", "_no_ca", "_pool4", "_half"):
        assert f"rcan_dn_bench{variant}" in names and f"rcan_bench{variant}" in names
    assert sum(n.startswith("edsr_bench_d") for n in names) >= 3 and sum(n.startswith("fsrcnn_bench_m") for n in names) >= 3
    for compared in ("rcan_dn_bench", "rcan_dn_bench_no_ca", "rcan_bench", "rcan_bench_no_ca"):
        assert {0, 1, 2} <= {j.seed for j in manifest.jobs if j.name == compared}


def test_groups_split_the_zoo_into_leases_without_gaps_or_overlaps() -> None:
    manifest = load_manifest()
    names = [n for group in manifest.groups.values() for n in group]
    assert sorted(names) == sorted({j.name for j in manifest.jobs})
    assert {j.key for j in manifest.select([], "dn")} >= {"rcan_dn_bench-s2", "dncnn_bench-s0"}
    assert [j.key for j in manifest.select(["rcan_bench-s1"])] == ["rcan_bench-s1"]
    with pytest.raises(ValueError, match="no zoo group"):
        manifest.select([], "denoise")


@pytest.mark.parametrize("path", sorted(MANIFEST.parent.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_zoo_manifest_composes_into_training_configs(path: Path) -> None:
    """A misspelt schedule, preset or data set in any manifest (the zoo's, a pilot's) fails here, not in a session."""
    from cemap.config import compose_config

    shapes = {(j.model, j.task, j.schedule, j.data): j for j in load_manifest(path).jobs}
    for job in shapes.values():
        cfg = compose_config("training", job.train_overrides("unused", steps=job.steps or 1))
        assert cfg.train.steps == (job.steps or 1) and cfg.model.name == job.model


def test_manifest_rejects_a_typo(tmp_path: Path) -> None:
    node = yaml.safe_load(MANIFEST.read_text())
    node["entries"][0]["flor"] = node["entries"][0].pop("floor")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(node))
    with pytest.raises(ValueError, match="unknown keys"):
        load_manifest(tmp_path / "bad.yaml")


def test_steps_and_schedules_can_differ_per_seed_and_must_match_the_seeds(tmp_path: Path) -> None:
    node = yaml.safe_load(MANIFEST.read_text())
    entry = next(e for e in node["entries"] if len(e["seeds"]) == 3)
    entry["steps"] = [100, 200, 300]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(node))
    steps = {j.seed: j.steps for j in load_manifest(tmp_path / "m.yaml").jobs if j.name == entry["name"]}
    assert steps == {0: 100, 1: 200, 2: 300}
    entry["steps"] = [100, 200]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(node))
    with pytest.raises(ValueError, match="2 steps values for 3 seeds"):
        load_manifest(tmp_path / "m.yaml")
    entry["steps"], entry["schedule"] = 100, ["bench_same", "bench_same_cpu_bf16", "bench_same"]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(node))
    jobs = [j for j in load_manifest(tmp_path / "m.yaml").jobs if j.name == entry["name"]]
    assert [(j.steps, j.schedule) for j in jobs] == [(100, "bench_same"), (100, "bench_same_cpu_bf16"), (100, "bench_same")]


def test_a_compared_model_is_held_when_its_partner_of_the_same_seed_misses() -> None:
    met = {"rcan_dn_bench-s3": False, "rcan_dn_bench_no_ca-s3": True, "rcan_dn_bench_no_ca-s4": True,
           "rcan_dn_bench-s5": True, "rcan_dn_bench_no_ca-s5": True, "dncnn_bench-s0": True}
    held = load_manifest().held_partners(met)
    assert list(held) == ["rcan_dn_bench_no_ca-s3"] and "rcan_dn_bench-s3" in held["rcan_dn_bench_no_ca-s3"]


def test_compared_entries_get_equal_calibrated_steps() -> None:
    manifest = load_manifest()
    steps = {j.key: 1000 + 100 * i for i, j in enumerate(manifest.jobs)}
    equal = manifest.equalise(steps)
    pair = [j.key for j in manifest.jobs if j.name in ("rcan_dn_bench", "rcan_dn_bench_no_ca")]
    seeds = [j.seed for j in manifest.jobs if j.name == "rcan_dn_bench"]
    assert len(pair) == 2 * len(seeds) >= 6 and {equal[k] for k in pair} == {min(steps[k] for k in pair)}
    assert equal["dncnn_bench-s0"] == steps["dncnn_bench-s0"]


def assert_runs_on_an_odd_size(model: torch.nn.Module, record: dict) -> None:
    """A 37 x 45 input (no multiple of any window or scale) gives a finite output of the record's scale."""
    with torch.no_grad():
        y = model(torch.rand(1, 3, 37, 45))
    scale = record["model_config"].get("scale", 1)
    assert y.shape == (1, 3, 37 * scale, 45 * scale) and torch.isfinite(y).all()


@pytest.mark.parametrize("record", SHIPPED, ids=[r["key"] for r in SHIPPED])
def test_shipped_file_matches_its_record_loads_strictly_and_runs(record: dict) -> None:
    assert record["floor"]["met"], "a model that misses its floor must not ship"
    zoo.verified_path(record)
    assert_runs_on_an_odd_size(zoo.load(record["name"], seed=record["seed"], task=record["task"]), record)


def test_shipped_zoo_fits_the_size_budget() -> None:
    total = sum((zoo.WEIGHTS_DIR / r["file"]).stat().st_size for r in SHIPPED)
    assert total <= 40 * 2**20


@pytest.mark.skipif(not SHIPPED, reason="no bench model ships yet (see results/zoo/zoo_table.md)")
def test_quick_reevaluation_reproduces_a_recorded_psnr() -> None:
    """One model per kind of task the zoo ships (DN, SR), on the embedded test split, to 1e-3 dB (the model alone:
    the baselines and the authors' DnCNN, which the floor needs, are not recomputed)."""
    manifest = load_manifest()
    picked = {}
    for r in SHIPPED:
        picked.setdefault(r["task"], r)
    assert {"denoise", "sr_x4"} <= set(picked), sorted(picked)
    for task in ("denoise", "sr_x4"):
        r = picked[task]
        model = zoo.load(r["name"], seed=r["seed"], task=task)
        scores = quality.model_scores(model, manifest.job(r["key"]), manifest, sets=("embedded_test",))
        assert set(scores) == {"embedded_test"}
        assert scores["embedded_test"][task]["psnr"] == pytest.approx(r["eval"]["embedded_test"][task]["psnr"], abs=1e-3)


def test_a_damaged_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "m-s0.safetensors").write_bytes(b"not the file")
    record = {"name": "m", "model_preset": "m", "task": "denoise", "seed": 0, "file": "m-s0.safetensors",
              "sha256": "0" * 64}
    (tmp_path / zoo.PROVENANCE).write_text(json.dumps({"models": [record]}))
    with pytest.raises(zoo.ZooError, match="does not match"):
        zoo.load("m", directory=tmp_path)
    with pytest.raises(zoo.ZooError, match="shipped: m"):
        zoo.find("other", directory=tmp_path)


def smoke_manifest(tmp_path: Path) -> Path:
    """The real manifest cut to one cheap model, with a floor it can meet after a few steps (machinery only)."""
    node = yaml.safe_load(MANIFEST.read_text())
    node["entries"] = [dict(e, steps=3, schedule="bench_smoke") for e in node["entries"] if e["name"] == "fsrcnn_bench_m2"]
    node["groups"], node["equal_steps"] = {}, []
    node["floors"]["sweep_over_bicubic_min"] = -100.0
    node["eval"]["test_crop"] = 64
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(node))
    return path


def script(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "experiments" / "train_zoo.py"), *args], cwd=cwd, text=True,
                          capture_output=True, timeout=600)


@pytest.fixture(scope="module")
def smoke_zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``train`` (3 steps of one model) and ``ship`` into a temporary zoo, once for the tests below."""
    tmp_path = tmp_path_factory.mktemp("zoo")
    manifest = smoke_manifest(tmp_path)
    out = script("--manifest", str(manifest), "train", "--output-root", str(tmp_path / "run"), "--device", "cpu",
                 cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "trained 1/1" in out.stdout
    out = script("--manifest", str(manifest), "ship", "--from", str(tmp_path / "run" / "export"), "--dest",
                 str(tmp_path / "zoo"), "--results-dir", str(tmp_path / "results"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    return tmp_path


def test_train_ship_load_compare_end_to_end(smoke_zoo: Path) -> None:
    dest = smoke_zoo / "zoo"
    [record] = zoo.records(dest)
    assert record["key"] == "fsrcnn_bench_m2-s0" and record["floor"]["met"] and record["steps"] == 3
    assert record["machine"].startswith("CPU") and len(record["config_hash"]) == 16
    assert "fsrcnn_bench_m2" in (smoke_zoo / "results" / "zoo_table.md").read_text()
    model = zoo.load("fsrcnn_bench_m2", directory=dest)
    assert model(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)
    table = smoke_zoo / "retrain.md"
    out = script("--manifest", str(smoke_zoo / "smoke.yaml"), "compare", "--output-root", str(smoke_zoo / "run"),
                 "--table", str(table), "--zoo-dir", str(dest), cwd=smoke_zoo)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "+0.000 | yes | yes | CPU" in table.read_text()  # the same export: the same file, from the same CPU


def test_time_slices_resume_lease_after_lease_to_the_uninterrupted_weights(smoke_zoo: Path, tmp_path: Path) -> None:
    manifest, key = str(smoke_zoo / "smoke.yaml"), "fsrcnn_bench_m2-s0"
    first = script("--manifest", manifest, "train", "--output-root", str(tmp_path / "lease1"), "--device", "cpu",
                   "--slice-minutes", "1e-9", "--pack", str(tmp_path / "out"), cwd=tmp_path)
    assert first.returncode == 0 and f"{key}: NOT finished at step 1" in first.stdout, first.stderr[-2000:]
    for part in (tmp_path / "out").glob("zoo_*.tar"):
        with tarfile.open(part) as tar:
            tar.extractall(tmp_path / "state", filter="data")
    assert (tmp_path / "state" / f"{key}.last.pth").is_file()
    second = script("--manifest", manifest, "train", "--output-root", str(tmp_path / "lease2"), "--device", "cpu",
                    "--resume-from", str(tmp_path / "state"), cwd=tmp_path)
    assert second.returncode == 0 and f"{key}: resumes from step 1" in second.stdout, second.stderr[-2000:]
    export = tmp_path / "lease2" / "export"
    leases = json.loads((export / f"{key}.leases.json").read_text())
    assert [(x["from_step"], x["to_step"]) for x in leases] == [(0, 1), (1, 3)]
    whole = (smoke_zoo / "run" / "export" / f"{key}.safetensors").read_bytes()
    assert (export / f"{key}.safetensors").read_bytes() == whole


def test_a_model_below_its_floor_does_not_ship(smoke_zoo: Path, tmp_path: Path) -> None:
    node = yaml.safe_load((smoke_zoo / "smoke.yaml").read_text())
    node["floors"]["sweep_over_bicubic_min"] = 0.5
    (tmp_path / "strict.yaml").write_text(yaml.safe_dump(node))
    out = script("--manifest", str(tmp_path / "strict.yaml"), "ship", "--from", str(smoke_zoo / "run" / "export"),
                 "--dest", str(tmp_path / "zoo"), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert zoo.records(tmp_path / "zoo") == [] and not list((tmp_path / "zoo").glob("*.safetensors"))
    [rejected] = json.loads((tmp_path / "res" / "not_shipped.json").read_text())
    assert not rejected["floor"]["met"] and "needs > +0.50" in rejected["floor"]["misses"][0]


def test_the_map_cli_names_a_shipped_model(smoke_zoo: Path, tmp_path: Path) -> None:
    env = {**os.environ, "CEMAP_ZOO_DIR": str(smoke_zoo / "zoo")}
    run = [sys.executable, "-m", "cemap.run", "model=fsrcnn_bench_m2", "task=sr_x4", "weights=zoo", "device=cpu",
           "image=embedded:chelsea", "crop=32", "cem.estimator=fixed", "cem.n_samples=1", "roi.x=8", "roi.y=8",
           "roi.size=8", "progress=false", f"output_root={tmp_path / 'out'}"]
    out = subprocess.run(run, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])["result_dir"]
    checkpoint = json.loads((Path(result) / "cem.json").read_text())["checkpoint"]
    assert checkpoint["sha256"] == zoo.records(smoke_zoo / "zoo")[0]["sha256"]
    missing = subprocess.run([*run, "zoo_seed=5"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "0 shipped models match" in missing.stderr


def test_paired_difference_matches_hand_computed_values() -> None:
    from cemap.verdicts import VerdictSettings
    from cemap.zoo.contrast import paired_difference

    a = {0: [30.0, 31.0], 1: [28.0, 28.0], 2: [27.0, 27.0]}  # seed 2 has no B: left out
    b = {0: [29.0, 30.0], 1: [28.0, 29.0]}
    d = paired_difference(a, b, VerdictSettings(n_boot=500))
    assert d.mean == pytest.approx(0.25) and d.replicate_means == pytest.approx([1.0, -0.5])
    assert d.n_clusters == 2 and d.n_maps == 4 and -1.0 <= d.low < 0.25 < d.high <= 1.0  # inside the cells' range


def test_contrast_cli_of_an_entry_with_itself_is_exactly_zero(smoke_zoo: Path, tmp_path: Path) -> None:
    out = script("--manifest", str(smoke_zoo / "smoke.yaml"), "contrast", "--from", str(smoke_zoo / "run" / "export"),
                 "fsrcnn_bench_m2", "fsrcnn_bench_m2", "--out", str(tmp_path / "c.md"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    text = (tmp_path / "c.md").read_text()
    assert "| embedded_test | 0 |" in text and "**+0.00 [+0.00, +0.00]**" in text


def test_contrast_reads_a_zoo_folder_like_an_export_and_the_offset_corrected_score_is_never_lower(
        smoke_zoo: Path) -> None:
    from cemap.zoo.contrast import contrast

    manifest = load_manifest(smoke_zoo / "smoke.yaml")
    exported = contrast(manifest, smoke_zoo / "run" / "export", "fsrcnn_bench_m2", "fsrcnn_bench_m2")
    shipped = contrast(manifest, smoke_zoo / "zoo", "fsrcnn_bench_m2", "fsrcnn_bench_m2")
    corrected = contrast(manifest, smoke_zoo / "zoo", "fsrcnn_bench_m2", "fsrcnn_bench_m2",
                         metric="offset_corrected_psnr")
    assert [r.psnr_a for r in shipped] == [r.psnr_a for r in exported] and shipped[0].psnr_a
    for plain, free in zip(shipped, corrected, strict=True):
        assert all(free.psnr_a[s] >= plain.psnr_a[s] for s in plain.psnr_a)


def test_slices_of_stopped_processes_count_in_training_minutes(tmp_path: Path) -> None:
    """A session that ends mid-training kills the process before it records its lease; the metrics it left (seconds
    restart with each process, rows past the resumed checkpoint are dropped) still give that slice's minutes."""
    rows = ["step,kind,task,loss,lr,psnr,ssim,seconds"]
    rows += [f"{s},train,denoise,0.1,0.001,,,{s * 0.6:.2f}" for s in range(10, 501, 10)]           # killed, 0-500
    rows += [f"{s},train,denoise,0.1,0.001,,,{(s - 500) * 1.2:.2f}" for s in range(510, 1001, 10)]  # killed, 500-1000
    rows += [f"{s},train,denoise,0.1,0.001,,,{(s - 1000) * 0.9:.2f}" for s in range(1010, 1501, 10)]  # recorded
    rows += ["1500,final,denoise,,,25.0,0.7,"]
    metrics = tmp_path / "m.metrics.csv"
    metrics.write_text("\n".join(rows) + "\n")
    slices = quality.unrecorded_leases(metrics, recorded_from=1000)
    assert [(x["from_step"], x["to_step"], x["minutes"]) for x in slices] == [(0, 500, 5.0), (500, 1000, 10.0)]
    assert all(x["machine"] == quality.UNRECORDED for x in slices)
    assert quality.unrecorded_leases(metrics, recorded_from=0) == []


def test_staging_an_unshipped_model_leaves_the_package_zoo_alone(tmp_path: Path) -> None:
    """Exploratory runs on a model that missed its floor go through a scratch zoo; the shipped one is untouched."""
    source, results_dir, scratch = tmp_path / "export", tmp_path / "results", tmp_path / "scratch"
    source.mkdir()
    results_dir.mkdir()
    shipped = zoo.records()[0]
    (source / "x-s0.safetensors").write_bytes((zoo.WEIGHTS_DIR / shipped["file"]).read_bytes())
    record = {**shipped, "name": "x", "key": "x-s0", "file": "x-s0.safetensors", "floor": {"met": False}}
    (results_dir / "not_shipped.json").write_text(json.dumps([record]))
    before = (zoo.WEIGHTS_DIR / zoo.PROVENANCE).read_bytes()
    staged = quality.stage_unshipped(["x-s0"], source, scratch, results_dir=results_dir)
    assert (zoo.WEIGHTS_DIR / zoo.PROVENANCE).read_bytes() == before
    assert len(staged) == len(zoo.records()) + 1 and staged[-1]["exploratory"] is True
    assert zoo.verified_path(zoo.find("x", 0, directory=scratch), scratch).is_file()
    with pytest.raises(ValueError, match="no not-shipped record"):
        quality.stage_unshipped(["y-s0"], source, scratch, results_dir=results_dir)
    with pytest.raises(ValueError, match="scratch folder"):
        quality.stage_unshipped(["x-s0"], source, zoo.WEIGHTS_DIR, results_dir=results_dir)


UNSHIPPED_KEPT = sorted(p.parent for pattern in ("exploratory_*", "pending_*", "unshipped_*")  # kept in results/
                        for p in (REPO / "results" / "zoo").glob(f"{pattern}/not_shipped.json"))


@pytest.mark.parametrize("folder", UNSHIPPED_KEPT, ids=lambda p: p.name)
def test_committed_unshipped_weights_match_their_records_and_stage_outside_the_package(folder: Path,
                                                                                       tmp_path: Path) -> None:
    """Unshipped weights kept in results/ (inputs of an exploratory run, a pair member kept for its partner's
    session, or unshipped pairs kept for the seed contrast): every record's file is there with its sha256, none is
    a package zoo model, and staging them gives loadable models in a scratch folder only."""
    unshipped = json.loads((folder / "not_shipped.json").read_text())
    export = folder / "export"
    assert unshipped and {f.name for f in export.glob("*.safetensors")} == {r["file"] for r in unshipped}
    assert not {r["key"] for r in unshipped} & {r["key"] for r in SHIPPED}
    assert not any(r["floor"]["met"] and "held" not in r for r in unshipped)
    staged = quality.stage_unshipped([r["key"] for r in unshipped], export, tmp_path, results_dir=folder)
    for record in staged[-len(unshipped):]:
        assert record["exploratory"]
        assert_runs_on_an_odd_size(zoo.load(record["name"], record["seed"], record["task"], directory=tmp_path), record)


def test_train_refuses_cpu_bf16_recipes_only_on_a_cpu_that_would_emulate_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """An AVX2-only CPU ran x4 rcan_bench's bf16 recipe at 33 s/step (fp32: 4.0): such a run is refused up front."""
    train_zoo = load_script("train_zoo")
    jobs = load_manifest(MANIFEST).select(["rcan_dn_bench-s0", "rcan_dn_bench-s3", "fsrcnn_bench_m2-s0"], None)
    monkeypatch.setattr(train_zoo, "cpu_has_native_bf16", lambda: False)
    assert train_zoo.emulated_bf16_jobs(jobs, "cpu") == ["rcan_dn_bench-s3"]  # s0: bench_same, fp32 on the CPU
    assert train_zoo.emulated_bf16_jobs(jobs, "cuda") == []
    with pytest.raises(SystemExit, match="rcan_dn_bench-s3: bf16 recipes"):
        train_zoo.main(["train", "--only", "rcan_dn_bench-s3", "--device", "cpu", "--output-root", "unused"])
    for native in (True, None):
        monkeypatch.setattr(train_zoo, "cpu_has_native_bf16", lambda native=native: native)
        assert train_zoo.emulated_bf16_jobs(jobs, "cpu") == []
