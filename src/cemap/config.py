"""Structured (dataclass) configs: a misspelt key or a wrong type fails when the config is composed.

Model and task nodes come from the ``conf/model`` and ``conf/task`` groups and are instantiated from their
``_target_``; an unknown constructor argument there fails at instantiation, before any forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from cemap.estimators import EstimatorSettings
from cemap.results import image_stem
from cemap.stats import RADIUS_MASS, Statistic

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
"""The repository's ``conf/`` (cemap is installed in editable mode, so configs stay in the checkout)."""


@dataclass
class ROIConfig:
    """Square output region, in output pixels."""

    x: int = 96
    y: int = 152
    size: int = 32


@dataclass
class LocalityConfig:
    """Exact locality acceleration (see ``cemap.locality``): ``mode`` ``auto`` screens and crops when the model declares
    a receptive radius (or ``radius`` gives one) and the probe confirms it; ``off`` always uses the full image.
    ``atol`` is the largest ROI output difference (0..1 units) the probe accepts between crop and full image; the
    default 0 demands bit-identical outputs, so maps equal the full-image computation."""

    mode: str = "auto"
    radius: Optional[int] = None
    atol: float = 0.0
    probes: int = 2


@dataclass
class CEMConfig(EstimatorSettings):
    """``rois`` (top level) lists several (x, y, size) ROIs scored from the same forwards; it replaces ``roi``.

    The estimator keys (``n_samples``, ``tol``, ``z`` and each estimator's node, e.g. ``adaptive.target_se``) come
    from ``EstimatorSettings``. ``batch_size`` 0 picks one automatically (from free GPU memory, 16 on the CPU).
    ``precision`` (fp32, bf16, fp16) and ``compile`` trade exact fp32 effects for speed: see
    benchmarks/bench_precision.py for how far effects move.
    """

    block_size: int = 8
    estimator: str = "reference"
    metric: str = "psnr"
    batch_size: int = 0
    tf32: bool = False
    precision: str = "fp32"
    compile: bool = False
    channels_last: bool = False
    locality: LocalityConfig = field(default_factory=LocalityConfig)
    keep_samples: bool = False
    checkpoint_every_s: float = 30.0
    shard: Optional[str] = None  # "i/n": compute every n-th block from i; merge with python -m cemap.merge
    psnr_only: bool = False  # no interventions: only the ROI and image PSNR (models that enter PSNR tests only)


@dataclass
class GradientsConfig:
    """Gradient-based views computed next to each map (all off by default; see cemap.decomposition and cemap.lam):
    ``first_order`` preview with its rank correlation to the map, ``lam`` (Gu & Dong's LAM on the ROI as the output
    window, with its Diffusion Index and a CEM | LAM figure), and the pixel decomposition of the ``decompose_top_k``
    blocks with the largest |effect|."""

    first_order: bool = False
    first_order_draws: int = 8
    lam: bool = False
    lam_sigma: float = 1.2
    lam_steps: int = 50
    lam_kernel: int = 9
    decompose_top_k: int = 0
    decompose_draws: int = 8
    decompose_steps: int = 32


@dataclass
class PatchesConfig:
    """``source``: ``embedded`` (crops of the embedded training split), ``dead_leaves`` (crops of seeded dead-leaves
    images), ``npz`` (a saved bank, e.g. the authors' DIV2K pool, at ``path``) or ``folder`` (random crops of the
    images in ``path``)."""

    source: str = "embedded"
    path: Optional[str] = None
    n_patches: int = 10000
    seed: int = 0
    min_sharpness: float = 0.0


@dataclass
class TrainedRef:
    """Use the model trained by ``python -m cemap.train`` with this schedule (``conf/train``) on the run's task, or on
    ``mix`` (task preset -> weight), instead of an explicit ``ckpt``; the checkpoint cache finds it."""

    schedule: Optional[str] = None
    mix: dict[str, float] = field(default_factory=dict)
    data: str = "train_default"


@dataclass
class WandbRunConfig:
    project: str = "cemap"
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


@dataclass
class TestSpec:
    """A pre-stated test (``cemap.verdicts``): ``statistic`` over ``subjects``, over ``pairs`` (a - b), or its slope
    against the statistic ``against`` over each of ``series`` (a sweep's models), against ``supported_below`` /
    ``supported_above``. ``controls``: ``positive`` / ``negative`` -> subjects (or pairs) built to have / not to have
    the claimed property; a misspelt statistic fails when the config is composed."""

    name: str = MISSING
    statistic: Statistic = MISSING
    subjects: list[str] = field(default_factory=list)
    pairs: list[list[str]] = field(default_factory=list)
    series: list[list[str]] = field(default_factory=list)
    against: Optional[Statistic] = None
    supported_below: Optional[float] = None
    supported_above: Optional[float] = None
    abs: bool = False
    description: str = ""
    controls: dict[str, list[Any]] = field(default_factory=dict)


