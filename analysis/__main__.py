"""``python -m analysis RUN_DIR ...``: same as ``python -m analysis.report``."""

import sys

from analysis.report import main

sys.exit(main())
