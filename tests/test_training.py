"""Training: loss goes down, checkpoints load, resume is exact, the cache keys on the config, mix proportions."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from cemap.checkpoint import load_checkpoint, read_checkpoint
from cemap.config import register_configs
from cemap.models import build_model
from cemap.tasks import Denoise, Derain, SuperResolution
from cemap.train import TrainingDiverged, cpu_has_native_bf16, run_dir, train
from cemap.training import PatchSampler
from cemap.validation import SettingError
from tests.conftest import REPO

FAST = ["train.steps=20", "train.batch_size=4", "train.patch_size=32", "train.warmup_steps=0", "train.lr=0.002",
        "train.val_every=0", "train.checkpoint_every=5", "progress=false", "device=cpu",
        "data=dead_leaves", "data.n_images=4", "data.size=64", "val_data.crop=32"]


def config(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("training", overrides=[*FAST, f"output_root={tmp_path}", *overrides])


def losses(directory: Path) -> list[float]:
    with open(directory / "metrics.csv") as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh) if r["kind"] == "train"]


@pytest.mark.parametrize(
    "model,task",
    [("dncnn_tiny", "denoise"), ("srresnet_tiny", "sr_x4"), ("rcan_dn_tiny", "derain"), ("srresnet_same_tiny", "deblur")],
)
def test_short_run_lowers_loss_and_writes_a_loadable_checkpoint(tmp_path: Path, model: str, task: str) -> None:
    cfg = config(tmp_path, f"model={model}", f"task={task}")
    final = train(cfg)
    trace = losses(final.parent)
    assert len(trace) == 20 and np.mean(trace[-5:]) < np.mean(trace[:5]), trace
    state = torch.load(final, weights_only=True)
    assert {"params", "params_ema", "iter", "config"} <= set(state) and state["iter"] == 20
    fresh, _ = build_model(cfg.model)
    load_checkpoint(fresh, final)  # the zoo loader takes params_ema
    assert torch.equal(next(iter(fresh.state_dict().values())), next(iter(state["params_ema"].values())))
    assert (final.parent / "eval.json").is_file()


def partial_then_resumed(tmp_path: Path, steps: int, stop: str, stopped_at: int) -> tuple[Path, Path]:
    """Train ``steps`` at once, and again stopped early by ``stop`` (then resumed); the resumed EMA weights must be
    the uninterrupted ones. Returns (uninterrupted, resumed) checkpoints."""
    whole = train(config(tmp_path / "a", "model=dncnn_tiny", f"train.steps={steps}"))
    partial = train(config(tmp_path / "b", "model=dncnn_tiny", f"train.steps={steps}", stop))
    assert partial.name == "last.pth" and torch.load(partial, weights_only=True)["iter"] == stopped_at
    resumed = train(config(tmp_path / "b", "model=dncnn_tiny", f"train.steps={steps}"))
    a, b = read_checkpoint(whole), read_checkpoint(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    return whole, resumed


def test_interrupted_training_resumes_to_identical_weights(tmp_path: Path) -> None:
    whole, resumed = partial_then_resumed(tmp_path, 12, "max_steps_this_run=7", 7)
    plain_a = torch.load(whole, weights_only=True)["params"]
    plain_b = torch.load(resumed, weights_only=True)["params"]
    assert all(torch.equal(plain_a[k], plain_b[k]) for k in plain_a)


def test_a_run_killed_between_checkpoints_logs_each_step_once_after_resuming(tmp_path: Path) -> None:
    args = ("model=dncnn_tiny", "train.steps=8", "train.log_every=1")
    partial = train(config(tmp_path, *args, "max_steps_this_run=4"))
    metrics = partial.parent / "metrics.csv"
    with open(metrics, "a") as fh:  # steps 5-6 logged, then killed before the next checkpoint
        fh.write("5,train,denoise,0.1,0.001,,,1.0\n6,train,denoise,0.1,0.001,,,1.0\n")
    train(config(tmp_path, *args))
    steps = [int(r["step"]) for r in csv.DictReader(open(metrics)) if r["kind"] == "train"]
    assert steps == list(range(1, 9))


def test_a_time_slice_stops_with_a_checkpoint_and_resumes_to_identical_weights(tmp_path: Path) -> None:
    _, resumed = partial_then_resumed(tmp_path, 6, "max_minutes_this_run=1e-9", 1)
    assert resumed.name == "final.pth"
    with pytest.raises(ValueError, match="must be > 0"):
        train(config(tmp_path / "c", "model=dncnn_tiny", "train.steps=6", "max_minutes_this_run=0"))


@pytest.mark.parametrize("override,message", [("train.steps=0", "train.steps=0: must be >= 1"),
                                              ("train.lr=nan", "train.lr=nan: must be a finite number"),
                                              ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
                                              ("train.ema_decay=1.0", "must be < 1")])
def test_settings_that_train_nothing_or_nan_are_refused_before_any_file(tmp_path: Path, override: str,
                                                                         message: str) -> None:
    with pytest.raises(SettingError, match=re.escape(message)):
        train(config(tmp_path, "model=dncnn_tiny", "train.steps=3", override))
    assert not (tmp_path / "models").exists()


def test_a_diverging_run_stops_without_a_final_checkpoint(tmp_path: Path) -> None:
    cfg = config(tmp_path, "model=dncnn_tiny", "train.steps=6", "train.lr=1e30", "train.grad_clip=0",
                 "train.log_every=1", "train.warmup_steps=0")
    with pytest.raises(TrainingDiverged, match="diverged"):
        train(cfg)
    assert not list(tmp_path.rglob("final.pth"))


def test_cache_hits_for_the_same_config_only(tmp_path: Path) -> None:
    cfg = config(tmp_path, "model=dncnn_tiny", "train.steps=3")
    final = train(cfg)
    stamp = final.stat().st_mtime_ns
    assert train(config(tmp_path, "model=dncnn_tiny", "train.steps=3", "progress=true")) == final
    assert final.stat().st_mtime_ns == stamp
    changed = config(tmp_path, "model=dncnn_tiny", "train.steps=3", "train.lr=0.0005")
    assert run_dir(changed) != run_dir(cfg)
    assert run_dir(config(tmp_path, "model=dncnn_tiny", "train.steps=3", "task.sigma=25")) != run_dir(cfg)


def test_cpu_bf16_keys_change_the_cache_key_only_when_on(tmp_path: Path) -> None:
    """Keys added after models shipped: off, the key is the one those models were recorded under; on, a new one."""
    cfg = config(tmp_path, "model=dncnn_tiny")
    assert run_dir(config(tmp_path, "model=dncnn_tiny", "train.amp_on_cpu=false", "train.channels_last=false")) == run_dir(cfg)
    on = {run_dir(config(tmp_path, "model=dncnn_tiny", o)) for o in ("train.amp_on_cpu=true", "train.channels_last=true")}
    assert len(on) == 2 and run_dir(cfg) not in on


def test_bf16_on_the_cpu_trains_in_bf16_only_when_asked(tmp_path: Path) -> None:
    """``amp`` alone keeps the CPU in fp32 (the CPU recipes); with ``amp_on_cpu`` the run trains in bf16 and
    channels-last, and lands near, not on, the fp32 weights."""
    fp32 = train(config(tmp_path / "a", "model=dncnn_tiny", "train.steps=6", "train.amp=true"))
    same = train(config(tmp_path / "b", "model=dncnn_tiny", "train.steps=6"))
    bf16 = train(config(tmp_path / "c", "model=dncnn_tiny", "train.steps=6", "train.amp=true", "train.amp_on_cpu=true",
                        "train.channels_last=true"))
    a, b, c = (read_checkpoint(f) for f in (fp32, same, bf16))
    assert all(torch.equal(a[k], b[k]) for k in a)
    gap = max(float((a[k] - c[k]).abs().max()) for k in a)
    assert 0 < gap < 0.05, gap


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    """AVX512-BF16 or AMX counts as native; AVX512 or AVX2 alone does not (torch emulates bf16 there); no cpuinfo:
    unknown, never a refusal."""
    info = tmp_path / "cpuinfo"
    for flags, native in (("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_bf16", True),
                          ("fpu avx2 avx512f avx512bw", False), ("fpu sse avx2", False)):
        info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert cpu_has_native_bf16(info) is native, flags
    assert cpu_has_native_bf16(tmp_path / "absent") is None


def test_training_warns_when_the_cpu_would_emulate_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    import cemap.train as train_module

    cfg = config(tmp_path, "model=dncnn_tiny", "train.amp=true", "train.amp_on_cpu=true")
    for native, warned in ((False, True), (True, False), (None, False)):
        monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda native=native: native)
        caplog.clear()
        train_module.warn_if_bf16_emulated(cfg.train, torch.device("cpu"))
        assert ("no native bf16" in caplog.text) is warned, native
    caplog.clear()
    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)
    train_module.warn_if_bf16_emulated(config(tmp_path, "model=dncnn_tiny", "train.amp=true").train, torch.device("cpu"))
    assert caplog.text == ""  # fp32 on the CPU: nothing to warn about


def test_mix_sampler_follows_the_weights() -> None:
    images = [np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    tasks = {"sr": (SuperResolution(4), 1.0), "dn": (Denoise(), 2.0), "dr": (Derain(), 1.0)}
    sampler = PatchSampler(images, tasks, 32, 2, seed=0)
    drawn = np.bincount([sampler.task_index(s) for s in range(4000)], minlength=3) / 4000
    np.testing.assert_allclose(drawn, [0.25, 0.5, 0.25], atol=0.03)
    assert [sampler.task_index(s) for s in range(50)] == [PatchSampler(images, tasks, 32, 2, 0).task_index(s) for s in range(50)]
    lq, gt, name = sampler.batch(0)
    assert lq.shape[0] == 2 and gt.shape[-1] == 32


def test_mix_training_runs(tmp_path: Path) -> None:
    final = train(config(tmp_path, "model=srresnet_same_tiny", "++mix={sr_x4_upsampled: 1, denoise: 1, derain: 1}",
                         "train.steps=6"))
    import json

    tasks = {r["task"] for r in json.loads((final.parent / "eval.json").read_text())["eval"]}
    assert tasks == {"sr_x4_upsampled", "denoise", "derain"}


def test_ddp_two_cpu_processes_match_one(tmp_path: Path) -> None:
    """torchrun with 2 gloo processes splits each batch in two; averaged gradients equal the single-process ones."""
    args = [*FAST, "model=dncnn_tiny", "train.steps=6"]
    single = train(config(tmp_path / "one", "model=dncnn_tiny", "train.steps=6"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "cemap.train", *args, f"output_root={tmp_path / 'two'}"],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    double = next((tmp_path / "two" / "models").glob("*/final.pth"))
    a, b = read_checkpoint(single), read_checkpoint(double)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_training_cli_reports_a_bad_setting_in_one_line_with_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "cemap.train", "model=dncnn_tiny", "task=denoise", "train.lr=nan",
                           f"output_root={tmp_path}", "device=cpu"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "cemap.train: error: train.lr=nan: must be a finite number"


def test_the_trainer_does_not_load_the_map_cli_lam_or_figures() -> None:
    code = ("import sys, cemap.train; print(sorted(m for m in ('cemap.run', 'cemap.lam', 'cemap.figures', "
            "'cemap.decomposition') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr
