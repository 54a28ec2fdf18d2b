"""Stage `prepare`: read the raw question files into one schema and build the passage corpus.

    python -m stages.prepare [--params params.yaml] [--out-dir data/prepared]
        [--train FILE] [--dev FILE] [--corpus FILE] [--stats FILE]

Reads `params.prepare`: the `train` and `dev` question files, the extra `corpus` files, and
whether question contexts join the corpus. Writes, each atomically: `train.jsonl` and
`dev.jsonl` (one question per line), `corpus.jsonl` (one passage per line, de-duplicated, ids
are content hashes) and `stats.json` (counts per split, file and dataset), in `--out-dir` unless
given one by one (as dvc.yaml does). An invalid row stops the stage with its file and line,
unless `skip_invalid: true`, which skips and counts it.
"""

from __future__ import annotations

import argparse
import json
import logging
from functools import partial
from pathlib import Path

from exsearch.data import prepare, write_questions
from exsearch.files import atomic_path, write_json
from exsearch.schema import Passage
from stages._common import add_path, fail, parser, setup, stage_run

log = logging.getLogger("stages.prepare")
OUTPUTS = {
    "train": "train.jsonl",
    "dev": "dev.jsonl",
    "corpus": "corpus.jsonl",
    "stats": "stats.json",
}


def build_parser() -> argparse.ArgumentParser:
    """The stage's command line."""
    p = parser(__doc__)
    add = partial(add_path, p)
    add("--out-dir", Path("data/prepared"), "folder of the outputs not given one by one")
    add("--train", None, "training questions to write (default: OUT_DIR/train.jsonl)")
    add("--dev", None, "dev questions to write (default: OUT_DIR/dev.jsonl)")
    add("--corpus", None, "passages to write (default: OUT_DIR/corpus.jsonl)")
    add("--stats", None, "counts to write (default: OUT_DIR/stats.json)")
    return p


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line."""
    args = build_parser().parse_args(argv)
    out = {k: getattr(args, k) or args.out_dir / name for k, name in OUTPUTS.items()}
    params = setup(args)
    with stage_run(params, "prepare") as run:
        # The corpus streams to its file as it is built (it may hold millions of passages).
        with atomic_path(out["corpus"]) as tmp, tmp.open("w", encoding="utf-8") as corpus:

            def write(passage: Passage) -> None:
                corpus.write(json.dumps(passage.to_dict(), ensure_ascii=False) + "\n")

            try:
                prepared = prepare(params.prepare, sink=write)
            except (ValueError, OSError) as e:
                fail(e)
        write_questions(out["train"], prepared.train)
        write_questions(out["dev"], prepared.dev)
        write_json(out["stats"], prepared.stats)
        log.info(
            "wrote %d train, %d dev questions and %d passages (%d duplicates removed) to %s",
            len(prepared.train),
            len(prepared.dev),
            prepared.stats["corpus"]["passages"],
            prepared.stats["corpus"]["duplicates_removed"],
            ", ".join(str(p) for p in out.values()),
        )
        run.log_metrics(prepared.stats)
        run.log_artifact(out["stats"])


if __name__ == "__main__":
    main()
