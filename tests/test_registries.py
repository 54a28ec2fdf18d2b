"""One list per registry: every name params.yaml may give is one the library knows, and back.

params.yaml is validated before any work by `Literal`s in exsearch.config, which must not import
the library; the library keeps the registry that does the work. These tests are what keeps the
two lists one: a name added to either side alone fails here.
"""

from __future__ import annotations

from typing import get_args

import pytest

from exsearch.agent import METHODS
from exsearch.config import LEARNER_SECTIONS, CorpusFile, DatasetFile, IndexConfig, TrainConfig
from exsearch.config.params import EvaluateConfig
from exsearch.config.training import WeighConfig
from exsearch.data.corpus import CORPUS_READERS
from exsearch.data.datasets import DATASET_READERS
from exsearch.estep.weighting import SCHEMES
from exsearch.mstep import LEARNERS
from exsearch.retrieval import INDEX_KINDS


def literal_names(model, field: str) -> set[str]:
    """The names a config field's `Literal` allows (inside a `list[...]` too)."""
    annotation = model.model_fields[field].annotation
    args = get_args(annotation)
    if args and not isinstance(args[0], str):  # list[Literal[...]]
        args = get_args(args[0])
    return set(args)


def disagreement(config: set[str], library) -> str:
    """'' when both lists name the same things, else what each lacks."""
    library = set(library)
    if config == library:
        return ""
    return f"only in the config: {sorted(config - library)}; only in the library: {sorted(library - config)}"


REGISTRIES = {
    "weigh.scheme / estep SCHEMES": (WeighConfig, "scheme", SCHEMES),
    "index.kind / retrieval INDEX_KINDS": (IndexConfig, "kind", INDEX_KINDS),
    "prepare dataset format / data DATASET_READERS": (DatasetFile, "format", DATASET_READERS),
    "prepare corpus format / data CORPUS_READERS": (CorpusFile, "format", CORPUS_READERS),
    "evaluate.methods / agent METHODS": (EvaluateConfig, "methods", METHODS),
    "train.method / mstep LEARNERS": (TrainConfig, "method", LEARNERS),
}


@pytest.mark.parametrize("name", sorted(REGISTRIES))
def test_the_config_and_the_library_list_the_same_names(name):
    model, field, registry = REGISTRIES[name]
    assert not (why := disagreement(literal_names(model, field), registry)), f"{name}: {why}"


def test_every_learner_has_its_section_under_train():
    assert set(LEARNER_SECTIONS) == set(LEARNERS)
    assert set(LEARNER_SECTIONS) <= set(TrainConfig.model_fields)


def test_a_name_on_one_side_only_is_caught():
    assert disagreement({"softmax", "exp"}, {"softmax": 1}) == (
        "only in the config: ['exp']; only in the library: []"
    )
    assert disagreement({"softmax"}, {"softmax": 1, "new": 2}).endswith("library: ['new']")
    assert disagreement({"bm25"}, ("bm25",)) == ""
