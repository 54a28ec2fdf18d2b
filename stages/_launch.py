"""Multi-process training: a training stage re-runs itself under `accelerate launch`.

With `train.launcher` set to an accelerate config file (configs/accelerate/*.yaml), a stage run
the usual way (`python -m stages.train …`, as dvc.yaml does) starts

    accelerate launch --config_file <train.launcher> --num_processes <train.num_processes>
                      -m stages.train …the same arguments…

waits for it and exits with its status, so dvc.yaml does not change. The launched processes see
`WORLD_SIZE`/`LOCAL_RANK` (or the marker below) and run the stage body. Every process trains;
only the main one (rank 0) writes outputs and records the MLflow run.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from exsearch.config import TrainConfig
from stages._common import fail
from tracking import SWITCH_ENV

log = logging.getLogger(__name__)

LAUNCHED_ENV = "EXSEARCH_LAUNCHED"  # set on the launched processes
_LAUNCHER_ENV = ("LOCAL_RANK", "WORLD_SIZE", "ACCELERATE_PROCESS_INDEX")


def is_launched() -> bool:
    """Whether this process was started by a launcher (accelerate, torchrun, deepspeed)."""
    return os.environ.get(LAUNCHED_ENV) == "1" or any(v in os.environ for v in _LAUNCHER_ENV)


def is_main_process() -> bool:
    """Rank 0 of a launched job, or a process that was not launched: the one that writes."""
    return int(os.environ.get("RANK", os.environ.get("ACCELERATE_PROCESS_INDEX", "0"))) == 0


def launch_command(cfg: TrainConfig, module: str, argv: Sequence[str]) -> list[str]:
    """The `accelerate launch` command line that runs `python -m module argv` per `cfg`.

    Raises:
        FileNotFoundError: `cfg.launcher` names no file.
    """
    config = Path(cfg.launcher)
    if not config.is_file():
        raise FileNotFoundError(
            f"train.launcher: {config}: no such accelerate config file (relative paths are "
            "relative to the project root; see configs/accelerate/), or set it to 'none'"
        )
    return [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--config_file", str(config), "--num_processes", str(cfg.num_processes)),
        *("-m", module, *argv),
    ]


def relaunch(cfg: TrainConfig, module: str, argv: Sequence[str] | None) -> int | None:
    """Run the stage under `accelerate launch` if `cfg` asks for it and it is not running so yet.

    Returns the launched job's exit status (the caller exits with it), or None when the stage
    should run in this process; exits with a message when the config file is missing. In a
    launched process other than rank 0, MLflow tracking is switched off: one run records it.
    """
    if is_launched():
        if not is_main_process():
            os.environ[SWITCH_ENV] = "off"
        return None
    if cfg.launcher == "none":
        return None
    try:
        cmd = launch_command(cfg, module, sys.argv[1:] if argv is None else argv)
    except FileNotFoundError as e:
        fail(e)
    log.info("running %s under accelerate: %s", module, " ".join(cmd))
    return subprocess.run(cmd, env={**os.environ, LAUNCHED_ENV: "1"}, check=False).returncode


def ran_under_launcher(cfg: TrainConfig, module: str, argv: Sequence[str] | None) -> bool:
    """`relaunch`, for a stage's main: True when the launched job did the work (return then).

    Exits with an error naming the launcher when the launched job failed.
    """
    if (status := relaunch(cfg, module, argv)) is None:
        return False
    if status:
        fail(f"{module} under {cfg.launcher} exited with {status}")
    return True
