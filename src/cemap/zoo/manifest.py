"""The bench zoo's manifest (``conf/zoo/bench.yaml``): which models ship, how each is trained, which floor it meets.

A manifest entry names a model preset, a task preset (or the mix), a schedule, the steps, the seeds and a floor; a
``Job`` is one (entry, seed) pair, i.e. one trained model and one shipped file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from cemap.config import CONF_DIR, TrainedRef, training_overrides
from cemap.validation import SettingError

MANIFEST = CONF_DIR / "zoo" / "bench.yaml"
FLOOR_KINDS = ("dn", "sr", "sweep", "mix", "baseline")


@dataclass(frozen=True)
class Job:
    """One bench model to train: an entry of the manifest with one seed."""

    name: str
    model: str
    task: str | None
    mix: dict[str, float] | None
    schedule: str
    steps: int | None
    seed: int
    floor: str
    data: str

    @property
    def key(self) -> str:
        """The shipped file's stem: ``rcan_dn_bench-s1``."""
        return f"{self.name}-s{self.seed}"

    @property
    def tasks(self) -> list[str]:
        """Task presets the model is evaluated on (every task of the mix)."""
        return list(self.mix) if self.mix else [str(self.task)]

    def train_overrides(self, output_root: str | Path, device: str = "auto", steps: int | None = None) -> list[str]:
        """``python -m cemap.train`` arguments that train this job (``steps`` replaces the manifest's)."""
        n = steps if steps is not None else self.steps
        if n is None:
            raise SettingError(f"{self.key}: no steps in the manifest; calibrate first (experiments/train_zoo.py)")
        trained = TrainedRef(schedule=self.schedule, mix=self.mix or {}, data=self.data)
        return [*training_overrides(self.model, str(self.task), trained, str(output_root)), f"seed={self.seed}",
                f"train.steps={n}", f"device={device}", "progress=false"]


@dataclass
class Manifest:
    jobs: list[Job]
    floors: dict[str, float]
    eval: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    equal_steps: list[list[str]] = field(default_factory=list)

    @property
    def eval_crop_and_seed(self) -> tuple[int, int]:
        """The evaluation's test-crop size and degradation seed (``eval.test_crop`` 256, ``eval.seed`` 0 unless set)."""
        return int(self.eval.get("test_crop", 256)), int(self.eval.get("seed", 0))

    def equalise(self, steps: dict[str, int]) -> dict[str, int]:
        """Calibrated steps where the jobs of one ``equal_steps`` set (entries whose PSNR a test compares, every seed)
        all get the fewest any of them was given: steps chosen by speed alone train the slower architecture less
        (channel attention got 22-28% fewer steps than its twin in one lease, gpu_runs.md)."""
        out = dict(steps)
        for names in self.equal_steps:
            keys = [j.key for j in self.jobs if j.name in names and j.key in out]
            out.update({k: min(out[k] for k in keys) for k in keys})
        return out

    def held_partners(self, met: dict[str, bool]) -> dict[str, str]:
        """Jobs evaluated together (``met``: key -> floor met) that meet their floor but do not ship because the
        same seed of a compared entry (an ``equal_steps`` set) missed its floor in the same evaluation: a paired test
        cannot use a lone model. Returns key -> reason."""
        held = {}
        for names in self.equal_steps:
            for seed in {j.seed for j in self.jobs if j.name in names}:
                keys = [j.key for j in self.jobs if j.name in names and j.seed == seed]
                if all(k in met for k in keys) and not all(met[k] for k in keys):
                    missed = ", ".join(k for k in keys if not met[k])
                    held.update({k: f"its pair partner {missed} missed its floor" for k in keys if met[k]})
        return held

    def select(self, names: list[str], group: str | None = None) -> list[Job]:
        """Jobs named (entry name or job key) or in ``group``; all jobs when neither is given."""
        if group is not None and group not in self.groups:
            raise SettingError(f"no zoo group {group!r}; groups: {sorted(self.groups)}")
        wanted = set(names) | set(self.groups.get(group, []) if group else [])
        return [j for j in self.jobs if not wanted or j.key in wanted or j.name in wanted]

    def job(self, key: str) -> Job:
        for j in self.jobs:
            if j.key == key:
                return j
        raise KeyError(f"no bench job {key!r}; known: {', '.join(j.key for j in self.jobs)}")


def _per_seed(entry: dict, key: str) -> list:
    """An entry's ``steps`` or ``schedule``, one per seed: a single value for all, or a list aligned with ``seeds``
    (a GPU calibration gives seeds trained in one lease their own step counts; seeds trained on the CPU may use its
    schedule variant)."""
    value, seeds = entry.get(key), entry["seeds"]
    if not isinstance(value, list):
        return [value] * len(seeds)
    if len(value) != len(seeds):
        raise SettingError(f"zoo entry {entry['name']}: {len(value)} {key} values for {len(seeds)} seeds")
    return value


def load_manifest(path: str | Path = MANIFEST) -> Manifest:
    """A zoo manifest; a pilot's or an exploratory one takes the zoo's floors and evaluation unless it states its own,
    so that its models are judged exactly as the zoo's."""
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    assert isinstance(node, dict)
    if Path(path).resolve() != MANIFEST.resolve():
        zoo = OmegaConf.to_container(OmegaConf.load(MANIFEST), resolve=True)
        assert isinstance(zoo, dict)
        node = {"floors": zoo["floors"], "eval": zoo["eval"], **node}
    jobs = []
    for e in node["entries"]:
        unknown = set(e) - {"name", "model", "task", "mix", "schedule", "steps", "seeds", "floor", "data"}
        if unknown or e["floor"] not in FLOOR_KINDS or bool(e.get("task")) == bool(e.get("mix")):
            raise SettingError(f"bad zoo entry {e}: unknown keys {sorted(unknown)}, floor must be one of {FLOOR_KINDS}, "
                             "and exactly one of task / mix")
        mix = dict(node["mix"]) if e.get("mix") else None
        for seed, steps, schedule in zip(e["seeds"], _per_seed(e, "steps"), _per_seed(e, "schedule")):
            steps = None if steps is None else int(steps)
            jobs.append(Job(e["name"], e["model"], e.get("task"), mix, str(schedule), steps, int(seed),
                            e["floor"], e.get("data", node["data"])))  # an entry may keep the data it shipped with
    groups = {k: list(v) for k, v in node.get("groups", {}).items()}
    equal = [list(names) for names in node.get("equal_steps", [])]
    unknown = {n for names in [*groups.values(), *equal] for n in names} - {j.name for j in jobs}
    if unknown:
        raise SettingError(f"zoo groups or equal_steps name unknown entries: {sorted(unknown)}")
    return Manifest(jobs, dict(node["floors"]), dict(node.get("eval", {})), groups, equal)
