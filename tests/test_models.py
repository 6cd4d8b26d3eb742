"""The model zoo: authors' checkpoint layouts, every preset tiny on CPU, RCAN attention variants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from cemap.checkpoint import load_checkpoint
from cemap.config import register_configs
from cemap.models import AUTHOR_LAYOUTS, CONTROL_FAMILIES, MODELS, model_class, model_info
from cemap.models.rcan import RCAN, ChannelAttention
from cemap.models import build_model
from tests.conftest import REPO, load_script

PRESETS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
TINY = [p for p in PRESETS if p.endswith("_tiny")]
WRAPPERS = ["raw", "params", "params_ema", "state_dict_module"]


def composed(preset: str) -> DictConfig:
    """A model preset with its ``defaults`` composed, as ``model=<preset>`` sees it."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf" / "model"), version_base="1.3"):
        return compose(preset)


def build(preset: str, **overrides: object) -> torch.nn.Module:
    cfg = OmegaConf.merge(composed(preset), overrides)
    model, name = build_model(cfg)
    assert name == preset
    return model


def _family(preset: str) -> str | None:
    """The class a preset builds (None for presets that extend another through ``defaults``, and for model=auto)."""
    target = OmegaConf.load(REPO / "conf" / "model" / f"{preset}.yaml").get("_target_")
    return None if target is None or preset == "auto" else target.rsplit(".", 1)[-1]


def _built_class(preset: str) -> str:
    """The class a preset builds once its ``defaults`` are composed."""
    return str(composed(preset)._target_).rsplit(".", 1)[-1]


CONTROLS = {MODELS[f].split(":")[1] for f in CONTROL_FAMILIES}
"""Control models (cemap.models.controls): untrained and small by construction, no paper or tiny size."""


def test_every_family_has_paper_and_tiny_presets() -> None:
    families = {_family(p) for p in PRESETS} - {None}
    tiny_families = {_built_class(p) for p in TINY}
    registered = {v.split(":")[1] for v in MODELS.values()}
    assert families == registered == tiny_families | CONTROLS


def test_presets_inherit_instead_of_restating() -> None:
    """One preset per architecture names its class; every other preset extends one through ``defaults``."""
    stating = [_family(p) for p in PRESETS if _family(p) is not None]
    assert len(stating) == len(set(stating)), sorted(stating)


def test_every_registered_family_is_in_the_tiny_training_table() -> None:
    table = load_script("tiny_training")
    runs = table.family_runs()
    assert {model.removesuffix("_tiny") for model, _, _ in runs} == set(MODELS) - CONTROL_FAMILIES
    assert ("edsr_tiny", "sr_x4", "tiny_edsr") in runs and ("restormer_tiny", "denoise", "tiny_restormer") in runs
    schedules = {p.stem for p in (REPO / "conf" / "train").glob("tiny_*.yaml")}
    assert {schedule for _, _, schedule in runs + table.EXTRA_RUNS} <= schedules


PAPER_SIZE = {p for p in PRESETS
              if _family(p) is None and not any(k in p for k in ("tiny", "bench", "control", "auto"))}
"""Paper-size variants (rcan_no_ca, swinir_dn, ...): built by the author-layout tests; their code paths (channel
attention modes, same-size heads) run in the forward test below at tiny and bench size."""
VARIANTS = [p for p in PRESETS
            if (_family(p) is None or _family(p) in CONTROLS) and p not in {"auto", *PAPER_SIZE, *TINY}]


@pytest.mark.parametrize("preset", TINY + VARIANTS)
def test_tiny_preset_forward_any_size(preset: str) -> None:
    torch.manual_seed(0)
    model = build(preset).eval()
    info = model_info(model)
    x = torch.rand(1, 3, 37, 45, requires_grad=True)
    before = x.detach().clone()
    y = model(x)
    assert y.shape == (1, 3, 37 * info.scale, 45 * info.scale)
    assert torch.isfinite(y).all()
    assert torch.equal(x.detach(), before), "the model modified its input"
    y.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("layout", sorted(AUTHOR_LAYOUTS))
