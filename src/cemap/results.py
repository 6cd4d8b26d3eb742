"""The one place that owns result file names and formats, and writes them atomically.

A causal effect map is stored as two files side by side: ``cem.npz`` (arrays) and ``cem.json`` (metadata and
statistics, human-readable). Every write goes to a temporary file in the same folder, is flushed to disk and then
renamed over the target, so a job killed at any moment leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from cemap.validation import SettingError

log = logging.getLogger(__name__)

RESULT_ARRAYS = "cem.npz"
RESULT_META = "cem.json"
FIGURE = "cem.png"
SUMMARY = "summary.json"
PARTIAL_SUFFIX = ".partial.npz"
DECOMPOSITION_ARRAYS = "decomposition.npz"
DECOMPOSITION_META = "decomposition.json"
FIRST_ORDER_DIR = "first_order"
CEM_LAM_FIGURE = "cem_lam.png"
LAM_ARRAYS = "lam.npz"
LAM_META = "lam.json"

STATUS_ESTIMATED = 0
"""The block's effect is a mean over interventions."""
STATUS_SCREENED = 1
"""The coarse stage found no difference of at least ``tol``; effect set to 0 (the paper's rule)."""
STATUS_STRUCTURAL_ZERO = 2
"""The block cannot reach the ROI (outside a verified receptive field); effect exactly 0 without any forward pass."""
STATUS_NOT_COMPUTED = 3
"""Outside this shard; filled in when shards are merged."""


def image_stem(spec: str) -> str:
    """A readable name of an image spec, for job folders and tables: ``embedded:chelsea`` -> ``chelsea``,
    ``/data/0801.png`` -> ``0801`` (the sweeps' ``${stem:...}`` resolver and the runner's analysis both use it)."""
    return Path(str(spec).split(":")[-1]).stem


def sweep_dir(output_root: str | Path, experiment: str, variant: str = "") -> Path:
    """The folder of an experiment sweep's job folders: ``<output_root>/experiments/<experiment>[-<variant>]`` (a
    variant per profile other than tiny, and for smoke runs, so they never mix with the default sweep)."""
    return Path(output_root) / "experiments" / (f"{experiment}-{variant}" if variant else experiment)


class ResultWriteError(OSError):
    """A result could not be written (disk full, permissions); earlier files are left intact."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()
"""Mode of written files: what ``open()`` would give under the process umask (``mkstemp`` alone gives 0600, so a
colleague on a shared cluster could not read the results)."""


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ResultWriteError(f"cannot write into {str(path.parent)!r}: {exc.strerror or exc}") from exc
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise ResultWriteError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from exc
        raise
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_json(path: Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def merge_json_records(path: Path, records: dict[str, Any]) -> dict[str, Any]:
    """Add ``records`` to the JSON object at ``path`` (same keys replaced) and return the merged object.

    Read, update and write happen under a blocking ``flock`` on a side file, so processes that finish at the same
    time (two training runs sharing an output root) keep each other's records instead of the last writer's only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        merged = read_json(path) if path.is_file() else {}
        merged.update(records)
        atomic_write_json(path, merged)
    return merged


def atomic_save_npz(path: Path, **arrays: np.ndarray) -> Path:
    return _atomic_write(path, lambda fh: np.savez(fh, **arrays))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile)
"""What reading a truncated or bit-flipped .npz raises."""


class DamagedResultError(ValueError):
    """A cached result's files cannot be read (truncated, bit-flipped): the cache entry is rebuilt."""


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


