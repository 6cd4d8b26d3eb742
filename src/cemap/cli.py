"""What the command-line entry points (``python -m cemap.run``, ``python -m cemap.train``) do with errors: an error
caused by the user's input or settings, Hydra's own configuration errors included, is one line on stderr and exit
status 2; anything else is a bug and keeps its traceback. ``--debug`` shows tracebacks for everything."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from cemap.checkpoint import CheckpointError
from cemap.config import CONF_DIR, RunConfig, register_configs
from cemap.engine import DeviceError, ModelOutputError
from cemap.grid import GeometryError
from cemap.imageio import ImageError
from cemap.patches import PatchBankError
from cemap.results import DamagedResultError, OutsideOutputRootError, ResultLockedError, ResultWriteError, ensure_inside
from cemap.validation import SettingError
from cemap.zoo import ZooError

USER_ERRORS: tuple[type[BaseException], ...] = (
    GeometryError,
    ImageError,
    PatchBankError,
    CheckpointError,
    ModelOutputError,
    DeviceError,
    DamagedResultError,
    OutsideOutputRootError,
    ResultWriteError,
    ResultLockedError,
    ZooError,
    SettingError,
    FileNotFoundError,
)
"""Errors caused by inputs or settings: reported in one line, not as a traceback. A bare ``ValueError`` or
``TypeError`` is not among them: the project raises ``SettingError`` for a bad setting, so anything else is a bug
and keeps its traceback."""

SETUP_ERRORS: tuple[type[BaseException], ...] = (HydraException, OmegaConfBaseException, NotADirectoryError,
                                                 PermissionError, IsADirectoryError, FileExistsError)
"""Errors before a job starts: a misspelt key or a wrong type in the config, an output root that is a file or
read-only."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` (or of the user error it wraps, as Hydra's instantiation errors do) on one line."""
    cause = exc.__cause__ if isinstance(exc, HydraException) and isinstance(exc.__cause__, USER_ERRORS) else exc
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return "; ".join(lines) or type(cause).__name__


def hydra_entry(task: Callable[[DictConfig], None], config_name: str, prog: str) -> None:
    """Run ``task`` under Hydra with the errors reported as the module docstring says."""
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach this handler instead of Hydra's long report
    register_configs()
    try:
        check_run_dirs(sys.argv[1:])
    except OutsideOutputRootError as exc:
        _fail(prog, exc, debug)

    def guarded(cfg: DictConfig) -> None:  # inside the job, so Hydra does not echo the failed job's overrides first
        try:
            task(cfg)
        except (*USER_ERRORS, HydraException) as exc:  # Hydra's instantiation errors wrap the user error
            _fail(prog, exc, debug)

    try:
        hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(guarded)()
    except (*SETUP_ERRORS, *USER_ERRORS) as exc:
        _fail(prog, exc, debug)


RUN_DIR_KEYS = ("hydra.run.dir", "hydra.sweep.dir")
"""Where Hydra writes its own files (``.hydra/*.yaml``, the log) before any job code runs."""
NAME_ONLY = re.compile(r"\$\{(now|hydra\.job\.\w+|hydra\.runtime\.choices\.\w+):?[^}]*\}")
"""Interpolations that only make a folder name (a date, the job's name), never a path of their own."""


def check_run_dirs(argv: list[str]) -> None:
    """Refuse a ``hydra.run.dir`` / ``hydra.sweep.dir`` given on the command line outside ``output_root`` before
    Hydra creates it (inside the job it would be refused only after Hydra wrote there). ``output_root`` is read from
    the same command line, else the config's default; ``${output_root}`` and name-only interpolations (a date, the
    job's name) are filled in, values with any other interpolation are left to the job's own check."""
    given = dict(a.split("=", 1) for a in argv if "=" in a and not a.startswith(("+", "~")))
    root = given.get("output_root", RunConfig.output_root)
    if "${" in root or "," in root:
        return
    for key in RUN_DIR_KEYS:
        value = NAME_ONLY.sub("name", given.get(key, "").replace("${output_root}", root))
        if value and "${" not in value:  # other interpolations (an environment variable...) are left to the job
            ensure_inside(root, value)


def _fail(prog: str, exc: BaseException, debug: bool) -> None:
    if debug:
        raise exc
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    sys.exit(2)