@dataclass
class ExpectedConfig:
    """The claim, its tests and every constant that changes a verdict: ``local_radius_px`` (where "far" starts),
    ``radius_mass`` (share of the |effect| mass the effective radius holds), the interval's level, bootstrap draws
    and seed, and the sampling unit (``crop`` or ``photograph``)."""

    claim: str = MISSING
    local_radius_px: int = 8
    radius_mass: float = RADIUS_MASS
    ci_level: float = 0.95
    n_boot: int = 2000
    boot_seed: int = 0
    cluster: str = "crop"
    tests: list[TestSpec] = field(default_factory=list)
    contrasts: list[TestSpec] = field(default_factory=list)


@dataclass
class ProfileSweep:
    """What a profile other than ``tiny`` sets in an experiment's sweep (``experiment.paper``, ``.bench``):
    ``conf/profile/<profile>.yaml`` copies these fields over the sweep (``crop`` null = whole images; the paper
    profile's images come from the runner's ``--images``)."""

    subjects: list[str] = field(default_factory=list)
    images: Optional[list[str]] = None
    crop: Optional[int] = None
    rois: Optional[list[list[int]]] = None
    estimator: Optional[str] = None
    n_samples: Optional[int] = None
    block_size: Optional[int] = None
    channels_last: Optional[bool] = None  # cem.channels_last of the bench profile
    batch_size: Optional[int] = None  # cem.batch_size of the bench profile
    local_radius_px: Optional[int] = None  # where "far" starts at this profile (the receptive radius of its local CNN)
    roles: dict[str, str] = field(default_factory=dict)
    """Role (the tiny subject's name, which the tests use) -> this profile's subject, where the profile's prefix
    alone does not name it (``experiments/runner.py canonical``)."""
    unavailable: dict[str, str] = field(default_factory=dict)
    """Role -> why this profile has no model for it (shown next to every test that names it)."""


SubjectGroup = Enum("SubjectGroup", {g: g for g in ("local", "window", "global", "control")}, type=str)  # type: ignore[misc]
"""How the figures group a subject: a finite receptive field, windowed attention, image-wide mechanisms, a control."""


@dataclass
class SubjectConfig:
    """One model of an experiment sweep (``conf/subject/*.yaml``). ``name``: the role the tests use (with the
    profile's prefix, ``b_`` / ``p_``); ``group``: how the figures group it; ``requires``: a file it needs (the runner
    skips it, with the reason, where the file is absent)."""

    name: str = MISSING
    group: SubjectGroup = MISSING  # type: ignore[valid-type]
    requires: Optional[str] = None


@dataclass
class ExperimentConfig:
    name: str = MISSING
    insight: Any = None
    subjects: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    paper: ProfileSweep = field(default_factory=ProfileSweep)
    bench: ProfileSweep = field(default_factory=ProfileSweep)
    expected: ExpectedConfig = field(default_factory=ExpectedConfig)


@dataclass
class RunConfig:
    model: Any = MISSING
    task: Any = MISSING
    cem: CEMConfig = field(default_factory=CEMConfig)
    roi: ROIConfig = field(default_factory=ROIConfig)
    rois: Optional[list[list[int]]] = None
    patches: PatchesConfig = field(default_factory=PatchesConfig)
    gradients: GradientsConfig = field(default_factory=GradientsConfig)
    image: str = "embedded:chelsea"
    crop: Optional[int] = None
    ckpt: Optional[str] = None
    weights: Optional[str] = None  # "zoo": the shipped bench model of this model preset and task (cemap.zoo)
    zoo_seed: int = 0  # which training seed of a shipped model (0, 1, 2 where the zoo has several)
    trained: TrainedRef = field(default_factory=TrainedRef)
    strict: bool = True
    seed: int = 0
    device: str = "auto"
    output_root: str = "outputs"
    progress: bool = True
    figure_bound: Optional[float] = None
    logger: str = "none"
    wandb: WandbRunConfig = field(default_factory=WandbRunConfig)
    subject: Optional[SubjectConfig] = None
    experiment: Optional[ExperimentConfig] = None
    profile: str = "tiny"  # set by the profile group (conf/profile: tiny, bench, paper)


