"""Each stage's `cmd` in dvc.yaml passes every path the stage reads and writes, and names no path
that is not one of its deps or outs: DVC tracks exactly what the stage touches. By hand, the
paths default to the pipeline's layout."""

from __future__ import annotations

import importlib
import shlex
from pathlib import Path

import pytest

from exsearch.config.params import Params
from stages._common import model_dir
from tests.test_stage_deps import declared, outs, stages

# Deps a stage reads because params.yaml names them, not its command line: prepare reads the
# files `prepare.train`/`dev`/`corpus` list, all under data/raw; init_model the GGUF file
# `model.gguf_file`.
NAMED_BY_PARAMS = {"prepare": {"data/raw"}, "init_model": {"${model.gguf_file}"}}


def cmd_paths(cmd: str) -> dict[str, str]:
    """`{option: path}` of the paths a stage's command passes.

    A `python -m stages.x` command is parsed with that stage's own parser (so an option it does
    not know fails here, not in `dvc repro`), and its paths are its `type=Path` options; any
    other command (a script) is taken to pass only paths.
    """
    argv = shlex.split(cmd)
    if argv[1] == "-m" and argv[2].startswith("stages."):
        parser = importlib.import_module(argv[2]).build_parser()
        # DVC fills `--iteration ${key}` (`${item}` in em.evaluate's foreach) with a name the
        # params validate as a checkpoint name, as `--iteration` does: any such name stands in.
        given_argv = argv[3:]
        filled = [
            "iter_1" if flag == "--iteration" and value in ("${key}", "${item}") else value
            for flag, value in zip(["", *given_argv], given_argv, strict=False)
        ]
        args = parser.parse_args(filled)
        given = set(given_argv)
        return {
            option: str(getattr(args, action.dest))
            for action in parser._actions
            if action.type is Path
            for option in action.option_strings
            if option in given
        }
    options = argv[2:]
    return dict(zip(options[::2], options[1::2], strict=True))


def data_deps(stage: dict) -> set[str]:
    """The deps that are not code: the files and folders the stage reads."""
    return {str(Path(d)) for d in declared(stage) if not d.endswith(".py")}


def test_cmd_paths_reads_a_stage_command_with_its_parser():
    cmd = "python -m stages.weigh --iteration ${key} --model models/${item.prev} --out w.parquet"
    assert cmd_paths(cmd) == {"--model": "models/${item.prev}", "--out": "w.parquet"}


def test_an_option_a_stage_does_not_take_fails_the_check():
    with pytest.raises(SystemExit):
        cmd_paths("python -m stages.weigh --iteration iter_1 --modle models/iter_0")


@pytest.mark.parametrize("name", sorted(stages()))
def test_every_path_a_stage_cmd_names_is_a_dep_or_an_out(name):
    stage = stages()[name]
    known = data_deps(stage) | {str(Path(o)) for o in outs(stage)}
    stray = {o: p for o, p in cmd_paths(stage["cmd"]).items() if p not in known}
    assert not stray, f"dvc.yaml stage '{name}' passes paths that are no dep or out: {stray}"


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_cmd_names_every_out(name):
    stage = stages()[name]
    named = set(cmd_paths(stage["cmd"]).values())
    missing = sorted(str(Path(o)) for o in outs(stage) if str(Path(o)) not in named)
    assert not missing, f"dvc.yaml stage '{name}' writes {missing} without its cmd naming them"


@pytest.mark.parametrize("name", sorted(stages()))
def test_a_stage_cmd_names_every_file_it_reads(name):
    stage = stages()[name]
    named = set(cmd_paths(stage["cmd"]).values())
    unnamed = sorted(data_deps(stage) - named - NAMED_BY_PARAMS.get(name, set()))
    assert not unnamed, f"dvc.yaml stage '{name}' reads {unnamed} without its cmd naming them"


def params_with(iters: dict) -> Params:
    em = {"iters": iters, "evaluate": ["iter_0", *list(iters)[-1:]]}
    return Params.model_validate({"prepare": {"train": [], "dev": []}, "em": em})


def test_by_hand_the_model_is_the_previous_checkpoint_params_yaml_names():
    params = params_with({"iter_1": {"prev": "iter_0"}, "iter_2": {"prev": "iter_1"}})
    assert model_dir(None, params, "iter_2", None) == Path("models/iter_1")
    assert model_dir(None, params, "iter_2", "iter_0") == Path("models/iter_0")
    assert model_dir(Path("elsewhere"), params, "iter_2", "iter_0") == Path("elsewhere")


def test_an_iteration_params_yaml_does_not_chain_needs_prev_or_model():
    with pytest.raises(SystemExit, match="iter_5 is not in params.yaml em.iters"):
        model_dir(None, params_with({"iter_1": {"prev": "iter_0"}}), "iter_5", None)
