"""Glue shared by the stage CLIs: argument parsing, params loading and logging."""

from __future__ import annotations

import argparse
import logging
import sys

from exsearch.config import ConfigError, Params, load_params


def parser(description: str) -> argparse.ArgumentParser:
    """An argparse parser with the options every stage takes."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def setup(args: argparse.Namespace) -> Params:
    """Configure logging and load params; a bad params file exits with its message, not a trace."""
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    try:
        return load_params(args.params)
    except ConfigError as e:
        sys.exit(f"error: {e}")
