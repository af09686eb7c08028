"""``python -m optimkit ...`` runs the ``optimkit`` command line."""

import sys

from .cli import main

sys.exit(main())
