"""Typed, validated view of params.yaml: one section per stage, defaults in one place.

Every stage calls `load_params()` once; a wrong type, a missing required key or an unknown key
raises `ConfigError` naming the file and the dotted key, so a typo never silently falls back to a
default.

`Params` lists every section. Most are defined here; `prepare`'s are in `data.py`, and the
training sections (`warmup`, `sample`, `weigh`, `train` with its learners) in `training.py`.
`strict_yaml.py` reads the YAML itself.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, model_validator

from exsearch.config.data import PrepareConfig
from exsearch.config.section import Section, Seed
from exsearch.config.strict_yaml import DuplicateKeyError, YAMLError, load_yaml
from exsearch.config.training import SampleConfig, TrainConfig, WarmupConfig, WeighConfig
from exsearch.files import read_text

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """params.yaml is malformed; the message names the file and the key."""


class IndexConfig(Section):
    """`index`: the retriever over the prepared corpus, BM25 (default) or dense embeddings."""

    kind: Literal["bm25", "dense"] = Field(
        default="bm25",
        description="'bm25' (bm25s, exsearch.retrieval.bm25) or 'dense' (sentence-transformers "
        "embeddings, exact inner-product search; exsearch.retrieval.dense, needs the `dense` "
        "extra).",
    )
    method: Literal["lucene", "robertson", "atire", "bm25l", "bm25+"] = "lucene"
    k1: float = Field(default=1.5, gt=0)
    b: float = Field(default=0.75, ge=0, le=1)
    stemmer: str | None = Field(default="english", description="PyStemmer language, or null.")
    stopwords: str | None = Field(default="en", description="bm25s stop-word list, or null.")
    dense_model: str = Field(
        default="models/all-MiniLM-L6-v2",
        description="dense: sentence-transformers model, a local dir (the default is fetched by "
        "scripts/fetch_dense_model.py) or a hub name; queries are embedded with the same model.",
    )
    dense_batch_size: int = Field(
        default=64, ge=1, description="dense: texts embedded per forward pass."
    )
    dense_dtype: Literal["float32", "float16"] = Field(
        default="float32",
        description="dense: stored embeddings. float16 halves disk and memory, but every "
        "search converts the rows it reads to float32 (on a CPU ~10x slower than float32).",
    )


class ModelConfig(Section):
    """`model`: where iteration 0 comes from and how models are loaded."""

    base: str = Field(
        default="default",
        description="'default' (the bundled SmolLM2-135M-Instruct GGUF), a local model directory, "
        "or a hub id (owner/name), downloaded only with `allow_download: true`.",
    )
    allow_download: bool = Field(
        default=False,
        description="Let init_model download a `base` hub id that is not in the local cache "
        "(also unset HF_HUB_OFFLINE). Off: nothing is fetched from a hub.",
    )
    gguf_file: str = Field(
        default="models/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="The GGUF file used when base is 'default'.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="float32",
        description="The model's dtype in generation and in init_model's saved weights. 'auto': "
        "bfloat16 where the device multiplies it natively (a GPU; a CPU with AVX512-BF16 or "
        "AMX), else float32 — emulated bf16 is ~100x slower than float32.",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"


class GenerationConfig(Section):
    """`generation`: decoding settings shared by evaluation and sampling."""

    backend: Literal["hf", "openai"] = Field(
        default="hf",
        description="'hf' (transformers, in-process) or 'openai' (an OpenAI-compatible "
        "completions server such as `vllm serve`; see docs/serving.md).",
    )
    batch_size: int = Field(
        default=64,
        ge=1,
        description="hf backend: rows decoded together; a waiting prompt joins as rows finish.",
    )
    prefix_cache_tokens: int = Field(
        default=262144,
        ge=0,
        description="hf backend: tokens whose attention keys/values are kept so that the next "
        "turn of a trajectory only encodes its new tokens (about 23 KB a token for "
        "SmolLM2-135M in bfloat16, so ~6 GiB by default); 0 re-encodes every prompt in full. "
        "It should hold every live trajectory of a round, or turns re-encode what was evicted.",
    )
    temperature: float = Field(default=0.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    base_url: str = Field(
        default="http://127.0.0.1:8000/v1",
        description="openai backend: the server's API root; requests go to <base_url>/completions.",
    )
    model_name: str | None = Field(
        default=None,
        description="openai backend: the served model name (`--served-model-name`); null takes "
        "the one model the server lists.",
    )
    api_key_env: str | None = Field(
        default=None,
        description="openai backend: environment variable holding the server's API key, or null.",
    )
    max_concurrency: int = Field(
        default=64, ge=1, description="openai backend: requests in flight at once."
    )
    timeout_s: float = Field(
        default=600.0, gt=0, description="openai backend: seconds to wait for one request."
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        description="openai backend: retries (exponential backoff) on connection errors, "
        "timeouts, 429 and 5xx.",
    )


class AgentConfig(Section):
    """`agent`: the think → search → record loop (METHOD.md §1)."""

    top_k: int = Field(default=5, ge=1, description="Passages shown per search.")
    max_steps: int = Field(
        default=6, ge=1, description="Searches allowed before an answer is forced."
    )
    max_new_tokens: int = Field(default=96, ge=1, description="Tokens per assistant turn.")
    answer_max_new_tokens: int = Field(default=24, ge=1)
    max_context_tokens: int = Field(
        default=2048, ge=256, description="Prompt budget; passages are truncated to fit it."
    )
    passage_max_words: int = Field(default=80, ge=1, description="Words kept of each passage.")
    select_from: int = Field(
        default=0,
        ge=0,
        description="Document selection (ExSearch-Zoo, METHOD.md §5): each search lists this "
        "many candidates and the model picks and orders at most top_k of them before recording; "
        "only those are shown. 0: no selection, the top_k passages are shown.",
    )

    @model_validator(mode="after")
    def _selects_from_at_least_top_k(self) -> AgentConfig:
        if 0 < self.select_from < self.top_k:
            raise ValueError(
                f"select_from ({self.select_from}) is fewer candidates than top_k "
                f"({self.top_k}) passages to keep: set select_from to 0 (no selection) or to "
                f"at least {self.top_k}"
            )
        return self


# How the agent answers (exsearch.agent.loop).
Method = Literal["agent", "rag", "iter_rag", "oracle", "direct"]


class EvaluateConfig(Section):
    """`evaluate`: which methods to score on the dev questions."""

    methods: list[Method] = Field(default_factory=lambda: ["agent"])
    datasets: list[str] | None = Field(
        default=None,
        description="Score only the dev questions of these datasets (the `dataset` names of "
        "prepare.dev); null scores them all.",
    )
    limit: int | None = Field(
        default=None, ge=1, description="Evaluate only the first N questions of each dataset."
    )
    baselines: Literal["all", "ends"] = Field(
        default="all",
        description="Where the methods after the first run: at every checkpoint, or only at the "
        "ends of the curve (the first and the last checkpoint of em.evaluate), to save time. "
        "em.evaluate is not a DVC param of the evaluate stage, so adding an iteration runs only "
        "its own evaluation; an earlier end keeps the baselines it was scored with.",
    )


_CHECKPOINT = re.compile(r"iter_(0|[1-9][0-9]*)")


def checkpoint_step(name: str) -> int:
    """The one parser of checkpoint names: `base` → -1, `iter_<n>` → n (no leading zeros).

    The step of a checkpoint's metrics (MLflow, the report's curve) and its place in the chain.

    Raises:
        ValueError: any other name.
    """
    if name == "base":
        return -1
    if not (m := _CHECKPOINT.fullmatch(name)):
        hint = ""
        if (loose := re.fullmatch(r"iter_0*([0-9]+)", name)) is not None:
            hint = f" (write iter_{int(loose.group(1))})"
        raise ValueError(
            f"{name!r} is not a checkpoint name: expected base or iter_<n>, n a number without "
            f"leading zeros{hint}"
        )
    return int(m.group(1))


class IterLink(Section):
    """One EM iteration: which iteration's model it starts from."""

    prev: str


