"""Data: raw question files and corpora in, prepared question, corpus and trajectory files out.

`datasets.py` reads every supported question format, `corpus.py` the passage files,
`preparation.py` joins them into train, dev and one corpus (the prepare stage's core);
`questions.py` and `trajectories.py` are the JSONL files the stages pass each other;
`source_records.py` keeps each raw record's file and line for error messages.
"""

from exsearch.data.corpus import passage_id
from exsearch.data.preparation import prepare
from exsearch.data.questions import read_questions, write_questions
from exsearch.data.trajectories import read_trajectories, write_trajectories

__all__ = [
    "passage_id",
    "prepare",
    "read_questions",
    "read_trajectories",
    "write_questions",
    "write_trajectories",
]
