"""GRPO's loss on the E-step's samples: the clipped policy-ratio objective over what was written.

For a sampled chat i with advantage A_i (exsearch.estep.advantages) and every token t the
assistant wrote (the labels of `chat_encoding.py`: prompts and retrieved passages are masked, as
Search-R1 masks them; the model's own answer is kept, not replaced by the gold one):

    r_t = π_θ(y_t | y_<t) / π_old(y_t | y_<t)
    ℓ_t = −min(r_t·A_i, clip(r_t, 1−ε, 1+ε)·A_i) + β·(π_old/π_θ − log(π_old/π_θ) − 1)
    L   = Σ_i mean_t ℓ_t / B

π_old is the model the M-step starts from (θ_t, which sampled the chats), its log-probs
computed once before the first update (`old_logps`): the trajectories keep only a summed
log-prob per chat, and the chat template's tokens differ from the sampler's turn by turn. The
KL term (the k3 estimate, as GRPO's) pulls towards that same start model. B is the configured
per-device batch size, as in the weighted loss (`weighted_loss.py`), so accumulation changes
nothing but memory. The first optimiser step has r = 1 everywhere: L is then the policy
gradient −Σ A_i·mean_t log π_θ; later steps of the same M-step are off-policy, which the clip
bounds.

The per-token log-probs are TRL's (`selective_log_softmax`), taken only at the positions that
predict a labelled token, as the weighted loss does; the trainer is TRL's SFTTrainer with this
loss (`ClippedPolicyTrainer`), so both learners share one set of training arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from trl import SFTTrainer
from trl.trainer.utils import selective_log_softmax

from exsearch.mstep.weighted_loss import WeightedCollator, labelled_logits


def labelled_logps(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """The log π_θ of every labelled token, the sequence it belongs to, and how to pick alike.

    `(logp, seq_of, pick)` as in `weighted_loss.labelled_logits`, whose lean forward it shares
    with the weighted loss; the log-probs are TRL's `selective_log_softmax`.
    """
    out = labelled_logits(model, batch)
    return selective_log_softmax(out.logits, out.targets), out.seq_of, out.pick


@dataclass(frozen=True)
class PolicyLoss:
    """One micro-batch's loss and what a GRPO run is watched by (means over labelled tokens)."""

    loss: torch.Tensor
    kl: float  # k3 estimate of KL(π_θ ‖ π_old)
    clip_ratio: float  # share of tokens where the clip took the gradient away
    ratio: float  # mean π_θ/π_old


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantage: torch.Tensor,
    seq_of: torch.Tensor,
    *,
    epsilon: float,
    beta: float,
    denominator: float,
) -> PolicyLoss:
    """L of the module doc from per-token log-probs (labelled,) and per-sequence advantages."""
    adv = advantage.to(logp)[seq_of]  # (labelled,)
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    delta = old_logp - logp
    k3 = torch.exp(delta) - delta - 1
    if beta:
        per_token = per_token + beta * k3
    n_seq = advantage.shape[0]
    total = logp.new_zeros(n_seq).index_add(0, seq_of, per_token)
    count = logp.new_zeros(n_seq).index_add(0, seq_of, torch.ones_like(logp))
    loss = (total / count.clamp(min=1)).sum() / denominator
    clipped_away = ((ratio < 1 - epsilon) & (adv < 0)) | ((ratio > 1 + epsilon) & (adv > 0))
    return PolicyLoss(
        loss=loss,
        kl=float(k3.detach().mean()) if len(k3) else 0.0,
        clip_ratio=float(clipped_away.float().mean()) if len(k3) else 0.0,
        ratio=float(ratio.detach().mean()) if len(k3) else 1.0,
    )


def grpo_loss(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    *,
    epsilon: float,
    beta: float,
    denominator: float,
) -> PolicyLoss:
    """The clipped objective of one collated micro-batch (`AdvantageCollator`)."""
    logp, seq_of, pick = labelled_logps(model, batch)
    return clipped_policy_loss(
        logp,
        pick(batch["old_logp"]).to(logp),
        batch["advantage"],
        seq_of,
        epsilon=epsilon,
        beta=beta,
        denominator=denominator,
    )


@torch.no_grad()
def old_logps(model: torch.nn.Module, encoded: Sequence[dict[str, Any]], pad_token_id: int):
    """π_old's log-prob of each labelled token of each encoded chat, aligned with its labels.

    One forward pass per chat, the model in eval mode; unlabelled positions get 0.
    """
    collate = WeightedCollator(pad_token_id).collate_tokens
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    try:
        for enc in encoded:
            batch = collate([{"input_ids": enc["input_ids"], "labels": enc["labels"]}])
            batch = {k: v.to(device) for k, v in batch.items()}
            logp, _, pick = labelled_logps(model, batch)
            aligned = torch.zeros_like(batch["labels"], dtype=torch.float32)
            positions = pick(torch.arange(aligned.shape[1], device=device)[None].expand_as(aligned))
            aligned[0, positions] = logp.float()
            out.append(aligned[0].tolist())
    finally:
        model.train(was_training)
    return out


class AdvantageCollator(WeightedCollator):
    """The weighted learner's collation with each sequence's advantage and π_old's log-probs.

    They take the place of the weight.

    `old_logp` comes out shaped as `labels` (right-padded rows, or one padding-free row).
    """

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Collate encoded chats with their `advantage` and `old_logp`."""
        batch = self.collate_tokens(features)
        rows = [torch.tensor(f["old_logp"], dtype=torch.float32) for f in features]
        if self.padding_free:
            batch["old_logp"] = torch.cat(rows)[None]
        else:
            batch["old_logp"] = pad_sequence(rows, batch_first=True, padding_value=0.0)
        batch["advantage"] = torch.tensor(
            [float(f["advantage"]) for f in features], dtype=torch.float32
        )
        return batch


class ClippedPolicyTrainer(SFTTrainer):
    """TRL's SFTTrainer whose loss is GRPO's clipped objective (`grpo_loss`).

    Logs, beside the loss, the mean KL to the start model, the share of clipped tokens and the
    mean policy ratio of the micro-batches since the last log.
    """

    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, epsilon: float, beta: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.epsilon, self.beta = epsilon, beta
        self._watch: dict[str, list[float]] = {"kl": [], "clip_ratio": [], "ratio": []}

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """The clipped objective of one micro-batch; `num_items_in_batch` is ignored."""
        if return_outputs:
            raise NotImplementedError("the GRPO M-step computes no logits to return")
        out = grpo_loss(
            model,
            inputs,
            epsilon=self.epsilon,
            beta=self.beta,
            denominator=self.args.per_device_train_batch_size,
        )
        for key in self._watch:
            self._watch[key].append(getattr(out, key))
        return out.loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The Trainer's log, with the watched means added to each training-step entry."""
        if "loss" in logs and self._watch["kl"]:
            for key, values in self._watch.items():
                logs[key] = sum(values) / len(values)
                values.clear()
        super().log(logs, *args, **kwargs)
