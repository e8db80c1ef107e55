"""``python -m gatattn`` is the ``gatattn`` command."""

import sys

from .cli import main

sys.exit(main())
