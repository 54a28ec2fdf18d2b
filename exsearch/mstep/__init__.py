"""The M-step: fine-tune on the E-step's trajectories (METHOD.md §2).

`examples.py` turns weighted trajectories into chats, `chat_encoding.py` encodes them with
labels on what the assistant wrote, `weighted_loss.py` is the weight-scaled loss and
`training.py` the trainer around it.
"""

from exsearch.mstep.examples import replayed_examples, weighted_examples
from exsearch.mstep.training import encode_examples, make_trainer, run_stats, train_weighted

__all__ = [
    "encode_examples",
    "make_trainer",
    "replayed_examples",
    "run_stats",
    "train_weighted",
    "weighted_examples",
]