@dataclass
class CEMResult:
    """A causal effect map over a (rows, cols) block grid, with its uncertainty and provenance.

    ``effects`` are oriented so that positive = the block's real content helps the ROI. ``se`` is the standard error of
    each effect (NaN where no samples estimate it), ``n`` the draws the estimate averages, ``forwards`` the model
    evaluations spent on the block, ``status`` one of the ``STATUS_*`` codes.
    """

    effects: np.ndarray
    se: np.ndarray
    n: np.ndarray
    forwards: np.ndarray
    significant: np.ndarray
    status: np.ndarray
    roi_mask: np.ndarray
    origin: float
    meta: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.effects.shape)  # type: ignore[return-value]

    @property
    def psnr_only(self) -> bool:
        """A PSNR-only run (``cem.psnr_only``): the unmodified input's scores, no block computed, so no map."""
        return bool((self.status == STATUS_NOT_COMPUTED).all())

    @property
    def total_forwards(self) -> int:
        """Forward passes, the unmodified input's included."""
        return int(self.forwards.sum()) + 1

    def save(self, directory: str | Path) -> Path:
        """Write ``cem.npz`` and ``cem.json`` into ``directory``; returns the directory."""
        d = Path(directory)
        arrays = {
            "effects": self.effects,
            "se": self.se,
            "n": self.n,
            "forwards": self.forwards,
            "significant": self.significant,
            "status": self.status,
            "roi_mask": self.roi_mask,
            "origin": np.float64(self.origin),
        }
        arrays.update({f"samples_{k}": v for k, v in self.samples.items()})
        atomic_save_npz(d / RESULT_ARRAYS, **arrays)
        atomic_write_json(d / RESULT_META, self.meta)
        return d

    @classmethod
    def load(cls, directory: str | Path) -> CEMResult:
        d = Path(directory)
        try:
            with np.load(d / RESULT_ARRAYS, allow_pickle=False) as z:
                a = {k: z[k] for k in z.files}
            meta = read_json(d / RESULT_META)
        except (*UNREADABLE, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DamagedResultError(f"result in {str(d)!r} is damaged ({type(exc).__name__}: {exc})") from exc
        return cls(
            effects=a["effects"],
            se=a["se"],
            n=a["n"],
            forwards=a["forwards"],
            significant=a["significant"],
            status=a["status"],
            roi_mask=a["roi_mask"],
            origin=float(a["origin"]),
            meta=meta,
            samples={k[len("samples_") :]: v for k, v in a.items() if k.startswith("samples_")},
        )

    @staticmethod
    def exists(directory: str | Path) -> bool:
        d = Path(directory)
        return (d / RESULT_ARRAYS).is_file() and (d / RESULT_META).is_file()


def save_partial(path: Path, key: str, origin: np.ndarray, stages: list[np.ndarray]) -> Path:
    """Persist the samples measured so far, so an interrupted run resumes from its last completed batch."""
    arrays = {f"stage{i}": s for i, s in enumerate(stages)}
    return atomic_save_npz(path, key=np.array(key), origin=np.asarray(origin, dtype=np.float64), **arrays)


def load_partial(path: Path, key: str) -> tuple[np.ndarray, list[np.ndarray]] | None:
    """The saved origin and per-stage samples if ``path`` holds a partial run with the same ``key``."""
    p = Path(path)
    if not p.is_file():
        return None
    try:
        with np.load(p, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            stages = [z[f"stage{i}"] for i in range(sum(1 for f in z.files if f.startswith("stage")))]
            return z["origin"], stages
    except (*UNREADABLE, KeyError) as exc:
        log.warning("partial state %s is damaged (%s): starting this map over", p, type(exc).__name__)
        return None  # unreadable partial state: start over rather than trust it


def partial_path(directory: str | Path) -> Path:
    """Where an unfinished map's samples are kept between interruptions."""
    return Path(directory) / ("cem" + PARTIAL_SUFFIX)


def partial_part_path(path: str | Path, part: int) -> Path:
    """The partial state of one part of a map whose ROIs run apart (each part resumes on its own)."""
    p = Path(path)
    stem = p.name[: -len(PARTIAL_SUFFIX)] if p.name.endswith(PARTIAL_SUFFIX) else p.stem
    return p.with_name(f"{stem}.part{part}{PARTIAL_SUFFIX}")


def remove_partials(directory: str | Path) -> None:
    """Drop a finished map's partial state: the whole map's and its parts'."""
    for f in Path(directory).glob("cem*" + PARTIAL_SUFFIX):
        f.unlink(missing_ok=True)


class ResultLockedError(RuntimeError):
    """Another job holds the lock of this result folder."""


@contextlib.contextmanager
def exclusive(directory: str | Path) -> Iterator[None]:
    """Hold ``directory``'s lock for the duration, so two jobs never interleave writes to one result.

    The lock is an OS advisory lock (``flock``): it is released when the process dies, even by SIGKILL.
    """
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fh = open(d / ".lock", "a+")
    except OSError as exc:
        raise ResultWriteError(f"cannot create result folder {str(d)!r}: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ResultLockedError(f"another job is writing {str(d)!r}; wait for it or use another output_root") from None
        for stale in d.glob(".*.tmp"):  # left by a writer killed mid-write; we hold the lock, so nobody owns them
            stale.unlink(missing_ok=True)
        yield
    finally:
        fh.close()


SHARD_NEUTRAL_META = ("blocks", "forwards", "seconds", "job_key", "config", "git_commit", "shard", "state_key",
                      "batch_size")
"""Metadata that legitimately differs between the shards of one map (the batch size, chosen automatically per GPU,
never changes a map)."""


def parse_shard(spec: str, n_blocks: int) -> list[int]:
    """Flat block indices of shard ``"i/n"``: every n-th block starting at i, so shards cost about the same."""
    try:
        i, n = (int(v) for v in str(spec).split("/"))
    except ValueError:
        raise SettingError(f"cem.shard={spec!r} must look like i/n, e.g. 0/3") from None
    if n < 1 or not 0 <= i < n:
        raise SettingError(f"cem.shard={spec!r}: need 0 <= i < n")
    return list(range(i, n_blocks, n))


def check_all_shards_present(shards: list[CEMResult]) -> None:
    """Refuse to merge ``i/n`` shards when some ``i`` is missing: the merged map would have blocks never computed."""
    specs = [str(s.meta.get("shard")) for s in shards if s.meta.get("shard")]
    if not specs:
        return
    counts = {int(spec.split("/")[1]) for spec in specs}
    if len(counts) != 1 or len(specs) != len(shards):
        raise SettingError(f"shards of different splits cannot be merged: {sorted(specs)}")
    n = counts.pop()
    missing = sorted(set(range(n)) - {int(spec.split("/")[0]) for spec in specs})
    if missing:
        raise SettingError(f"shard(s) {', '.join(f'{i}/{n}' for i in missing)} missing: merge all {n} shards")


def merge_shards(shards: list[CEMResult]) -> CEMResult:
    """Merge shards of one map (same image, model, settings, seed) into the map of the unsharded run.

    Every block's draws depend only on (seed, stage, block), so the merged map is exactly the unsharded one.
    """
    if not shards:
        raise SettingError("no shards to merge")
    first = shards[0]
    reference = {k: v for k, v in first.meta.items() if k not in SHARD_NEUTRAL_META}
    for other in shards[1:]:
        mine = {k: v for k, v in other.meta.items() if k not in SHARD_NEUTRAL_META}
        differing = sorted(k for k in set(reference) | set(mine) if reference.get(k) != mine.get(k))
        if differing or other.origin != first.origin or other.shape != first.shape:
            raise SettingError(f"shards do not belong to one map: they differ in {differing or ['origin/grid']}")
    check_all_shards_present(shards)
    merged = CEMResult(
        effects=first.effects.copy(), se=first.se.copy(), n=first.n.copy(), forwards=first.forwards.copy(),
        significant=first.significant.copy(), status=first.status.copy(), roi_mask=first.roi_mask.copy(),
        origin=first.origin, meta=dict(first.meta),
    )
    covered = first.status != STATUS_NOT_COMPUTED
    for other in shards[1:]:
        mask = other.status != STATUS_NOT_COMPUTED
        if (mask & covered).any():
            raise SettingError("two shards computed the same block")
        for name in ("effects", "se", "n", "significant", "status"):
            getattr(merged, name)[mask] = getattr(other, name)[mask]
        covered |= mask
    merged.forwards = sum(s.forwards for s in shards)  # each shard counts the forwards of its own blocks
    merged.meta.update(blocks=None if covered.all() else np.flatnonzero(covered).tolist(), shard=None,
                       forwards=int(sum(s.meta.get("forwards", 0) for s in shards)),
                       seconds=float(sum(s.meta.get("seconds", 0.0) for s in shards)))
    return merged


class OutsideOutputRootError(ValueError):
    """A write location derived from the config would leave the configured output root."""


def ensure_inside(root: str | Path, path: str | Path) -> Path:
    """``path`` resolved, if it lies inside ``root``; names taken from configs (experiment, subject, image) can
    then never make a job write elsewhere (``../`` or absolute paths)."""
    r, p = Path(root).resolve(), Path(path).resolve()
    if p != r and r not in p.parents:
        raise OutsideOutputRootError(f"refusing to write {str(p)!r}: it is outside output_root {str(r)!r}")
    return p