def test_author_layout_loads_strictly(layout: str, reference_dir: Path, tmp_path: Path) -> None:
    spec = json.loads((reference_dir / "checkpoint-layouts" / f"{layout}.json").read_text())
    preset, overrides = AUTHOR_LAYOUTS[layout]
    model = build(preset, **overrides)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == spec["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == spec["n_params"]

    own = model.state_dict()
    torch.manual_seed(1)
    synthetic = {k: torch.randn(shape) if own[k].is_floating_point() else own[k].clone()
                 for k, shape in spec["state_dict"].items()}
    wrap = WRAPPERS[sorted(AUTHOR_LAYOUTS).index(layout) % len(WRAPPERS)]
    obj = {"raw": synthetic, "params": {"params": synthetic}, "params_ema": {"params_ema": synthetic, "params": {}},
           "state_dict_module": {"state_dict": {f"module.{k}": v for k, v in synthetic.items()}}}[wrap]
    torch.save(obj, tmp_path / f"{layout}.pth")
    fresh = build(preset, **overrides)
    load_checkpoint(fresh, tmp_path / f"{layout}.pth", strict=True)
    key = next(k for k in synthetic if synthetic[k].is_floating_point())
    assert torch.equal(fresh.state_dict()[key], synthetic[key])


@pytest.mark.parametrize(
    "mode,pooling,shape",
    [("global", 1, (2, 16, 1, 1)), ("window", 4, (2, 16, 3, 4)), ("window", 16, (2, 16, 1, 1)),
     ("grid", 2, (2, 16, 2, 2)), ("grid", 3, (2, 16, 3, 3))],
)
def test_rcan_attention_shapes(mode: str, pooling: int, shape: tuple[int, ...]) -> None:
    ca = ChannelAttention(16, 4, mode, pooling)
    x = torch.rand(2, 16, 12, 13)
    assert tuple(ca.weights(x).shape) == shape
    assert ca(x).shape == x.shape


@pytest.mark.parametrize("pooling,size", [(4, (12, 13)), (3, (7, 11)), (41, (45, 50)), (1, (5, 6))])
@pytest.mark.parametrize("channels_last", [False, True])
def test_window_attention_gates_every_pixel_by_its_window(pooling: int, size: tuple[int, int],
                                                          channels_last: bool) -> None:
    """Each pixel is multiplied by exactly its own window's gate, in either memory layout (bit for bit)."""
    torch.manual_seed(0)
    ca = ChannelAttention(8, 2, "window", pooling)
    x = torch.rand(2, 8, *size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    gates = ca.weights(x)
    rows, cols = torch.arange(size[0]) // pooling, torch.arange(size[1]) // pooling
    expected = x * gates[:, :, rows][:, :, :, cols]
    out = ca(x)
    assert torch.equal(out, expected)
    assert out.is_contiguous(memory_format=torch.channels_last) is channels_last or size[0] * size[1] == 1


def test_rcan_variants_parameters_and_locality() -> None:
    no_ca = RCAN(features=16, groups=2, blocks=2, reduction=4, channel_attention="none")
    assert not any("attention" in k for k in no_ca.state_dict())
    assert model_info(no_ca).is_local
    half = RCAN(features=16, groups=4, blocks=1, reduction=4, channel_attention="half")
    assert sum("body_ca" in k and "attention" in k for k in half.state_dict()) > 0
    assert not any("body_no_ca" in k and "attention" in k for k in half.state_dict())
    for mode, local in (("global", False), ("half", False), ("grid", False), ("window", True)):
        m = RCAN(features=16, groups=2, blocks=1, reduction=4, channel_attention=mode, pooling=2 if mode != "global" else 1)
        assert model_info(m).is_local is local, mode


def test_window_attention_is_local_and_global_is_not() -> None:
    """Changing a far-away pixel moves the output of global CA but not of 4x4-window CA (beyond its reach)."""
    torch.manual_seed(0)
    for mode, pooling, moves in (("global", 1, True), ("window", 4, False)):
        m = RCAN(scale=1, features=8, groups=1, blocks=1, reduction=2, channel_attention=mode, pooling=pooling).eval()
        x = torch.rand(1, 3, 48, 48)
        x2 = x.clone()
        x2[..., 40:, 40:] = 0
        with torch.no_grad():
            d = (m(x) - m(x2))[..., :8, :8].abs().max().item()
        assert (d > 0) is moves, (mode, d)


def test_unknown_family() -> None:
    with pytest.raises(ValueError, match="registered"):
        model_class("unet9000")


def test_model_auto_detects_a_foreign_checkpoint(tmp_path: Path) -> None:
    from cemap.models.auto import SpandrelModel
    from cemap.models.swinir import SwinIR

    torch.manual_seed(0)
    ref = SwinIR(scale=2, img_size=32, depths=(2, 2), embed_dim=48, num_heads=(2, 2)).eval()
    torch.save({"params": ref.state_dict()}, tmp_path / "user.pth")
    model = SpandrelModel.from_checkpoint(tmp_path / "user.pth").eval()
    assert model.architecture == "SwinIR" and model_info(model).scale == 2 and len(model.checkpoint_sha256) == 64
    x = torch.rand(1, 3, 20, 28)
    before = x.clone()
    with torch.no_grad():
        y = model(x)
    assert y.shape == (1, 3, 40, 56) and torch.equal(x, before)


LOCAL_TINY = [p for p in TINY + VARIANTS if "tiny" in p]


@pytest.mark.parametrize("preset", LOCAL_TINY)
def test_declared_receptive_radius_passes_the_locality_probe(preset: str) -> None:
    """A preset that declares a finite receptive radius must be right about it: the probe confirms screening (a wrong
    radius would silently cost the acceleration). Global presets declare none, and the probe refuses a forced one."""
    import numpy as np

    from cemap.grid import ROI, BlockGrid
    from cemap.locality import LocalitySettings, plan_locality
    from cemap.tasks import Denoise, SuperResolution

    torch.manual_seed(0)
    model = build(preset).eval()
    info = model_info(model)
    radius = 2 if info.receptive_radius is None else info.receptive_radius
    task = Denoise() if info.scale == 1 else SuperResolution(scale=info.scale)
    size = 8 * info.scale * (2 * radius // 8 + 4)
    clean = torch.rand(3, size, size)
    degraded = task.degrade(clean, np.random.RandomState(0))

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    grid = BlockGrid(size, size, 8 * info.scale, scale=info.scale)
    plan = plan_locality(forward, task, degraded, clean, [ROI(0, 0, 8 * info.scale)], grid, radius,
                         LocalitySettings(), torch.rand(2, 3, 8 * info.scale, 8 * info.scale), seed=0)
    if info.receptive_radius is None:
        assert not plan.report["screened"] and "probe" in plan.report["reason"], plan.report
    else:
        assert plan.report["screened"], plan.report
        assert plan.reachable is not None and not plan.reachable.all()


def test_fsrcnn_paper_initialisation() -> None:
    from cemap.models.fsrcnn import FSRCNN
    from cemap.validation import SettingError

    torch.manual_seed(0)
    model = FSRCNN(d=56, s=16, m=4, init="paper")
    assert model.last_part.weight.std().item() == pytest.approx(0.001, rel=0.05)
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    head = model.first_part[0].weight
    assert head.std().item() == pytest.approx((2 / (1 + 0.25**2) / head[0].numel()) ** 0.5, rel=0.1)
    assert FSRCNN(init="default").last_part.weight.abs().max() > 0.01  # PyTorch's, kept for loading checkpoints
    with pytest.raises(SettingError, match="init"):
        FSRCNN(init="xavier")
    assert build("fsrcnn_bench_m8").last_part.weight.std().item() < 0.002  # the bench sweep uses it
