"""The M-step's loss on its stage run as the trainer logs it, not only once training ends.

A transformers `TrainerCallback` the training stages hand to the library's trainers (which know
nothing of MLflow): each optimiser step's log (loss, learning rate, gradient norm, GRPO's KL
and clip ratio, …) goes onto the run at that step, so a long M-step can be watched in the UI
and a killed one leaves its curve. In a module of its own because it imports transformers,
which the flows that use `tracking` do not need.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback

from tracking.run_log import StageRun


class LiveMetrics(TrainerCallback):
    """Logs every optimiser step's numbers onto `run` at the trainer's global step."""

    def __init__(self, run: StageRun) -> None:
        self.run = run

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **_: Any
    ) -> None:
        # A step's log has its loss; the summary logged when training ends (train_loss,
        # runtime) is left to the stage's own metrics. Only the main process logs.
        if logs and "loss" in logs and state.is_world_process_zero:
            self.run.log_metrics(dict(logs), step=int(state.global_step))
