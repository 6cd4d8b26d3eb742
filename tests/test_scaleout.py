"""Sharded maps merge into the unsharded map; out-of-memory backs off the batch size without changing results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cemap import ROI, CausalEffectMap, Fixed, Reference
from cemap.results import STATUS_NOT_COMPUTED, merge_shards, parse_shard
from cemap.tasks import Denoise
from tests.conftest import conv_stack


@pytest.mark.parametrize("estimator", [Fixed(n_samples=3), Reference(n_coarse=2, n_fine=4)])
def test_three_shards_merge_into_the_unsharded_map(small_image, small_bank, estimator) -> None:  # type: ignore[no-untyped-def]
    cem = CausalEffectMap(conv_stack(3), Denoise(), device="cpu")
    full = cem.attribute(small_image, ROI(16, 16, 8), 8, estimator, patches=small_bank)
    shards = [cem.attribute(small_image, ROI(16, 16, 8), 8, estimator, patches=small_bank,
                            blocks=parse_shard(f"{i}/3", 35)) for i in range(3)]
    merged = merge_shards(shards)
    for name in ("effects", "se", "n", "significant", "status", "forwards"):
        assert np.array_equal(getattr(merged, name), getattr(full, name), equal_nan=True), name
    with pytest.raises(ValueError, match="same block"):
        merge_shards([shards[0], shards[0]])


def test_a_missing_shard_is_named_and_a_batch_size_difference_merges(small_image, small_bank) -> None:  # type: ignore[no-untyped-def]
    shards = [CausalEffectMap(conv_stack(3), Denoise(), device="cpu", batch_size=2 + i).attribute(
                  small_image, ROI(16, 16, 8), 8, Fixed(n_samples=2), patches=small_bank,
                  blocks=parse_shard(f"{i}/3", 35)) for i in range(3)]
    for i, shard in enumerate(shards):
        shard.meta["shard"] = f"{i}/3"  # as cemap.run records it
    assert (merge_shards(shards).status != STATUS_NOT_COMPUTED).all()  # batch sizes 2, 3, 4: one map
    with pytest.raises(ValueError, match="shard\\(s\\) 1/3 missing"):
        merge_shards([shards[0], shards[2]])


def test_shard_spec() -> None:
    assert parse_shard("1/3", 8) == [1, 4, 7]
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError, match="cem.shard"):
            parse_shard(bad, 8)


class OOMAbove(torch.nn.Module):
    """Raises CUDA-style out-of-memory for batches larger than ``limit``."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def test_out_of_memory_backs_off_and_keeps_the_map(small_image, small_bank) -> None:  # type: ignore[no-untyped-def]
    inner = conv_stack(3)
    ref = CausalEffectMap(inner, Denoise(), device="cpu", batch_size=3).attribute(
        small_image, ROI(16, 16, 8), 8, Fixed(n_samples=4), patches=small_bank)
    cem = CausalEffectMap(OOMAbove(inner, 3), Denoise(), device="cpu", batch_size=32, model_name="m")
    result = cem.attribute(small_image, ROI(16, 16, 8), 8, Fixed(n_samples=4), patches=small_bank)
    assert cem.batch_size <= 3
    assert np.array_equal(result.effects, ref.effects)


def test_cli_shards_with_joblib_then_merge(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import subprocess
    import sys
    from pathlib import Path

    from cemap.results import CEMResult
    from tests.conftest import REPO

    common = ["model=dncnn_tiny", "image=embedded:coffee", "crop=32", "roi.x=8", "roi.y=8", "roi.size=8",
              "cem.estimator=reference", "cem.n_samples=3", "device=cpu", "progress=false", f"output_root={tmp_path}"]
    sharded = subprocess.run([sys.executable, "-m", "cemap.run", "-m", *common, "cem.shard=0/3,1/3,2/3",
                              "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
                             cwd=REPO, capture_output=True, text=True, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-2000:]
    dirs = [Path(json.loads(line)["result_dir"]) for line in sharded.stdout.splitlines() if line.startswith("{")]
    assert len(dirs) == 3
    whole = subprocess.run([sys.executable, "-m", "cemap.run", *common], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    full = CEMResult.load(json.loads(whole.stdout.strip().splitlines()[-1])["result_dir"])
    merged_proc = subprocess.run([sys.executable, "-m", "cemap.merge", *map(str, dirs), "--out", str(tmp_path / "m")],
                                 cwd=REPO, capture_output=True, text=True, timeout=120)
    assert merged_proc.returncode == 0, merged_proc.stderr
    merged = CEMResult.load(tmp_path / "m")
    assert np.array_equal(merged.effects, full.effects) and np.array_equal(merged.status, full.status)
