"""``python -m bertserve_cli``."""

import sys

from bertserve_cli.main import main

sys.exit(main())
