"""``python -m xkd.reproduce``."""

import sys

from xkd.reproduce.cli import main

sys.exit(main())
