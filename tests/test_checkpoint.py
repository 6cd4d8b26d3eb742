"""Safe loading: wrappers, prefixes, safetensors, and refusal of truncated, wrong and malicious files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from cemap.checkpoint import CheckpointError, load_checkpoint, read_checkpoint
from cemap.models import DnCNN


def tiny() -> DnCNN:
    torch.manual_seed(0)
    return DnCNN(features=8, depth=3)


def test_params_ema_preferred_and_module_prefix_stripped(tmp_path: Path) -> None:
    src, other = tiny(), DnCNN(features=8, depth=3)
    ema = {f"module.{k}": v for k, v in src.state_dict().items()}
    torch.save({"params": other.state_dict(), "params_ema": ema, "iter": 5}, tmp_path / "net.pth")
    dst = DnCNN(features=8, depth=3)
    sha = load_checkpoint(dst, tmp_path / "net.pth")
    assert len(sha) == 64
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


@pytest.mark.parametrize("wrap", ["raw", "params", "state_dict", "legacy"])
def test_wrappers_and_formats(tmp_path: Path, wrap: str) -> None:
    sd = tiny().state_dict()
    obj = sd if wrap in ("raw", "legacy") else {wrap: sd}
    torch.save(obj, tmp_path / "m.pth", _use_new_zipfile_serialization=wrap != "legacy")
    assert set(read_checkpoint(tmp_path / "m.pth")) == set(sd)


def test_safetensors(tmp_path: Path) -> None:
    sd = tiny().state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "m.safetensors"))
    model = DnCNN(features=8, depth=3)
    load_checkpoint(model, tmp_path / "m.safetensors")
    assert torch.equal(model.model[0].weight, sd["model.0.weight"])


def test_truncated_file(tmp_path: Path) -> None:
    torch.save(tiny().state_dict(), tmp_path / "m.pth")
    data = (tmp_path / "m.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tiny(), tmp_path / "cut.pth")


def test_wrong_architecture_lists_keys(tmp_path: Path) -> None:
    torch.save(DnCNN(features=8, depth=4).state_dict(), tmp_path / "deep.pth")
    with pytest.raises(CheckpointError, match=r"unexpected 2 \(model.6.weight, model.6.bias\)"):
        load_checkpoint(tiny(), tmp_path / "deep.pth")
    torch.save(DnCNN(features=16, depth=3).state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointError, match=r"shape_mismatch 5 \(model.0.weight: checkpoint \(16, 3, 3, 3\)"):
        load_checkpoint(tiny(), tmp_path / "wide.pth")


class Payload:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_pickled_callable_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.pth"
    with open(bad, "wb") as fh:
        pickle.dump({"params": tiny().state_dict(), "hook": Payload(str(marker))}, fh)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tiny(), bad)
    torch.save({"params": tiny().state_dict(), "hook": Payload(str(marker))}, tmp_path / "evil_zip.pth")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tiny(), tmp_path / "evil_zip.pth")
    assert not marker.exists()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tiny(), tmp_path / "nope.pth")
