"""Stage `prepare`: read the raw question files into one schema and build the passage corpus.

    python -m stages.prepare [--params params.yaml] [--out-dir data/prepared]

Reads `params.prepare`: the `train` and `dev` question files, the extra `corpus` files, and
whether question contexts join the corpus. Writes, each atomically, to the output folder:
`train.jsonl` and `dev.jsonl` (one question per line), `corpus.jsonl` (one passage per line,
de-duplicated, ids are content hashes) and `stats.json` (counts per split, file and dataset).
An invalid row stops the stage with its file and line, unless `skip_invalid: true`, which skips
and counts it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from exsearch.io import atomic_path, write_json
from exsearch.preparation import prepare
from exsearch.questions import write_questions
from exsearch.schema import Passage
from stages._common import fail, parser, setup
from stages.tracking import stage_run

log = logging.getLogger("stages.prepare")


def main(argv: list[str] | None = None) -> None:
    """Run the stage from the command line."""
    p = parser(__doc__)
    p.add_argument(
        "--out-dir",
        type=Path,
        default=Path("data/prepared"),
        help="where train.jsonl, dev.jsonl, corpus.jsonl and stats.json go (default: %(default)s)",
    )
    args = p.parse_args(argv)
    params = setup(args)
    with stage_run(params, "prepare") as run:
        # The corpus streams to its file as it is built (it may hold millions of passages).
        corpus_path = args.out_dir / "corpus.jsonl"
        with atomic_path(corpus_path) as tmp, tmp.open("w", encoding="utf-8") as corpus:

            def write(passage: Passage) -> None:
                corpus.write(json.dumps(passage.to_dict(), ensure_ascii=False) + "\n")

            try:
                out = prepare(params.prepare, sink=write)
            except (ValueError, OSError) as e:
                fail(e)
        write_questions(args.out_dir / "train.jsonl", out.train)
        write_questions(args.out_dir / "dev.jsonl", out.dev)
        write_json(args.out_dir / "stats.json", out.stats)
        log.info(
            "wrote %d train, %d dev questions and %d passages (%d duplicates removed) to %s",
            len(out.train),
            len(out.dev),
            out.stats["corpus"]["passages"],
            out.stats["corpus"]["duplicates_removed"],
            args.out_dir,
        )
        run.log_metrics(out.stats)
        run.log_artifact(args.out_dir / "stats.json")


if __name__ == "__main__":
    main()
