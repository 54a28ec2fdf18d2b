"""params.yaml's training sections: the warm-up and each EM iteration's E- and M-step.

`warmup` trains iteration 0; every EM iteration then runs `sample` and `weigh` (the E-step) and
`train` (the M-step). `config.Params` gathers these with the other sections.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from exsearch.config.section import Section, Seed


class WarmupConfig(Section):
    """`warmup`: LLM-free warm-up trajectories from supporting facts, then SFT (METHOD.md §2)."""

    enabled: bool = True
    max_examples: int | None = Field(
        default=None,
        ge=1,
        description="Warm up on a seeded draw of N training questions (null: all of them). EM "
        "iterations then sample from the rest (sample.exclude_warmup).",
    )
    first_search: Literal["question", "hop"] = Field(
        default="question",
        description="'question': the first search is the question itself (what one-shot RAG "
        "reads), then one search per supporting paragraph not shown yet; 'hop': one search "
        "per supporting paragraph (exsearch.agent.warmup).",
    )
    record_max_words: int = Field(
        default=30, ge=1, description="Words kept of each record (around the answer)."
    )
    teacher_file: str | None = Field(
        default=None,
        description="JSONL trajectories written by a teacher, used instead of derived ones.",
    )
    epochs: float = Field(default=1.0, gt=0)
    learning_rate: float = Field(default=1e-4, gt=0)


class SampleConfig(Section):
    """`sample`: E-step exploration, K trajectories per training question."""

    k: int = Field(default=4, ge=1)
    temperature: float = Field(default=0.8, ge=0)
    top_p: float = Field(default=0.95, gt=0, le=1)
    questions: int | None = Field(
        default=None,
        ge=1,
        description="Training questions per EM iteration, each new to training (exsearch."
        "sampling.iteration_questions); null samples the whole pool every iteration.",
    )
    exclude_warmup: bool = Field(
        default=True,
        description="Leave the warm-up's questions out of the pool EM iterations draw from.",
    )
    shard_size: int = Field(default=16, ge=1, description="Questions per resumable shard.")
    seed: Seed = Field(
        default=0,
        description="Added to the top-level seed for the questions each iteration draws and the "
        "samples' random streams: a second seed of the EM iterations on the same warm-up.",
    )
    min_searches: int = Field(
        default=0,
        ge=0,
        description="Budget forcing, at the E-step only: a sample that writes <finish> or an "
        "answer before it has searched this many times has that turn cut there and continued "
        "with <search> (once per turn), so the M-step has later searches to choose between. "
        "0: off. Evaluation never forces: it measures the policy as learned.",
    )
    score: Literal["trajectory", "records"] = Field(
        default="trajectory",
        description="What the E-step's score reads before the gold answer: the whole sampled "
        "chat (METHOD.md §2), or only the question and the evidence the trajectory recorded, "
        "read as the rag baseline reads passages — a score that depends on what was found.",
    )


class RewardConfig(Section):
    """`weigh.reward`: what a sampled answer earns, for the group-relative advantages."""

    kind: Literal["em", "f1"] = Field(
        default="em",
        description="'em': 1 if the sampled answer matches a gold alias exactly, else 0 "
        "(Search-R1's outcome reward); 'f1': its token F1 against the gold aliases.",
    )
    format_penalty: float = Field(
        default=0.0,
        ge=0,
        description="Subtracted from the reward of a sample that broke the format (ended "
        "malformed or cut by a token limit).",
    )


class WeighConfig(Section):
    """`weigh`: E-step importance weights (METHOD.md §2), and advantages for an RL learner."""

    scheme: Literal["softmax", "exp", "uniform", "f1", "filter"] = "softmax"
    tau: float = Field(default=1.0, gt=0, description="Softmax temperature.")
    c: float = Field(default=4.0, gt=0, description="Scale of the `exp` scheme.")
    advantage: Literal["none", "grpo", "dr_grpo"] = Field(
        default="none",
        description="Also write each sample's reward and its advantage within its question's K "
        "samples (exsearch.estep.advantages): 'grpo' (reward minus the group mean, over the "
        "group's std), 'dr_grpo' (minus the mean only). Needed by train.method: grpo.",
    )
    reward: RewardConfig = Field(default_factory=RewardConfig)


# transformers.SchedulerType's values (tests/test_config.py checks the two lists agree); spelled
# out so that loading params.yaml does not import transformers (and torch) in every stage.
Scheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "reduce_lr_on_plateau",
    "cosine_with_min_lr",
    "cosine_warmup_with_min_lr",
    "warmup_stable_decay",
    "greedy",
]


class WeightedConfig(Section):
    """`train.weighted`: the weighted-SFT learner, ExSearch's M-step (exsearch.mstep.weighted)."""

    min_weight: float = Field(
        default=0.0,
        ge=0,
        description="Trajectories weighted below this are not trained on: each costs a full "
        "forward and backward pass for a negligible share of the loss (in the weighting "
        "scheme's units).",
    )
    well_formed_only: bool = Field(
        default=False,
        description="Train only on trajectories whose every turn parsed (finish reason final or "
        "max_steps), not on malformed ones or ones cut by a token limit: such samples are "
        "otherwise trained on with the gold answer appended, which teaches the broken format.",
    )


