import copy
import re
from pathlib import Path

import pytest
import yaml

from exsearch.config.params import ConfigError, checkpoint_step, load_params, parse_params

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def raw():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_the_shipped_params_files_are_valid():
    load_params(ROOT / "params.yaml")
    load_params(ROOT / "tests" / "testdata" / "params.tiny.yaml")
    for extra in sorted((ROOT / "configs").glob("params.*.yaml")):
        load_params(extra)


def test_a_wrong_type_names_the_key_and_the_file(raw):
    raw["agent"]["top_k"] = "five"
    with pytest.raises(ConfigError, match=r"(?s)params\.yaml.*agent\.top_k"):
        parse_params(raw, "params.yaml")


def test_an_unknown_key_names_the_key(raw):
    raw["train"]["learning_rte"] = 1e-4
    with pytest.raises(ConfigError, match=r"train\.learning_rte: unknown key"):
        parse_params(raw)


def test_an_unknown_section_is_an_error(raw):
    raw["trian"] = {}
    with pytest.raises(ConfigError, match="trian: unknown key"):
        parse_params(raw)


def test_a_missing_required_key_is_named(raw):
    del raw["prepare"]["dev"]
    with pytest.raises(ConfigError, match=r"prepare\.dev: required key is missing"):
        parse_params(raw)


def test_every_bad_key_is_reported_at_once(raw):
    raw["index"]["k1"] = "x"
    raw["sample"]["k"] = 0
    with pytest.raises(ConfigError) as err:
        parse_params(raw)
    assert "index.k1" in str(err.value) and "sample.k" in str(err.value)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_a_float_param_must_be_finite(raw, value):
    raw["warmup"]["learning_rate"] = value
    with pytest.raises(ConfigError, match=r"warmup\.learning_rate: .*finite"):
        parse_params(raw)


@pytest.mark.parametrize(
    ("key", "value"), [("seed", -1), ("seed", 2**31), ("train.seed", -1), ("sample.seed", 2**40)]
)
def test_a_seed_out_of_range_is_refused_before_any_work(raw, key, value):
    *section, name = key.split(".")
    (raw[section[0]] if section else raw)[name] = value
    with pytest.raises(ConfigError, match=re.escape(f"{key}:")):
        parse_params(raw)


def test_omitted_sections_take_the_defaults(raw):
    params = parse_params({"prepare": raw["prepare"]})
    assert params.agent.top_k == 5 and params.weigh.scheme == "softmax"


def test_exponent_floats_are_numbers(tmp_path, raw):
    raw["train"]["learning_rate"] = "PLACEHOLDER"
    text = yaml.safe_dump(raw).replace("PLACEHOLDER", "3e-4")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.learning_rate == 3e-4


# Scalars on which YAML 1.1 (PyYAML) and YAML 1.2 (ruamel.yaml, DVC's parser) disagree, and a
# few on which they agree: params.yaml must mean to the stages what it means to dvc.lock.
YAML_SCALARS = "a: on\nb: yes\nc: off\nd: 017\ne: 0o17\nf: 1e-4\ng: 0x1F\nh: 1_000\ni: .5\n"


def test_params_are_read_as_dvc_reads_them():
    from dvc.utils.serialize import parse_yaml

    from exsearch.config.strict_yaml import load_yaml

    ours = load_yaml(YAML_SCALARS)
    assert ours == parse_yaml(YAML_SCALARS, "params.yaml")
    assert ours["a"] == "on" and ours["d"] == 17 and ours["e"] == 15 and ours["f"] == 1e-4


def test_a_yaml11_boolean_word_is_refused_not_read_as_true(tmp_path, raw):
    raw["train"].setdefault("weighted", {})["well_formed_only"] = "PLACEHOLDER"
    text = yaml.safe_dump(raw).replace("PLACEHOLDER", "on")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"train\.weighted\.well_formed_only:.*boolean.*'on'"):
        load_params(tmp_path / "params.yaml")


def test_a_duplicate_key_names_its_first_line_even_deep_in_a_section(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "prepare: {train: [], dev: []}\n"
        "train:\n"
        "  epochs: 2\n"
        "  weighted:\n"
        "    well_formed_only: true\n"
        "    min_weight: 0.0\n"
        "    well_formed_only: false\n"
    )
    with pytest.raises(
        ConfigError, match=r"params\.yaml:7: duplicate key 'well_formed_only'.*line 5"
    ):
        load_params(params)


