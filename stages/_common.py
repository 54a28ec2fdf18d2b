"""Glue shared by the stage CLIs: args, params, logging, errors, tracking, checkpoints."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import tracking
from exsearch.config import ConfigError, Params, checkpoint_step, load_params

T = TypeVar("T")

# Checkpoints (base, iter_0, iter_k) live outside runs/, which holds only the records the report
# reads (trajectories, weights, stats, predictions, metrics): so the report does not depend on
# models, and runs/ stays small enough to diff and copy. Both are only the defaults of the
# stages' path arguments, for runs by hand: dvc.yaml passes every path explicitly.
MODELS = Path("models")
RUNS = Path("runs")


def checkpoint_dir(name: str) -> Path:
    """The model folder of checkpoint `name` (models/base, models/iter_0, models/iter_k)."""
    return MODELS / name


def run_dir(name: str) -> Path:
    """The record folder of checkpoint `name` (runs/warmup, runs/iter_k)."""
    return RUNS / name


def fail(message: object) -> NoReturn:
    """Stop the stage on bad input: `error: <message>` on stderr, exit status 1, no traceback.

    The one way a stage exits on an error (argparse's usage errors aside). It raises
    SystemExit with the text, which Python prints to stderr before exiting with status 1, so a
    caller in the same process (a test, `stage_run`) sees the message as the exception's text.
    """
    raise SystemExit(f"error: {message}")


def parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser with the options every stage takes."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def checkpoint_name(value: str) -> str:
    """The type of `--iteration`: a checkpoint name (base, iter_<n>) and nothing else.

    The name becomes a folder under runs/ and models/, so `--iteration ../../x` must be refused
    before it writes outside them, with the message the params' checkpoint names get.
    """
    try:
        checkpoint_step(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return value


def add_path(p: argparse.ArgumentParser, flag: str, default: Path | None, help: str) -> None:
    """A path argument; `help` names the default itself when it is None (derived from others)."""
    text = help if default is None else f"{help} (default: %(default)s)"
    p.add_argument(flag, type=Path, default=default, help=text)


def setup(args: argparse.Namespace) -> Params:
    """Configure logging and load params; a bad params file exits with its message, not a trace."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return load_params(args.params)
    except ConfigError as e:
        fail(e)


@contextlib.contextmanager
def stage_run(
    params: Params, stage: str, iteration: str | None = None, sections: list[str] | None = None
) -> Iterator[tracking.StageRun]:
    """`tracking.stage_run` for a stage CLI: a store it cannot use stops the stage through `fail`.

    That is a required store that is unusable before the work starts or fails during it: the
    stage prints the message (what failed, what to do), not a traceback.
    """
    try:
        with tracking.stage_run(params, stage, iteration, sections) as run:
            yield run
    except tracking.TrackingError as e:
        fail(e)


def or_fail(call: Callable[..., T], *args: Any) -> T:
    """`call(*args)`; a ValueError it raises (bad input, said in its message) becomes `fail`.

    For the library calls that check their input, such as `exsearch.retrieval.open_index`:
    the stage exits with one `error:` line instead of a traceback.
    """
    try:
        return call(*args)
    except ValueError as e:
        fail(e)


def model_dir(path: Path | None, params: Params, iteration: str, prev: str | None) -> Path:
    """`path` if given, else models/<prev>, `prev` defaulting to em.iters' link of `iteration`.

    DVC passes the model folder; by hand `--iteration iter_2` alone finds it from params.yaml.
    """
    if path is not None:
        return path
    if prev is None:
        if (link := params.em.iters.get(iteration)) is None:
            fail(f"{iteration} is not in params.yaml em.iters; pass --prev or --model")
        prev = link.prev
    return checkpoint_dir(prev)
