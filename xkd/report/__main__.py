"""``python -m xkd.report RUN [--metrics a,b] [--subset N]``."""

import sys

from xkd.report.cli import main

sys.exit(main())