def test_yaml_syntax_errors_name_the_file(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("prepare: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_the_em_chain_must_link_to_earlier_iterations(raw):
    raw["em"]["iters"]["iter_3"] = {"prev": "iter_7"}
    raw["em"]["evaluate"].append("iter_3")
    with pytest.raises(ConfigError, match="iter_3.prev"):
        parse_params(raw)


def test_the_warm_up_and_the_last_iteration_must_be_evaluated(raw):
    for end in ("iter_0", "iter_2"):
        bad = copy.deepcopy(raw)
        bad["em"]["evaluate"].remove(end)
        with pytest.raises(ConfigError, match=end):
            parse_params(bad)


def test_iterations_between_the_ends_may_go_unevaluated(raw):
    raw["em"]["evaluate"].remove("iter_1")
    assert parse_params(raw).em.evaluate == ["base", "iter_0", "iter_2"]


def test_baselines_at_the_ends_run_only_at_the_first_and_last_checkpoint_scored(raw):
    raw["evaluate"]["methods"] = ["agent", "rag", "direct"]
    raw["evaluate"]["baselines"] = "ends"
    params = parse_params(raw)
    assert params.methods_at("base") == ["agent", "rag", "direct"]
    assert params.methods_at("iter_0") == params.methods_at("iter_1") == ["agent"]
    assert params.methods_at("iter_2") == ["agent", "rag", "direct"]
    raw["evaluate"]["baselines"] = "all"
    assert parse_params(raw).methods_at("iter_1") == ["agent", "rag", "direct"]
    raw["evaluate"]["baselines"] = "middle"
    with pytest.raises(ConfigError, match="baselines"):
        parse_params(raw)


def add_iteration(raw, name, prev="iter_2"):
    raw["em"]["iters"][name] = {"prev": prev}
    raw["em"]["evaluate"].append(name)
    return raw


def test_an_iteration_named_iter_x_is_refused(raw):
    with pytest.raises(ConfigError, match=r"em\.iters\.iter_x.*iter_<n>"):
        parse_params(add_iteration(raw, "iter_x"))


def test_an_iteration_with_a_leading_zero_is_refused_as_it_would_collide(raw):
    with pytest.raises(ConfigError, match=r"em\.iters\.iter_01.*write iter_1"):
        parse_params(add_iteration(raw, "iter_01", prev="iter_0"))


def test_iter_0_is_the_warm_up_not_an_em_iteration(raw):
    raw["em"]["iters"] = {"iter_0": {"prev": "iter_0"}, **raw["em"]["iters"]}
    with pytest.raises(ConfigError, match=r"em\.iters\.iter_0: iter_0 is the warm-up"):
        parse_params(raw)


def test_an_iteration_name_must_be_iter_and_a_number(raw):
    with pytest.raises(ConfigError, match="final"):
        parse_params(add_iteration(raw, "final"))


def test_checkpoint_names_have_one_parser():
    assert [checkpoint_step(n) for n in ("base", "iter_0", "iter_12")] == [-1, 0, 12]
    for bad in ("iter_01", "iter_x", "iter_-1", "final", "iter_1 "):
        with pytest.raises(ValueError, match="not a checkpoint name"):
            checkpoint_step(bad)


def test_a_misspelt_lr_scheduler_is_refused_with_the_choices(raw):
    raw["train"]["lr_scheduler"] = "cosin"
    with pytest.raises(ConfigError, match=r"(?s)train\.lr_scheduler.*'cosine'.*'cosin'"):
        parse_params(raw)


def test_the_lr_scheduler_choices_are_transformers_scheduler_types():
    from typing import get_args

    from transformers.trainer_utils import SchedulerType

    from exsearch.config.training import Scheduler

    assert set(get_args(Scheduler)) == {s.value for s in SchedulerType}


def test_a_duplicate_key_in_params_yaml_is_refused_with_key_and_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(
        "prepare: {train: [], dev: []}\n"
        "train:\n"
        "  learning_rate: 1.0e-4\n"
        "  epochs: 2\n"
        "  learning_rate: 5.0e-4\n"
    )
    with pytest.raises(ConfigError, match=r"params\.yaml:5: duplicate key 'learning_rate'.*line 3"):
        load_params(params)


def test_a_duplicate_section_is_refused_too(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("prepare: {train: [], dev: []}\nseed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"params\.yaml:3: duplicate key 'seed'"):
        load_params(params)


def test_a_duplicate_beside_a_merge_key_is_refused_and_an_override_is_not(tmp_path):
    from exsearch.config.strict_yaml import load_yaml

    assert load_yaml("b: &b {x: 1, y: 0}\nm: {<<: *b, y: 3}\n")["m"] == {"x": 1, "y": 3}
    params = tmp_path / "params.yaml"
    params.write_text("prepare: {train: [], dev: []}\nb: &b {x: 1}\nm: {<<: *b, y: 1, y: 2}\n")
    with pytest.raises(ConfigError, match=r"params\.yaml:3: duplicate key 'y'"):
        load_params(params)


def test_params_that_are_not_utf8_name_the_file_and_line(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_bytes(b"prepare: {train: [], dev: []}\n# caf\xe9\nseed: 1\n")
    with pytest.raises(ConfigError, match=r"params\.yaml:2: not UTF-8 \(byte 0xe9 at column 6\)"):
        load_params(params)


def test_a_stage_cli_exits_with_the_message_not_a_traceback(tmp_path, raw):
    import subprocess
    import sys

    raw["index"]["stemer"] = "english"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    run = subprocess.run(
        [sys.executable, "-m", "stages.index", "--params", str(tmp_path / "params.yaml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    assert "index.stemer: unknown key" in run.stderr and "Traceback" not in run.stderr