class EmConfig(Section):
    """`em`: the chain of iterations; dvc.yaml's foreach groups iterate over these.

    DVC templating has no arithmetic and no "previous item", so each iteration names the one it
    starts from. `evaluate` lists the checkpoints scored on the dev set: `base` (the model before
    warm-up), `iter_0` (after warm-up) and every EM iteration.
    """

    iters: dict[str, IterLink]
    evaluate: list[str]

    @model_validator(mode="after")
    def _chain_is_linear(self) -> EmConfig:
        seen = {"iter_0"}
        for name, link in self.iters.items():
            try:
                step = checkpoint_step(name)
            except ValueError as e:
                raise ValueError(f"iters.{name}: {e}; iterations are iter_1, iter_2, …") from None
            if step < 1:
                raise ValueError(
                    f"iters.{name}: iter_0 is the warm-up, not an EM iteration; start at iter_1"
                )
            if link.prev not in seen:
                raise ValueError(
                    f"iters.{name}.prev: '{link.prev}' is not iter_0 or an earlier iteration"
                )
            seen.add(name)
        allowed = {"base"} | seen
        if bad := [c for c in self.evaluate if c not in allowed]:
            raise ValueError(f"evaluate: {bad} are not checkpoints (base, iter_0 or em.iters)")
        # The curve needs its two ends; the iterations between may be skipped to save time.
        ends = ["iter_0", max(seen, key=checkpoint_step)]
        if missing := [c for c in dict.fromkeys(ends) if c not in self.evaluate]:
            raise ValueError(f"evaluate: add {missing}: iter_0 and the last iteration are compared")
        return self


