"""M-step loss: weighted cross-entropy over the tokens the assistant wrote (METHOD.md §2).

Each example is an encoded chat (`exsearch.mstep.chat_encoding`) and a weight w. The loss of a
micro-batch of B sequences is

    L = Σ_i w_i · CE_i / B,   CE_i = mean token cross-entropy over sequence i's trained tokens.

B is the configured per-device batch size, not the size of the micro-batch at hand, and the
Trainer divides by the gradient-accumulation steps: every sequence adds w_i·∇CE_i/(B·grad_accum)
to its optimiser step (averaged over devices under DDP), so a short last batch is not up-weighted
and accumulation changes nothing but memory. With all weights 1 and full batches, L is the usual
mean of per-sequence mean cross-entropies.

The loss is lean where a plain causal-LM trainer wastes work on agent trajectories, ~85% of
whose tokens are prompts and passages: the vocabulary projection runs only at positions with a
loss (`lean_weighted_loss`), and no token is spent on padding (batch_size 1 with grad_accum on a
CPU, or TRL's padding-free batches on a GPU). The trainer is TRL's SFTTrainer with this loss
(`WeightedTrainer`); `bench/train.py` measures it against a plain transformers Trainer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from trl import SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from exsearch.mstep.chat_encoding import IGNORE_INDEX

# What the collators add for the losses (the weighted one's and GRPO's); the model is given
# everything else: ids, attention mask or position ids, varlen bounds.
LOSS_ONLY = ("labels", "weight", "seq_idx", "advantage", "old_logp")


@dataclass(frozen=True)
class LabelledLogits:
    """The model's logits at the positions that predict a labelled token, one row per token.

    `logits` (labelled, vocab) in float32 and `targets` (labelled,) are row-major over the
    batch; `seq_of` (labelled,) is the sequence each token belongs to; `pick(x)` takes a
    (rows, seq) tensor aligned with `labels` (such as GRPO's `old_logp`) to the same entries.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    seq_of: torch.Tensor
    pick: Callable[[torch.Tensor], torch.Tensor]


def labelled_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> LabelledLogits:
    """Run `model` on `batch`, projecting to the vocabulary only where a token is labelled.

    The lean part of both learners' losses: ~85% of an agent trajectory's tokens are prompts and
    passages, so `logits_to_keep` skips their projection and the (batch, seq, vocab) logits are
    never built. Called through the model's own forward, so DDP, FSDP and PEFT wrappers see an
    ordinary call. Works on right-padded batches (`attention_mask`) and on padding-free ones
    (one row of concatenated sequences with `position_ids` and `seq_idx`, as TRL's collator
    makes them).
    """
    targets = batch["labels"][:, 1:]  # (rows, seq-1): the token each position predicts
    mask = targets != IGNORE_INDEX  # (rows, seq-1)
    keep = mask.any(0).nonzero().squeeze(1)  # (kept,) positions some row trains on
    inputs = {k: v for k, v in batch.items() if k not in LOSS_ONLY}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits  # (rows, kept, vocab)
    kept_mask = mask[:, keep]  # (rows, kept)

    def pick(x: torch.Tensor) -> torch.Tensor:
        return x[:, 1:][:, keep][kept_mask]

    if "seq_idx" in batch:  # padding-free: one row, each token's sequence from seq_idx
        seq_of = pick(batch["seq_idx"]).long()
    else:  # padded: a row is a sequence
        seq_of = kept_mask.nonzero(as_tuple=True)[0]
    return LabelledLogits(logits[kept_mask].float(), pick(batch["labels"]), seq_of, pick)


def lean_weighted_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], denominator: float
) -> torch.Tensor:
    """Σ_i w_i · (mean CE over sequence i's labelled tokens) / denominator.

    The lean form (`labelled_logits`): the vocabulary projection runs only at positions that
    predict a labelled token. A sequence with no labelled token contributes 0.
    """
    out = labelled_logits(model, batch)
    ce = F.cross_entropy(out.logits, out.targets, reduction="none")  # (labelled,)
    weights, seq_of = batch["weight"], out.seq_of  # (sequences,), (labelled,)
    n_seq = weights.shape[0]
    # (sequences,): summed cross-entropy and labelled-token count of each sequence
    total = torch.zeros(n_seq, device=ce.device, dtype=ce.dtype).index_add(0, seq_of, ce)
    count = torch.zeros(n_seq, device=ce.device, dtype=ce.dtype).index_add(
        0, seq_of, torch.ones_like(ce)
    )
    per_seq = total / count.clamp(min=1)  # (sequences,)
    return (weights.to(per_seq) * per_seq).sum() / denominator


@dataclass
class WeightedCollator:
    """TRL's language-modelling collator plus each sequence's weight.

    Right-padded rows with an `attention_mask`, or, with `padding_free`, one row of the
    sequences laid end to end with `position_ids`, `seq_idx` and the `cu_seq_lens` that
    flash-attention kernels read (so no token is spent on padding).
    """

    pad_token_id: int
    padding_free: bool = False

    def __post_init__(self) -> None:
        self._collate = DataCollatorForLanguageModeling(
            pad_token_id=self.pad_token_id, padding_free=self.padding_free
        )

    def collate_tokens(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The token columns of pre-tokenised examples (ids, labels, mask or positions)."""
        return self._collate(
            [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        )

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Collate pre-tokenised examples into one batch."""
        batch = self.collate_tokens(features)
        batch["weight"] = torch.tensor([float(f["weight"]) for f in features], dtype=torch.float32)
        return batch


class WeightedTrainer(SFTTrainer):
    """TRL's SFTTrainer whose loss is the per-sequence weighted cross-entropy above.

    From SFTTrainer we take its config (`SFTConfig`), its collator (padding-free batches)
    and what it enables on GPUs (Liger kernels through `use_liger_kernel`); examples come
    pre-tokenised with our own assistant mask, so its dataset preparation is skipped, and
    the loss is ours: weighted per sequence, vocabulary projection only where there is loss.
    """

    # compute_loss returns a per-micro-batch value: the Trainer divides it by grad_accum.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # No model-side loss and no token-count normalisation.
        self.model_accepts_loss_kwargs = False

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """Weighted loss of one micro-batch; `num_items_in_batch` is ignored (module doc)."""
        if return_outputs:
            raise NotImplementedError("the weighted M-step computes no logits to return")
        return lean_weighted_loss(model, inputs, self.args.per_device_train_batch_size)
