"""``python -m xkd`` is ``python -m xkd.run``."""

import sys

from xkd.run import main

sys.exit(main())