class TrackingConfig(Section):
    """`tracking`: MLflow settings."""

    experiment: str = "exsearch"
    required: bool = Field(default=True, description="Fail if MLflow is unreachable.")
    log_models: bool = Field(default=False, description="Log model weights as artifacts (large).")
    system_metrics: bool | Literal["auto"] = Field(
        default="auto",
        description="CPU, memory and disk sampled onto every stage run (MLflow's system "
        "metrics, every 10 s); auto: with a local store, not with a tracking server.",
    )


class Params(Section):
    """The whole params.yaml: one field per section, each section's class holding its keys."""

    seed: Seed = 0
    prepare: PrepareConfig
    index: Annotated[IndexConfig, Field(default_factory=IndexConfig)]
    model: Annotated[ModelConfig, Field(default_factory=ModelConfig)]
    generation: Annotated[GenerationConfig, Field(default_factory=GenerationConfig)]
    agent: Annotated[AgentConfig, Field(default_factory=AgentConfig)]
    evaluate: Annotated[EvaluateConfig, Field(default_factory=EvaluateConfig)]
    warmup: Annotated[WarmupConfig, Field(default_factory=WarmupConfig)]
    sample: Annotated[SampleConfig, Field(default_factory=SampleConfig)]
    weigh: Annotated[WeighConfig, Field(default_factory=WeighConfig)]
    train: Annotated[TrainConfig, Field(default_factory=TrainConfig)]
    em: Annotated[EmConfig, Field(default_factory=lambda: EmConfig(iters={}, evaluate=["iter_0"]))]
    tracking: Annotated[TrackingConfig, Field(default_factory=TrackingConfig)]

    @model_validator(mode="after")
    def _min_searches_within_max_steps(self) -> Params:
        if self.sample.min_searches > self.agent.max_steps:
            raise ValueError(
                f"sample.min_searches ({self.sample.min_searches}) is more searches than "
                f"agent.max_steps ({self.agent.max_steps}) allows: lower it or raise max_steps"
            )
        return self

    @model_validator(mode="after")
    def _resume_in_one_process(self) -> Params:
        if self.train.save_steps and self.train.launcher != "none":
            raise ValueError(
                "train.save_steps resumes a run of one process; under train.launcher the "
                "processes would share one checkpoint folder: set save_steps to 0 there"
            )
        return self

    @model_validator(mode="after")
    def _grpo_has_advantages(self) -> Params:
        if self.train.method == "grpo" and self.weigh.advantage == "none":
            raise ValueError(
                "train.method: grpo trains on advantages, and weigh.advantage is none: set "
                "weigh.advantage to grpo (or dr_grpo) so the weigh stage writes them"
            )
        if self.train.method == "grpo" and self.train.replay:
            raise ValueError(
                f"train.replay ({self.train.replay}) mixes in warm-up trajectories, which have no "
                "advantage: set it to 0 with train.method: grpo"
            )
        return self

    def methods_at(self, checkpoint: str) -> list[Method]:
        """The methods the evaluate stage runs at `checkpoint` (see `evaluate.baselines`)."""
        methods = list(self.evaluate.methods)
        scored = sorted(self.em.evaluate, key=checkpoint_step)
        if self.evaluate.baselines == "ends" and checkpoint not in (scored[0], scored[-1]):
            return methods[:1]
        return methods

    def section_hash(self, name: str) -> str:
        """Short stable hash of one section, for run tags."""
        blob = json.dumps(getattr(self, name).model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _describe(err: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (typo? see exsearch/config/params.py for the allowed keys)"
    if err["type"] == "missing":
        return f"{key}: required key is missing"
    if err["type"] == "value_error" and "error" in err.get("ctx", {}):
        # A section's own check (a model validator) starts its message with the sub-key; a
        # check across sections (Params') names its keys in full.
        return f"{key}.{err['ctx']['error']}" if err["loc"] else str(err["ctx"]["error"])
    return f"{key}: {err['msg']} (got {err.get('input')!r})"


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    """Validate an already-parsed mapping; errors name `source` and every bad key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as e:
        lines = "\n".join(f"  - {_describe(err)}" for err in e.errors())
        raise ConfigError(f"{source}: invalid parameters\n{lines}") from None


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        text = read_text(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found (run from the project root)") from None
    except ValueError as e:  # not UTF-8: names the line
        raise ConfigError(str(e)) from None
    try:
        raw = load_yaml(text)
    except DuplicateKeyError as e:
        raise ConfigError(
            f"{path}:{e.line}: duplicate key {e.key!r} (first given at line {e.first_line}); "
            "DVC refuses it too: delete one of them"
        ) from None
    except YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return parse_params(raw, str(path))
