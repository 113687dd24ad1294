"""``python -m massugc_logging.cli``."""

import sys

from massugc_logging.cli import main

sys.exit(main())
