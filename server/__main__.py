"""``python -m server`` = the ``avatar`` command."""

import sys

from server.cli import main

sys.exit(main())
