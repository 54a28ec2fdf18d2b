"""`python -m flows …` is the `exsearch` command line."""

import sys

from flows.cli import main

sys.exit(main())