@dataclass
class ScheduleConfig:
    """A training schedule (``conf/train/*.yaml``): every value here changes the trained weights."""

    steps: int = 1000
    batch_size: int = 16
    patch_size: int = 48
    loss: str = "l1"
    optimizer: str = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    scheduler: str = "cosine"
    warmup_steps: int = 0
    eta_min_ratio: float = 0.01
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.5
    ema_decay: float = 0.999
    grad_clip: float = 0.0
    amp: bool = False  # bf16 autocast on CUDA
    amp_on_cpu: bool = False  # ... and on the CPU too (AVX512-BF16 CPUs train ~1.8x faster; fp32 there when off)
    channels_last: bool = False  # channels-last memory for the model and its batches (faster convolutions on the CPU)
    val_every: int = 250
    checkpoint_every: int = 100
    log_every: int = 1  # training-loss rows in metrics.csv (result-neutral; > 1 spares a GPU sync per step)


@dataclass
class WandbConfig:
    project: str = "cemap"
    group: Optional[str] = None


@dataclass
class TrainConfig:
    model: Any = MISSING
    task: Any = MISSING
    mix: dict[str, float] = field(default_factory=dict)  # conf/task preset -> weight; empty = single task
    data: Any = MISSING
    val_data: Any = MISSING
    train: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0
    device: str = "auto"
    logger: str = "csv"
    wandb: WandbConfig = field(default_factory=WandbConfig)
    output_root: str = "outputs"
    progress: bool = True
    max_steps_this_run: Optional[int] = None
    max_minutes_this_run: Optional[float] = None  # stop (with a checkpoint) after this long; resume later: GPU leases


def register_configs() -> None:
    if not OmegaConf.has_resolver("csv"):
        # sweeps list their values in the experiment (experiment.subjects); the basic sweeper wants "a,b,c"
        OmegaConf.register_new_resolver("csv", lambda values: ",".join(str(v) for v in values))
    if not OmegaConf.has_resolver("stem"):
        # a readable folder name for an image spec: embedded:chelsea -> chelsea, /data/0801.png -> 0801
        OmegaConf.register_new_resolver("stem", image_stem)
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(name="training_schema", node=TrainConfig)
    cs.store(group="train", name="schedule_schema", node=ScheduleConfig)


def drop_keys(node: dict, dotted_keys: tuple[str, ...]) -> dict:
    """Remove ``a.b.c``-style keys from a plain config dict in place (missing ones are ignored); returns it."""
    for dotted in dotted_keys:
        *parents, leaf = dotted.split(".")
        d = node
        for p in parents:
            d = d.get(p, {})
        d.pop(leaf, None)
    return node


def _compose_with_hydra(name: str, overrides: list[str]) -> DictConfig:
    """``conf/<name>.yaml`` with ``overrides`` and its ``hydra`` node, inside a running Hydra app or outside one."""
    register_configs()
    gh = GlobalHydra.instance()
    if gh.is_initialized():
        from hydra.types import RunMode

        return gh.hydra.compose_config(name, overrides, run_mode=RunMode.RUN, with_log_configuration=False)  # type: ignore[union-attr]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(name, overrides=overrides, return_hydra_config=True)


def compose_config(name: str, overrides: list[str], with_choices: bool = False) -> DictConfig:
    """Compose ``conf/<name>.yaml`` with ``overrides``, inside a running Hydra app or outside one.

    With ``with_choices`` the result keeps ``hydra.runtime.choices`` (which preset each group resolved to) under
    ``_choices``; the ``hydra`` node itself is always removed so configs hash the same wherever they were composed.
    """
    cfg = _compose_with_hydra(name, overrides)
    choices = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
        if with_choices:
            cfg["_choices"] = {k: v for k, v in choices.items() if not k.startswith("hydra")}
    return cfg


SWEPT_BY_EVERY_EXPERIMENT = ("subject", "image")


def experiment_variants(overrides: list[str]) -> list[list[str]]:
    """An experiment's own sweep parameters (``hydra.sweeper.params`` beyond subjects and images: an ablation's
    values, e.g. ``cem.n_samples: 2,4,8,32``) as one override list per combination; ``[[]]`` when it has none."""
    from itertools import product

    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = _compose_with_hydra("run", overrides).hydra.sweeper.params or {}
    swept = [f"{k}={params[k]}" for k in params.keys() if k not in SWEPT_BY_EVERY_EXPERIMENT]
    parsed = OverridesParser.create().parse_overrides(swept)
    values = [[f"{o.key_or_group}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
              else [f"{o.key_or_group}={o.get_value_element_as_str()}"] for o in parsed]
    return [list(combination) for combination in product(*values)]


def training_overrides(model_preset: str, task_preset: str, trained: TrainedRef | DictConfig, output_root: str) -> list[str]:
    """``python -m cemap.train`` overrides that train the model a run refers to through ``trained``."""
    args = [f"model={model_preset}", f"train={trained.schedule}", f"data={trained.data}", f"output_root={output_root}"]
    if trained.mix:
        args.append("++mix={" + ", ".join(f"{k}: {v}" for k, v in trained.mix.items()) + "}")
    else:
        args.insert(1, f"task={task_preset}")
    return args
