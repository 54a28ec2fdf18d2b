"""The M-step (METHOD.md §2): train the model on what the E-step wrote, with a pluggable learner.

`train.method` names the learner (`learners.py`: `LEARNERS`); each gets the E-step's output
whole (`inputs.py`: `EStepOutput`). The first is `weighted` (`weighted.py`): SFT with the loss
scaled by the E-step's weights. Its pieces: `examples.py` turns weighted trajectories into chats,
`chat_encoding.py` encodes them with labels on what the assistant wrote, `weighted_loss.py` is
the weight-scaled loss and `training.py` the trainer around it, which the warm-up uses too.
The second is `grpo` (`grpo.py`): Search-R1's clipped policy-gradient objective with the weigh
stage's group-relative advantages (`grpo_loss.py`), on the same trainer settings.
"""

from exsearch.mstep.examples import replay_draw
from exsearch.mstep.inputs import EStepOutput
from exsearch.mstep.learners import LEARNERS, learner
from exsearch.mstep.training import encode_examples, make_trainer, run_stats, train_weighted

__all__ = [
    "LEARNERS",
    "EStepOutput",
    "encode_examples",
    "learner",
    "make_trainer",
    "replay_draw",
    "run_stats",
    "train_weighted",
]
