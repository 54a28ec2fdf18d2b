"""A trainer callback for tests: what a caller's callback sees of an M-step as it runs."""

from transformers import TrainerCallback


class StepLogs(TrainerCallback):
    """Records each optimiser step's log, as the trainer writes it: `[(step, logs)]`."""

    def __init__(self):
        self.seen = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.seen.append((state.global_step, dict(logs)))