class GrpoConfig(Section):
    """`train.grpo`: the GRPO learner, Search-R1's RL objective on the E-step's samples.

    The loss is the clipped policy-ratio objective over the tokens the model wrote, with the
    weigh stage's group-relative advantages (exsearch.mstep.grpo).
    """

    epsilon: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Clip range of the policy ratio: π/π_old is kept within [1-ε, 1+ε] where "
        "going further would pay.",
    )
    beta: float = Field(
        default=0.0,
        ge=0,
        description="Weight of the KL penalty to the M-step's start model (the k3 estimate per "
        "token); 0, as in DAPO and Dr. GRPO, skips it.",
    )


# The M-step learners, `train.method`: each has its section under `train` (named as the method)
# and its trainer in exsearch.mstep.LEARNERS (tests/test_registries.py keeps the two in step).
Learner = Literal["weighted", "grpo"]
LEARNER_SECTIONS: tuple[str, ...] = ("weighted", "grpo")


class TrainConfig(Section):
    """`train`: the M-step, its learner (`method`) and the trainer settings every learner shares.

    The warm-up trains with the same settings (exsearch.agent.warmup_train_config).
    """

    method: Learner = Field(
        default="weighted",
        description="The M-step learner: 'weighted' (weight-scaled SFT on the E-step's "
        "trajectories, METHOD.md §2) or 'grpo' (the clipped policy-gradient objective with "
        "group-relative advantages, as Search-R1 trains; needs weigh.advantage). Its own keys "
        "are in the section of the same name.",
    )
    weighted: WeightedConfig = Field(default_factory=WeightedConfig)
    grpo: GrpoConfig = Field(default_factory=GrpoConfig)
    lora: bool = True
    lora_r: int = Field(default=16, ge=1)
    lora_alpha: int = Field(default=32, ge=1)
    lora_dropout: float = Field(default=0.0, ge=0, lt=1)
    merge_lora: bool = Field(default=True, description="Merge the adapter into the saved model.")
    learning_rate: float = Field(default=1e-4, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=4, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr_scheduler: Scheduler = Field(
        default="cosine", description="transformers' learning-rate schedule (SchedulerType)."
    )
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    max_length: int = Field(default=1024, ge=64)
    bf16: bool | Literal["auto"] = Field(
        default=False,
        description="Autocast the M-step to bf16 (weights stay float32). 'auto': where bf16 is "
        "native (a GPU; a CPU with AVX512-BF16 or AMX).",
    )
    padding_free: bool = Field(
        default=False,
        description="Lay each micro-batch's sequences end to end in one row (no padding; "
        "TRL's collator, for flash-attention on GPUs). On a CPU, batch_size 1 with grad_accum "
        "does the same work without padding.",
    )
    activation_checkpointing: bool = Field(
        default=False,
        description="Recompute activations in the backward pass: less memory, ~30% more compute.",
    )
    use_liger_kernel: bool = Field(
        default=False, description="Liger's fused GPU kernels (SFTConfig; needs liger-kernel)."
    )
    seed: Seed = 0
    save_steps: int = Field(
        default=0,
        ge=0,
        description="Checkpoint the M-step (and the warm-up) every N optimiser steps, beside "
        "its output (`.<model>.resume`), so a killed run resumes at the last checkpoint; the "
        "folder goes when the run succeeds. 0: no checkpoints (a killed M-step starts over). "
        "One process only (not with train.launcher).",
    )
    start_from: Literal["previous", "warmup"] = Field(
        default="previous",
        description="The model each M-step fine-tunes: 'previous' (θ_t, METHOD.md §2) or "
        "'warmup' (iter_0 every time, trained on the previous model's samples).",
    )
    replay: int = Field(
        default=0,
        ge=0,
        description="Warm-up trajectories mixed into each M-step (weight 1 each, a seeded draw "
        "per iteration): keeps the action format from drifting while the model learns from "
        "its own samples.",
    )
    launcher: str = Field(
        default="none",
        description="'none' (one process), or an accelerate config file such as "
        "configs/accelerate/ddp.yaml: the train and warmup stages then run themselves under "
        "`accelerate launch` (stages/_launch.py).",
    )
    num_processes: int = Field(
        default=1, ge=1, description="Processes (GPUs) the launcher starts; unused with 'none'."
    )
