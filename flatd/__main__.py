"""`python -m flatd`: the same commands as the `flatd` console script."""

import sys

from flatd.cli import main

sys.exit(main())
