"""``python -m bench.cli``: the same as the ``segbench`` command."""

import sys

from bench.cli import main

sys.exit(main())
