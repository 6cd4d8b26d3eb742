"""`python -m cemap.run` end to end: the documented overrides, the files it writes, caching and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from PIL import Image

from cemap.config import register_configs
from cemap.estimators import Adaptive, EstimatorSettings, Fixed, Reference, make_estimator
from cemap.models import DnCNN
from tests.conftest import REPO


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cemap.run", *overrides], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:64, 0:48]
    img = np.clip(np.stack([yy * 3, xx * 4, yy + xx], -1) + rng.normal(0, 15, (64, 48, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "img.png")
    torch.manual_seed(0)
    torch.save(DnCNN(features=8, depth=3).state_dict(), tmp_path / "tiny.pth")
    return {"image": str(tmp_path / "img.png"), "ckpt": str(tmp_path / "tiny.pth"), "out": str(tmp_path / "out")}


def documented(inputs: dict[str, str], n_samples: int = 5) -> list[str]:
    """The issue's override line, with a DnCNN shrunk to 3 x 8 so it runs in seconds."""
    return [
        "model=dncnn", "model.features=8", "model.depth=3", f"ckpt={inputs['ckpt']}", "task=denoise",
        f"image={inputs['image']}", "roi.x=16", "roi.y=24", "roi.size=16", "cem.block_size=8",
        "cem.estimator=reference", f"cem.n_samples={n_samples}", "seed=0", "device=cpu",
        f"output_root={inputs['out']}", "progress=false",
    ]


def test_documented_overrides_compose() -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=[
            "model=dncnn", "ckpt=/x.pth", "task=denoise", "image=/x.png", "roi.x=96", "roi.y=152", "roi.size=32",
            "cem.block_size=8", "cem.estimator=reference", "cem.n_samples=50", "seed=0", "device=cpu",
        ])
    assert cfg.model.depth == 20 and cfg.task.sigma == 50 and cfg.roi.y == 152 and cfg.cem.n_samples == 50


def test_typo_fails_at_compose() -> None:
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        with pytest.raises(Exception, match="blok_size"):
            compose("run", overrides=["cem.blok_size=8"])
        with pytest.raises(Exception, match="n_samples"):
            compose("run", overrides=["cem.n_samples=many"])
        with pytest.raises(Exception, match="famly"):  # subjects are typed too: a misspelt key or group fails
            compose("run", overrides=["experiment=dn_channel_attention", "subject=dn_dncnn", "subject.famly=cnn"])
        with pytest.raises(Exception, match="glob"):
            compose("run", overrides=["experiment=dn_channel_attention", "subject=dn_dncnn", "subject.group=glob"])


