"""params.yaml as typed, validated sections, read by one strict loader (`load_params`).

`params.py` holds `Params` and the sections every stage shares; `data.py` the `prepare`
section; `training.py` the warm-up, E-step and M-step sections; `section.py` their strict base;
`strict_yaml.py` the YAML reader that refuses duplicate keys.
"""

from exsearch.config.data import CorpusFile, DatasetFile, PrepareConfig
from exsearch.config.params import (
    AgentConfig,
    ConfigError,
    GenerationConfig,
    IndexConfig,
    Method,
    ModelConfig,
    Params,
    checkpoint_step,
    load_params,
    parse_params,
)
from exsearch.config.training import (
    LEARNER_SECTIONS,
    SampleConfig,
    TrainConfig,
    WarmupConfig,
)

__all__ = [
    "LEARNER_SECTIONS",
    "AgentConfig",
    "ConfigError",
    "CorpusFile",
    "DatasetFile",
    "GenerationConfig",
    "IndexConfig",
    "Method",
    "ModelConfig",
    "Params",
    "PrepareConfig",
    "SampleConfig",
    "TrainConfig",
    "WarmupConfig",
    "checkpoint_step",
    "load_params",
    "parse_params",
]
