from pathlib import Path

import pytest
import yaml

from exsearch.config import ConfigError, load_params, parse_params

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


def test_omitted_sections_take_the_defaults(raw):
    params = parse_params({"prepare": raw["prepare"]})
    assert params.agent.top_k == 5 and params.weigh.scheme == "softmax"


def test_exponent_floats_are_numbers(tmp_path, raw):
    raw["train"]["learning_rate"] = "PLACEHOLDER"
    text = yaml.safe_dump(raw).replace("PLACEHOLDER", "3e-4")
    (tmp_path / "params.yaml").write_text(text)
    assert load_params(tmp_path / "params.yaml").train.learning_rate == 3e-4


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


def test_every_iteration_must_be_evaluated(raw):
    raw["em"]["evaluate"].remove("iter_2")
    with pytest.raises(ConfigError, match="iter_2"):
        parse_params(raw)


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