def test_each_estimator_reads_its_own_settings_node() -> None:
    """``cem.n_samples`` is shared; ``cem.reference`` / ``cem.adaptive`` hold each estimator's own keys, and the flat
    keys they replaced fail at composition."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=["cem.n_samples=12", "cem.reference.n_coarse=2", "cem.adaptive.target_se=0.02",
                                        "cem.adaptive.n_min=4"])
        with pytest.raises(Exception, match="n_coarse"):
            compose("run", overrides=["cem.n_coarse=2"])
    settings = EstimatorSettings.from_mapping(cfg.cem)
    assert make_estimator("reference", settings) == Reference(n_coarse=2, n_fine=12)
    assert make_estimator("adaptive", settings) == Adaptive(target_se=0.02, n_min=4, n_max=12)
    assert make_estimator("fixed", settings) == Fixed(n_samples=12)


def test_run_writes_results_and_reuses_them(inputs: dict[str, str], tmp_path: Path) -> None:
    proc = run_cli(*documented(inputs), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in ("origin_psnr", "n_positive", "n_negative", "n_zero", "effect_min", "effect_max", "forwards", "seconds",
                "result_dir"):
        assert key in summary
    run_dir = Path(summary["result_dir"])
    for name in ("cem.npz", "cem.json", "cem.png", "summary.json"):
        assert (run_dir / name).is_file(), name
    meta = json.loads((run_dir / "cem.json").read_text())
    assert meta["checkpoint"]["sha256"] and meta["estimator"]["n_fine"] == 5 and meta["seed"] == 0
    assert summary["cached"] is False and summary["forwards"] > 24

    again = run_cli(*documented(inputs), cwd=tmp_path)
    second = json.loads(again.stdout.strip().splitlines()[-1])
    assert second["cached"] is True and second["result_dir"] != summary["result_dir"]
    assert second["effect_max"] == summary["effect_max"]

    changed = run_cli(*documented(inputs, n_samples=6), cwd=tmp_path)
    assert json.loads(changed.stdout.strip().splitlines()[-1])["cached"] is False


@pytest.mark.parametrize(
    "override,message",
    [
        ("roi.x=40", "outside the 64x48"),
        ("image=/no/such.png", "does not exist"),
        ("cem.block_size=0", "block_size=0"),
        ("model.depth=4", "does not fit DnCNN"),
        ("cem.estimator=magic", "unknown estimator"),
        ("device=foo", "device='foo' is not a device name"),
        ("cem.tolx=1", "Could not override 'cem.tolx'"),
        ("output_root=/dev/null", "Not a directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(inputs: dict[str, str], tmp_path: Path, override: str, message: str) -> None:
    args = [a for a in documented(inputs) if not a.startswith(override.split("=")[0] + "=")] + [override]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("cemap.run: error:") and message in lines[0], proc.stderr
    assert not (Path(inputs["out"]) / "cache").exists() or not any((Path(inputs["out"]) / "cache").rglob("cem.npz"))


def test_model_auto_without_a_checkpoint_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = run_cli("model=auto", "image=embedded:chelsea", "device=cpu", f"output_root={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == ("cemap.run: error: model=auto reads its architecture from "
                                                            "a checkpoint: give ckpt=PATH"), proc.stderr


@pytest.mark.parametrize(
    "task,model",
    [("sr_x4", "srresnet_tiny"), ("denoise", "dncnn_tiny"), ("derain", "rcan_dn_tiny"), ("deblur", "srresnet_same_tiny")],
)
def test_every_task_runs_on_an_embedded_image(task: str, model: str, tmp_path: Path) -> None:
    proc = run_cli(f"task={task}", f"model={model}", "image=embedded:chelsea", "crop=48", "roi.x=16", "roi.y=16",
                   "roi.size=16", "cem.estimator=fixed", "cem.n_samples=2", "device=cpu", f"output_root={tmp_path}",
                   "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    structural = json.loads((Path(summary["result_dir"]) / "cem.json").read_text())["locality"].get("n_structural_zero", 0)
    assert summary["n_blocks"] == 36 and summary["forwards"] == 2 * (36 - structural) + 1


def test_scale_mismatch_is_caught_before_any_forward(tmp_path: Path) -> None:
    proc = run_cli("task=denoise", "model=srresnet_tiny", "image=embedded:chelsea", "crop=48", "roi.x=0", "roi.y=0",
                   "roi.size=8", "device=cpu", f"output_root={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and "scale 4 but task denoise needs scale 1" in proc.stderr


def test_model_auto_from_the_cli(tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(DnCNN().state_dict(), tmp_path / "foreign.pth")
    proc = run_cli("model=auto", f"ckpt={tmp_path / 'foreign.pth'}", "image=embedded:coffee", "crop=24", "roi.x=8",
                   "roi.y=8", "roi.size=8", "cem.estimator=fixed", "cem.n_samples=1", "device=cpu",
                   f"output_root={tmp_path}", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((Path(json.loads(proc.stdout.strip().splitlines()[-1])["result_dir"]) / "cem.json").read_text())
    assert meta["model"] == "auto" and len(meta["checkpoint"]["sha256"]) == 64


def test_gradient_views_from_the_cli(tmp_path: Path) -> None:
    proc = run_cli("task=sr_x4", "model=srresnet_tiny", "image=embedded:chelsea", "crop=48", "roi.x=16", "roi.y=16",
                   "roi.size=16", "cem.estimator=fixed", "cem.n_samples=1", "device=cpu", f"output_root={tmp_path}",
                   "progress=false", "gradients.first_order=true", "gradients.first_order_draws=2", "gradients.lam=true",
                   "gradients.lam_steps=4", "gradients.decompose_top_k=1", "gradients.decompose_draws=2",
                   "gradients.decompose_steps=4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert -1 <= summary["first_order_rank_correlation"] <= 1 and 0 <= summary["lam_diffusion_index"] <= 100
    assert "decomposition_max_completeness_gap" in summary
    out = Path(summary["result_dir"])
    for name in ("first_order/cem.npz", "lam.npz", "lam.json", "cem_lam.png", "decomposition.npz"):
        assert (out / name).is_file(), name


def test_bare_value_and_type_errors_are_bugs_not_user_errors() -> None:
    from cemap.cli import USER_ERRORS
    from cemap.validation import SettingError

    assert not issubclass(ValueError, USER_ERRORS) and not issubclass(TypeError, USER_ERRORS)
    assert issubclass(SettingError, USER_ERRORS)
    from cemap.tasks.denoise import Denoise

    with pytest.raises(SettingError):
        Denoise(sigma=-1)


def test_a_run_dir_outside_the_output_root_is_refused_before_hydra_writes_there(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    proc = run_cli("model=dncnn_tiny", f"output_root={tmp_path / 'out'}", f"hydra.run.dir={elsewhere}", cwd=tmp_path)
    assert proc.returncode == 2 and "outside output_root" in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert not elsewhere.exists(), "Hydra wrote its files before the refusal"
    from cemap.cli import check_run_dirs
    from cemap.results import OutsideOutputRootError

    check_run_dirs([f"output_root={tmp_path}", f"hydra.run.dir={tmp_path / 'runs' / 'a'}"])  # inside: accepted
    check_run_dirs(["hydra.run.dir=${output_root}/runs/${now:%Y-%m-%d}"])  # filled in: inside
    with pytest.raises(OutsideOutputRootError):
        check_run_dirs([f"output_root={tmp_path}", "hydra.run.dir=${output_root}/../elsewhere/${now:%H}"])
    check_run_dirs(["hydra.run.dir=${oc.env:HOME}/x"])  # an environment variable is left to the job's own check
